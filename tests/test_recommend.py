"""Interest pooling, scoring, top-K, explanations and model directories, on a tiny checkpoint."""

import dataclasses

import numpy as np
import pytest

from bert_rec.config import ModelConfig, ScoringConfig
from bert_rec.data import Behavior, Item
from bert_rec.models import fit_whitening
from bert_rec.recommend import Recommender
from bert_rec.units import behavior_weights

DAY = 86400.0
ITEMS = [
    Item("a1", "红烧肉 家常菜 做法", category="美食"),
    Item("a2", "红烧肉 家常菜 美食 做法"),
    Item("b1", "篮球 比赛 精彩 瞬间", category="体育"),
    Item("b2", "篮球 比赛 精彩 集锦"),
    Item("c1", "小猫 小狗 萌宠 日常"),
    Item("d1", "手机 数码 评测 iphone"),
]


def _b(item, behavior, day, rating=None, text="", user="u1"):
    return Behavior(user, item, behavior, day * DAY, rating, text)


@pytest.fixture(scope="module")
def recommender(tiny_ckpt):
    return Recommender.load(tiny_ckpt).index_items(ITEMS)


def _with_scoring(base, **scoring):
    """A recommender sharing ``base``'s encoder and catalogue vectors, with other scoring."""
    config = base.config.replace(scoring=ScoringConfig(**scoring))
    return Recommender(base.encoder, config).index_items(ITEMS, raw=base.catalogue.raw)


def _top(base, history, **scoring):
    rec = _with_scoring(base, **scoring)
    result = rec.recommend({"u1": history}, k=len(ITEMS), explain=10)[0]
    return [r.item_id for r in result.items], result


def _vector(rec, item_id):
    return rec.catalogue.vectors[rec.catalogue.rows[item_id]]


def test_weights_follow_config():
    scoring = ScoringConfig(behavior_weights={"view": 1.0, "click": 4.0}, half_life_days=1.0)
    history = [_b("a1", "view", 0), _b("b1", "click", 1), _b("c1", "rate", 1, rating=2.5)]
    weights, polarity = behavior_weights(history, scoring)
    np.testing.assert_allclose(weights, [0.5, 4.0, 1.0 * 0.5])
    assert polarity == ["neutral", "neutral", "neutral"]  # a 2.5 of 5 says nothing


def test_behavior_weights_change_the_ranking(recommender):
    history = [_b("a1", "view", 0), _b("b1", "click", 0)]
    food_first, _ = _top(recommender, history, behavior_weights={"view": 10.0, "click": 1.0})
    sport_first, _ = _top(recommender, history, behavior_weights={"view": 1.0, "click": 10.0})
    assert food_first.index("a2") < food_first.index("b2")
    assert sport_first.index("b2") < sport_first.index("a2")


def test_recency_changes_the_ranking(recommender):
    history = [_b("a1", "view", 0), _b("b1", "view", 30)]
    recent_wins, _ = _top(recommender, history, half_life_days=3.0)
    assert recent_wins.index("b2") < recent_wins.index("a2")
    history = [_b("b1", "view", 0), _b("a1", "view", 30)]
    recent_wins, _ = _top(recommender, history, half_life_days=3.0)
    assert recent_wins.index("a2") < recent_wins.index("b2")


def test_seen_items_are_excluded_unless_asked(recommender):
    history = [_b("a1", "view", 0), _b("b1", "click", 1), _b("a1", "view", 2)]
    ranked, _ = _top(recommender, history)
    assert set(ranked) == {"a2", "b2", "c1", "d1"}
    ranked, _ = _top(recommender, history, exclude_seen=False)
    assert set(ranked) == {item.item_id for item in ITEMS}


