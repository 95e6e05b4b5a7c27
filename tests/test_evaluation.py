"""Tests for bert_rec.evaluation: leave-last-out split, ranking metrics and baselines."""

import math
import subprocess
import sys

import numpy as np
import pytest

from bert_rec.config import DEFAULT_BEHAVIOR_WEIGHTS, ScoringConfig
from bert_rec.data import Behavior, Item, group_by_user
from bert_rec.evaluation import (
    dislike_probe,
    Case,
    ItemKNN,
    Popularity,
    TfidfContent,
    evaluate_scores,
    format_metrics,
    item_index,
    leave_last_out,
    run_baselines,
    target_ranks,
)


def ev(user, item, ts, behavior="view"):
    return Behavior(user, item, behavior, float(ts))


def catalogue(*ids, texts=None):
    texts = texts or {}
    return [Item(item_id, texts.get(item_id, item_id)) for item_id in ids]


def split(events):
    cases, _ = leave_last_out(group_by_user(events))
    return cases


def top_item(model, case, items):
    """The best candidate for `case` (history excluded, ties by catalogue order)."""
    scores = model.scores([case])[0].astype(float)
    for event in case.history:
        scores[item_index(items)[event.item_id]] = -np.inf
    return items[int(np.argmax(scores))].item_id


# --------------------------------------------------------------------------- leave_last_out


def test_leave_last_out_target_is_last_distinct_item_and_history_is_cut():
    events = [ev("u1", "a", 1), ev("u1", "b", 2), ev("u1", "a", 3), ev("u1", "c", 4, "click"),
              ev("u1", "b", 5), ev("u1", "c", 6, "comment")]
    cases, skipped = leave_last_out(group_by_user(events))
    assert skipped == 0
    assert [(c.user_id, c.target) for c in cases] == [("u1", "c")]
    assert cases[0].history == events[:3]          # everything before c's first behaviour


def test_leave_last_out_last_behavior_is_a_review_of_an_older_item():
    events = [ev("u1", "a", 1), ev("u1", "b", 2), ev("u1", "a", 3)]
    (case,), _ = leave_last_out(group_by_user(events))
    assert case.target == "b"
    assert case.history == [events[0]]


def test_leave_last_out_skips_users_with_one_distinct_item_and_keeps_user_order():
    events = [ev("u9", "a", 1), ev("u9", "b", 2),
              ev("u2", "a", 1), ev("u2", "a", 5, "click"),   # one distinct item: skipped
              ev("u3", "c", 7),                             # one behaviour: skipped
              ev("u1", "c", 1), ev("u1", "a", 2)]
    cases, skipped = leave_last_out(group_by_user(events))
    assert skipped == 2
    assert [(c.user_id, c.target) for c in cases] == [("u9", "b"), ("u1", "a")]
    again, _ = leave_last_out(group_by_user(events))
    assert again == cases


def test_leave_last_out_timestamp_ties_resolved_by_input_order():
    events = [ev("u1", "a", 1), ev("u1", "c", 5), ev("u1", "b", 5), ev("u1", "d", 0)]
    (case,), _ = leave_last_out(group_by_user(events))
    assert case.target == "b"                      # same time as c, but read after it
    assert [e.item_id for e in case.history] == ["d", "a", "c"]


# --------------------------------------------------------------------------- metrics

ITEMS12 = catalogue(*"abcdefghijkl")


def hand_cases():
    """Three cases over 12 items whose targets rank 1, 3 and 11."""
    return [Case("u1", [ev("u1", "a", 0)], "b"),
            Case("u2", [ev("u2", "a", 0)], "c"),
            Case("u3", [ev("u3", "l", 0)], "a")]


def hand_scores():
    base = -np.arange(12, dtype=float)            # a > b > c > ... > l
    s1 = base.copy()                              # history a; b best of the rest -> rank 1
    s2 = base.copy()
    s2[[1, 2, 3]] = [5.0, 4.0, 4.5]               # history a; b and d above c -> rank 3
    s3 = np.arange(1.0, 13.0)                     # history l; a lowest of a..k -> rank 11
    return np.stack([s1, s2, s3])