def test_explanations_sum_to_one_and_match_numpy(recommender):
    history = [_b("a1", "view", 0), _b("b1", "comment", 1, text="篮球 太 精彩 了"),
               _b("c1", "rate", 2, rating=4)]
    _, result = _top(recommender, history)
    seen = {(b.item_id, b.behavior) for b in history}
    rec = recommender
    weights, _ = behavior_weights(history, rec.config.scoring)
    table, text_rows, _ = rec._unit_table([history])
    text_vec = table[text_rows["篮球 太 精彩 了"]]
    rows = [_vector(rec, b.item_id) for b in history] + [text_vec]
    unit_w = np.append(weights, weights[1] * rec.config.scoring.text_weight)
    units = np.array(rows) / np.linalg.norm(rows, axis=1, keepdims=True)
    interest = (units * unit_w[:, None]).sum(0) / unit_w.sum()
    for r in result.items:
        assert sum(w.share for w in r.because) == pytest.approx(1.0, abs=1e-5)
        assert {(w.item_id, w.behavior) for w in r.because} <= seen
        x = _vector(rec, r.item_id)
        cos = interest @ x / np.linalg.norm(interest) / np.linalg.norm(x)
        assert r.score == pytest.approx(cos, abs=1e-5)
        # the comment's share = its item vector's and its text's contributions together
        contrib = unit_w * (units @ (x / np.linalg.norm(x))) / unit_w.sum() / np.linalg.norm(
            interest)
        comment = [w for w in r.because if w.behavior == "comment"][0]
        assert comment.share == pytest.approx((contrib[1] + contrib[3]) / cos, abs=1e-4)
        assert comment.text == "篮球 太 精彩 了"


def test_disliked_behaviours_get_negative_shares_that_match_numpy(recommender):
    """A 1-star rating makes its item a dislike: score = cos(u, x) - lambda cos(d, x), and the
    shares (negative for the disliked behaviours where x resembles them) still sum to 1."""
    history = [_b("a1", "view", 0), _b("a1", "rate", 0, rating=1), _b("b1", "click", 1),
               _b("c1", "view", 2)]
    rec = _with_scoring(recommender, half_life_days=0.0, dislike_weight=0.8)
    result = rec.recommend({"u1": history}, k=len(ITEMS), explain=10)[0]
    weights, polarity = behavior_weights(history, rec.config.scoring)
    assert polarity == ["negative", "negative", "neutral", "neutral"] and (weights[:2] < 0).all()
    v = np.array([_vector(rec, b.item_id) for b in history])
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    liked, disliked = weights > 0, weights < 0
    u = (v[liked] * weights[liked, None]).sum(0) / weights[liked].sum()
    d = (v[disliked] * -weights[disliked, None]).sum(0) / -weights[disliked].sum()
    for r in result.items:
        x = _vector(rec, r.item_id)
        x = x / np.linalg.norm(x)
        cos_u, cos_d = u @ x / np.linalg.norm(u), d @ x / np.linalg.norm(d)
        assert r.score == pytest.approx(cos_u - 0.8 * cos_d, abs=1e-5)
        shares = {b.behavior: b for b in r.because}
        contrib_rate = -0.8 * (-weights[1] / -weights[disliked].sum()) * (v[1] @ x) / \
            np.linalg.norm(d)
        assert shares["rate"].share == pytest.approx(contrib_rate / r.score, abs=1e-4)
        assert shares["rate"].polarity == "negative"
        assert np.sign(shares["rate"].share) == -np.sign(v[1] @ x * r.score)
        assert sum(b.share for b in r.because) == pytest.approx(1.0, abs=1e-5)


def test_fixtures_are_not_changed_by_scoring_variants(recommender):
    before = recommender.config
    _top(recommender, [_b("a1", "view", 0)], half_life_days=1.0, exclude_seen=False)
    assert recommender.config is before and recommender.config.scoring == ScoringConfig()


def test_each_distinct_text_is_encoded_once(recommender, monkeypatch):
    calls = []
    original = recommender.encoder._encode_batch

    def counting(token_ids, segment_ids):
        calls.append(int(token_ids.shape[0]))
        return original(token_ids, segment_ids)

    monkeypatch.setattr(recommender.encoder, "_encode_batch", counting)
    histories = {f"u{i}": [_b("a1", "comment", 0, text="好吃", user=f"u{i}"),
                           _b("b1", "comment", 1, text="精彩", user=f"u{i}")] for i in range(5)}
    recommender.recommend(histories, k=2)
    assert sum(calls) == 2  # two distinct texts for five users
    calls.clear()
    other = Recommender(recommender.encoder, recommender.config)
    other.index_items(ITEMS + [dataclasses.replace(ITEMS[0], item_id="a1-copy")])
    assert sum(calls) == len(ITEMS)  # a duplicate item text is encoded once


def test_reindexing_a_zero_shot_model_refits_the_whitening(recommender):
    """Defect: a second catalogue kept the first catalogue's whitening."""
    other_items = ITEMS[:3] + [Item("e1", "旅行 风景 摄影 山 水"), Item("e2", "美妆 口红 试色"),
                               Item("e3", "健身 运动 跑步")]
    live = Recommender(recommender.encoder, recommender.config).index_items(ITEMS)
    live.index_items(other_items)
    fresh = Recommender(recommender.encoder, recommender.config).index_items(other_items)
    np.testing.assert_allclose(live.catalogue.vectors, fresh.catalogue.vectors, atol=1e-6)


def test_unknown_item_in_a_history_is_a_clear_error(recommender):
    ghost = Behavior("u1", "nope", "view", 0.0, source="behaviors.jsonl", line=7)
    with pytest.raises(ValueError, match=r"behaviors.jsonl line 7: .*item 'nope'.*not in the "
                                         r"indexed catalogue"):
        recommender.recommend({"u1": [_b("a1", "view", 0), ghost]})


def test_whitening_centres_and_decorrelates():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 8)) @ rng.normal(size=(8, 8)) + 5.0
    mean, kernel = fit_whitening(x, "whiten")
    y = (x - mean) @ kernel
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(np.cov(y.T), np.eye(8), atol=1e-2)
    mean, kernel = fit_whitening(x[:10], "whiten")  # too few vectors: centring only
    np.testing.assert_array_equal(kernel, np.eye(8))


def test_model_directory_round_trip(recommender, tmp_path):
    history = {"u1": [_b("a1", "view", 0), _b("b1", "comment", 1, text="精彩")]}
    rec = _with_scoring(recommender, half_life_days=7.0)
    before = rec.recommend(history, k=3)
    out = rec.save(str(tmp_path / "model"))
    loaded = Recommender.load(out).index_items(ITEMS)
    # the text config now points at the stopwords copied into the model directory
    assert dataclasses.replace(loaded.config, text=rec.config.text) == rec.config
    assert loaded.config.text.stopwords_path.startswith(out)
    after = loaded.recommend(history, k=3)
    assert [r.item_id for r in after[0].items] == [r.item_id for r in before[0].items]
    np.testing.assert_allclose([r.score for r in after[0].items],
                               [r.score for r in before[0].items], atol=1e-6)


def test_model_config_rejects_other_versions_and_unknown_keys(tmp_path):
    data = ModelConfig().to_dict()
    with pytest.raises(ValueError, match="format_version 99"):
        ModelConfig.from_dict({**data, "format_version": 99})
    with pytest.raises(ValueError, match="unknown key"):
        ModelConfig.from_dict({**data, "colour": "red"})
    assert ModelConfig.from_dict(data) == ModelConfig()


def test_saved_item_vectors_are_reused_and_changed_items_re_encoded(recommender, tmp_path,
                                                                     monkeypatch):
    out = recommender.save(str(tmp_path / "model"))
    loaded = Recommender.load(out)
    calls = []
    original = loaded.encoder.encode

    def counting(texts, **kwargs):
        calls.append(list(texts))
        return original(texts, **kwargs)

    monkeypatch.setattr(loaded.encoder, "encode", counting)
    changed = ITEMS[:-1] + [dataclasses.replace(ITEMS[-1], title="全新 的 标题")]
    loaded.index_items(changed)
    assert calls == [[changed[-1].full_text()]]  # only the changed item was encoded
    fresh = Recommender.load(out)
    fresh.model_path = None  # no stored vectors: encode everything
    fresh.index_items(changed)
    np.testing.assert_allclose(loaded.catalogue.vectors, fresh.catalogue.vectors, atol=1e-5)


def test_stored_vectors_are_never_reused_for_another_pooling(recommender, tmp_path, monkeypatch):
    """Defect: --pooling cls on a model directory reused its stored mean-pooled item vectors."""
    out = recommender.save(str(tmp_path / "model"))
    # the saved head (the fitted whitening) belongs to mean pooling: another one is refused
    with pytest.raises(ValueError, match="mean-pooled"):
        Recommender.load(out, overrides={"pooling": "cls"})
    cls_model = Recommender.load(out, zero_shot=True, overrides={"pooling": "cls"})
    calls = []
    original = cls_model.encoder.encode
    monkeypatch.setattr(cls_model.encoder, "encode",
                        lambda texts, **kw: calls.append(list(texts)) or original(texts, **kw))
    cls_model.index_items(ITEMS)
    assert calls == [[item.full_text() for item in ITEMS]]  # every item encoded with cls
    direct = Recommender.load(recommender.encoder.files.directory,
                              overrides={"pooling": "cls"}).index_items(ITEMS)
    np.testing.assert_allclose(cls_model.catalogue.raw, direct.catalogue.raw, atol=1e-5)