def test_target_ranks_hand_computed():
    ranks = target_ranks(hand_scores(), hand_cases(), item_index(ITEMS12))
    assert ranks.tolist() == [1, 3, 11]


def test_metrics_hand_computed_at_k10():
    scores = hand_scores()
    metrics = evaluate_scores(lambda batch: scores[[int(c.user_id[1]) - 1 for c in batch]],
                              hand_cases(), ITEMS12, k=10)
    assert set(metrics) == {"hr", "ndcg", "mrr", "coverage"}
    assert all(type(value) is float for value in metrics.values())
    assert metrics["hr"] == pytest.approx(2 / 3)
    assert metrics["ndcg"] == pytest.approx((1 + 0.5) / 3)
    assert metrics["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 11) / 3)
    assert 0 < metrics["coverage"] <= 1


def test_batching_does_not_change_metrics():
    scores = hand_scores()
    fn = lambda batch: scores[[int(c.user_id[1]) - 1 for c in batch]]  # noqa: E731
    assert (evaluate_scores(fn, hand_cases(), ITEMS12, k=3, batch_size=1)
            == evaluate_scores(fn, hand_cases(), ITEMS12, k=3, batch_size=256))


def test_ties_are_pessimistic():
    cases = [Case("u1", [ev("u1", "a", 0), ev("u1", "b", 1), ev("u1", "a", 2)], "c")]
    index = item_index(ITEMS12)
    constant = np.ones((1, 12))
    assert target_ranks(constant, cases, index).tolist() == [10]   # 12 items - 2 history items
    metrics = evaluate_scores(lambda batch: np.ones((len(batch), 12)), cases, ITEMS12, k=10)
    assert metrics["mrr"] == pytest.approx(1 / 10) and metrics["hr"] == 1.0
    assert metrics["ndcg"] == pytest.approx(1 / math.log2(11))
    partial = np.zeros((1, 12))
    partial[0, index["c"]] = 5
    partial[0, index["d"]] = 5      # tie: counts against the target
    partial[0, index["e"]] = 6      # strictly higher
    partial[0, index["a"]] = 99     # history: not a candidate
    assert target_ranks(partial, cases, index).tolist() == [3]


def test_nan_scores_count_as_minus_infinity():
    cases = [Case("u1", [ev("u1", "a", 0)], "b")]
    scores = np.zeros((1, 12))
    scores[0, 1] = np.nan
    assert target_ranks(scores, cases, item_index(ITEMS12)).tolist() == [11]


def test_history_items_excluded_from_candidates_and_coverage():
    items = catalogue("a", "b", "c", "d")
    cases = [Case("u1", [ev("u1", "a", 0)], "c"), Case("u2", [ev("u2", "a", 0)], "d")]
    scores = np.array([[9.0, 1.0, 2.0, 0.0], [9.0, 1.0, 0.0, 3.0]])   # a would always win
    assert target_ranks(scores, cases, item_index(items)).tolist() == [1, 1]
    metrics = evaluate_scores(lambda batch: scores[: len(batch)], cases, items, k=1)
    assert metrics["hr"] == 1.0
    assert metrics["coverage"] == pytest.approx(2 / 4)          # c and d, never a
    # Ties in the top-k are broken by catalogue order: b before c.
    flat = evaluate_scores(lambda batch: np.zeros((len(batch), 4)), cases[:1], items, k=1)
    assert flat["coverage"] == pytest.approx(1 / 4)
    # k larger than the number of candidates: all candidates, still no history item.
    wide = evaluate_scores(lambda batch: scores[: len(batch)], cases, items, k=10)
    assert wide["coverage"] == pytest.approx(3 / 4)


def test_bad_inputs_raise_value_error():
    cases = hand_cases()
    index = item_index(ITEMS12)
    with pytest.raises(ValueError, match="shape"):
        target_ranks(np.zeros((3, 5)), cases, index)
    with pytest.raises(ValueError, match="not in the catalogue"):
        target_ranks(np.zeros((1, 12)), [Case("u", [], "zz")], index)
    with pytest.raises(ValueError, match="no cases"):
        evaluate_scores(lambda batch: None, [], ITEMS12)
    with pytest.raises(ValueError, match="more than once"):
        item_index(catalogue("a", "a"))


# --------------------------------------------------------------------------- baselines


def test_popularity_counts_distinct_users_and_picks_most_popular_unseen():
    items = catalogue("a", "b", "c", "d", "t")
    events = [ev("u1", "a", 1), ev("u1", "b", 2), ev("u1", "t", 3),
              ev("u2", "a", 1), ev("u2", "b", 2), ev("u2", "t", 3),
              ev("u3", "a", 1), ev("u3", "c", 2), ev("u3", "t", 3),
              ev("u4", "d", 1), ev("u4", "d", 2), ev("u4", "d", 3), ev("u4", "t", 4)]
    cases = split(events)
    model = Popularity().fit(items, cases)
    assert model.name == "popularity"
    # Distinct users: d's three views by u4 count once; the target t is never counted.
    assert model.scores(cases[:1])[0].tolist() == [3, 2, 1, 1, 0]
    assert top_item(model, cases[0], items) == "c"     # a, b seen; c ties d, c first
    assert top_item(model, cases[3], items) == "a"
    assert model.scores(cases).shape == (4, 5)


def co_click_data():
    """x and y are co-clicked; p and q are more popular but never with x."""
    items = catalogue("p", "q", "x", "y", "z", "t")
    events = []
    for user in ["u1", "u2"]:
        events += [ev(user, "x", 1), ev(user, "y", 2), ev(user, "t", 3)]
    for user in ["u3", "u4", "u5"]:
        events += [ev(user, "p", 1), ev(user, "q", 2), ev(user, "t", 3)]
    events += [ev("u6", "x", 1), ev("u6", "z", 2)]       # target z; history x
    return items, split(events)


def test_itemknn_recommends_co_clicked_item_where_popularity_would_not():
    items, cases = co_click_data()
    probe = cases[-1]
    assert probe.user_id == "u6" and [e.item_id for e in probe.history] == ["x"]
    assert top_item(Popularity().fit(items, cases), probe, items) == "p"
    knn = ItemKNN().fit(items, cases)
    assert knn.name == "itemknn"
    assert top_item(knn, probe, items) == "y"
    index = item_index(items)
    sim = knn.similarity
    assert np.allclose(np.diag(sim), 0)
    # x: users {u1, u2, u6}; y: {u1, u2} -> cosine 2 / sqrt(3 * 2)
    assert sim[index["x"], index["y"]] == pytest.approx(2 / math.sqrt(6))
    assert sim[index["x"], index["p"]] == 0


def test_itemknn_keeps_top_neighbors_and_weights_behaviors():
    items = catalogue("a", "b", "c", "t")
    events = [ev("u1", "a", 1), ev("u1", "b", 2), ev("u1", "c", 3), ev("u1", "t", 4),
              ev("u2", "a", 1), ev("u2", "b", 2), ev("u2", "t", 3)]
    cases = split(events)
    index = item_index(items)
    full = ItemKNN().fit(items, cases).similarity
    assert full[index["a"], index["b"]] > full[index["a"], index["c"]] > 0
    pruned = ItemKNN(neighbors=1).fit(items, cases)
    row = pruned.similarity[index["a"]]
    assert row[index["b"]] == pytest.approx(full[index["a"], index["b"]])
    assert row[index["c"]] == 0
    # A view (1) plus a click (2) on a add up to weight 3.
    probe = Case("u9", [ev("u9", "a", 1), ev("u9", "a", 2, "click")], "t")
    assert np.allclose(pruned.scores([probe])[0], 3 * row)
    custom = ItemKNN(neighbors=1, weights={"view": 0.5, "click": 0.0}).fit(items, cases)
    assert np.allclose(custom.scores([probe])[0], 0.5 * row)
    # a model's ScoringConfig, its names matched ignoring case (as the readers and the model do)
    scoring = ScoringConfig(behavior_weights={"View": 0.5, "CLICK": 0.0})
    model_weights = ItemKNN(neighbors=1, weights=scoring).fit(items, cases)
    assert np.allclose(model_weights.scores([probe])[0], 0.5 * row)
    assert scoring.behavior_weight("click") == 0.0 and scoring.behavior_weight("VIEW") == 0.5


TFIDF_TEXTS = {"h": "量子 搞笑", "b": "量子 物理 讲座", "a": "搞笑 小猫", "c": "搞笑 小狗",
               "d": "搞笑 视频", "e": "搞笑 段子"}


def tfidf_data():
    items = catalogue(*TFIDF_TEXTS, texts=TFIDF_TEXTS)
    events = [ev("u1", "a", 1), ev("u1", "c", 2), ev("u2", "a", 1), ev("u2", "d", 2),
              ev("u3", "h", 1), ev("u3", "b", 2)]
    return items, split(events)


def test_tfidf_recommends_item_sharing_rare_words_with_history():
    from bert_rec.text import TextPipeline
    items, cases = tfidf_data()
    probe = cases[-1]
    assert [e.item_id for e in probe.history] == ["h"] and probe.target == "b"
    assert top_item(Popularity().fit(items, cases), probe, items) == "a"
    model = TfidfContent(tokenize=TextPipeline().words).fit(items, cases)
    assert model.name == "tfidf"
    assert top_item(model, probe, items) == "b"
    # Hand-computed: N = 6; 搞笑 df 5, 量子 df 2, others df 1.
    idf = {df: math.log(7 / (1 + df)) + 1 for df in (1, 2, 5)}
    assert model.idf[model.vocabulary["量子"]] == pytest.approx(idf[2])
    h = np.array([idf[2], idf[5]])
    cos_b = idf[2] ** 2 / (np.linalg.norm(h) * math.sqrt(idf[2] ** 2 + 2 * idf[1] ** 2))
    cos_a = idf[5] ** 2 / (np.linalg.norm(h) * math.sqrt(idf[5] ** 2 + idf[1] ** 2))
    scores = model.scores([probe])[0]
    index = item_index(items)
    assert scores[index["b"]] == pytest.approx(cos_b)
    assert scores[index["a"]] == pytest.approx(cos_a)
    assert scores[index["h"]] == pytest.approx(1.0)


def test_tfidf_profile_is_weighted_mean_of_item_vectors():
    items = catalogue("a", "b", "c", "e", texts={"a": "x y", "b": "y z z", "c": "x w", "e": ""})
    model = TfidfContent(tokenize=str.split).fit(items, [])
    vocab = ["x", "y", "z", "w"]
    tf = np.array([[1, 1, 0, 0], [0, 1, 2, 0], [1, 0, 0, 1], [0, 0, 0, 0]], dtype=float)
    df = (tf > 0).sum(axis=0)
    X = tf * (np.log(5 / (1 + df)) + 1)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    X = np.divide(X, norms, out=np.zeros_like(X), where=norms > 0)
    assert [model.idf[model.vocabulary[t]] for t in vocab] == pytest.approx(np.log(5 / (1 + df)) + 1)
    probe = Case("u", [ev("u", "a", 1, "comment"), ev("u", "b", 2)], "c")   # weights 3 and 1
    profile = (3 * X[0] + 1 * X[1]) / 4
    expected = X @ profile / np.linalg.norm(profile)
    assert np.allclose(model.scores([probe])[0], expected)
    empty = Case("u", [ev("u", "e", 1)], "a")      # no words in the history: all zeros
    assert np.allclose(model.scores([empty])[0], 0)


def test_no_leakage_interactions_at_or_after_target_do_not_change_models():
    items = catalogue("p", "q", "x", "y", "z", "t", texts={"x": "x y", "y": "y", "z": "z t", "t": "t"})
    events = [ev("u1", "x", 1), ev("u1", "y", 2), ev("u1", "t", 3),
              ev("u2", "p", 1), ev("u2", "q", 2), ev("u2", "z", 3),
              ev("u3", "x", 1), ev("u3", "z", 2)]
    later = [ev("u1", "t", 3, "comment"),          # same time as the target, read after it
             ev("u1", "x", 4, "click"), ev("u1", "t", 9, "rate"),
             ev("u2", "q", 3), ev("u2", "z", 7, "click"), ev("u2", "p", 8),
             ev("u3", "x", 5), ev("u3", "z", 6, "comment")]
    base, leaky = split(events), split(events + later)
    assert [c.target for c in leaky] == [c.target for c in base] == ["t", "z", "z"]
    # Changing who the targets are must not matter either: fit never reads them.
    swapped = [Case(c.user_id, c.history, "p") for c in base]
    probes = base + [Case("u9", [ev("u9", "x", 1), ev("u9", "z", 2)], "t")]
    for make in (Popularity, ItemKNN, lambda: TfidfContent(tokenize=str.split)):
        reference = make().fit(items, base).scores(probes)
        assert np.array_equal(make().fit(items, leaky).scores(probes), reference)
        assert np.array_equal(make().fit(items, swapped).scores(probes), reference)
    # The targets z and t appear only as targets (or after them): never counted.
    pop = Popularity().fit(items, leaky).scores(probes[:1])[0]
    assert pop[item_index(items)["t"]] == 0 and pop[item_index(items)["z"]] == 0
    knn = ItemKNN().fit(items, leaky).similarity
    assert not knn[item_index(items)["t"]].any() and not knn[:, item_index(items)["z"]].any()


# --------------------------------------------------------------------------- reporting


def test_run_baselines_and_format_metrics():
    items, cases = co_click_data()
    results = run_baselines(items, cases, k=2, tokenize=str.split)
    assert list(results) == ["popularity", "itemknn", "tfidf"]
    for metrics in results.values():
        assert set(metrics) == {"hr", "ndcg", "mrr", "coverage"}
        assert all(0.0 <= value <= 1.0 for value in metrics.values())
    table = format_metrics(results, k=2)
    lines = table.splitlines()
    assert lines[0].split() == ["method", "HR@2", "NDCG@2", "MRR", "Coverage@2"]
    assert [line.split()[0] for line in lines[2:]] == ["popularity", "itemknn", "tfidf"]


def test_format_metrics_marks_best_per_column():
    results = {"one": {"hr": 0.5, "ndcg": 0.12345, "mrr": 0.3, "coverage": 0.1},
               "two": {"hr": 0.25, "ndcg": 0.2, "mrr": 0.3, "coverage": 0.05}}
    rows = {line.split()[0]: line.split()[1:] for line in format_metrics(results, k=5).splitlines()[2:]}
    assert rows["one"] == ["0.5000*", "0.1235", "0.3000*", "0.1000*"]
    assert rows["two"] == ["0.2500", "0.2000*", "0.3000*", "0.0500"]
    assert "HR@5" in format_metrics(results, k=5) and "Coverage@5" in format_metrics(results, k=5)


def test_default_weights_and_no_tensorflow_import():
    assert DEFAULT_BEHAVIOR_WEIGHTS == {"view": 1, "click": 2, "rate": 3, "comment": 3}
    code = "import sys, bert_rec.evaluation; assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_disliked_items_rate_counts_recommendations_closest_to_a_dislike():
    items = catalogue("a", "b", "c", "d", texts={"a": "篮球 比赛", "b": "篮球 比赛 集锦",
                                                 "c": "小猫 萌宠", "d": "小猫 萌宠 日常"})
    cases = [Case("u", [ev("u", "a", 1), ev("u", "c", 2)], "d")]
    probe = dislike_probe(items, cases, truth=[("u", "a")])
    assert probe.disliked == {"u": {"a"}}
    index = item_index(items)
    # b resembles a (disliked), d resembles c: recommending b counts, d does not
    assert probe.count(cases, [np.array([index["b"], index["d"]])], index) == (1, 2)
    scores = np.array([[0.0, 0.9, 0.0, 0.1]])  # b first
    metrics = evaluate_scores(lambda batch: scores, cases, items, k=1, probe=probe)
    assert metrics["disliked"] == 1.0
    scores = np.array([[0.0, 0.1, 0.0, 0.9]])  # d first
    assert evaluate_scores(lambda batch: scores, cases, items, k=1, probe=probe)["disliked"] == 0
    # without ground truth, a rating below the midpoint marks the dislike
    rated = [Case("u", [Behavior("u", "a", "rate", 1.0, rating=1.0), ev("u", "c", 2)], "d")]
    assert dislike_probe(items, rated).disliked == {"u": {"a"}}
    assert "Disliked@1" in format_metrics({"m": metrics}, k=1)
