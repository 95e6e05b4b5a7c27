"""The sentiment head (num_classes=2): AUC, labels, training, files, commands, and the polarity
it gives behaviour texts when recommending."""

import gzip
import itertools
import json
import os

import numpy as np
import pytest

from bert_rec.backend import tf
from bert_rec.cli import main
from bert_rec.config import SentimentConfig
from bert_rec.data import Behavior, InputError, Item
from bert_rec.recommend import Recommender
from bert_rec.sentiment import (SentimentClassifier, log_labels, read_labelled, roc_auc,
                                train_sentiment)

PRAISE = ["好看", "喜欢", "推荐", "精彩", "可爱", "好吃"]
# Negated praise: the words of the positive texts, with a negation: only word order and the
# negation tell the classes apart (a stopword list with 不/没 in it would erase the difference).
COMPLAINTS = [f"不{word}" for word in PRAISE] + [f"没有{word}" for word in PRAISE]


def _toy(n, seed):
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(n):
        label = int(rng.random() < 0.5)
        words = rng.choice(PRAISE if label else COMPLAINTS, 2)
        texts.append("这个视频 " + " ".join(words))
        labels.append(label)
    return texts, labels


def test_roc_auc_is_the_pairwise_ranking_probability():
    rng = np.random.default_rng(0)
    labels = rng.random(40) < 0.4
    scores = np.round(rng.random(40), 1)  # with ties
    pairs = [(1.0 if p > n else 0.5 if p == n else 0.0)
             for p, n in itertools.product(scores[labels], scores[~labels])]
    assert roc_auc(labels, scores) == pytest.approx(np.mean(pairs))
    assert np.isnan(roc_auc([1, 1], [0.2, 0.4]))


def test_labelled_files_and_log_labels(tmp_path):
    path = tmp_path / "l.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write('{"text": "好看", "label": 1}\n{"text": "不好看", "label": "0"}\n')
    assert read_labelled([str(path)]) == (["好看", "不好看"], [1, 0])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "好看", "label": 1}\n{"text": "x", "label": 3}\n', encoding="utf-8")
    with pytest.raises(InputError, match=r"bad.jsonl line 2, field 'label': expected 1"):
        read_labelled([str(bad)])
    day = 86400.0
    log = [Behavior("u", "a", "rate", 0, 5.0), Behavior("u", "a", "comment", day, text="好"),
           Behavior("u", "b", "rate", 0, 1.0), Behavior("u", "b", "comment", day, text="差"),
           Behavior("u", "c", "rate", 0, 3.0), Behavior("u", "c", "comment", day, text="还行"),
           Behavior("v", "a", "comment", day, text="没评分")]
    assert log_labels(log) == (["好", "差"], [1, 0])
    assert log_labels(log, positive_rating=3.0) == (["好", "差", "还行"], [1, 0, 1])


@pytest.fixture(scope="module")
def trained(tiny_ckpt, tmp_path_factory):
    texts, labels = _toy(160, 0)
    out = str(tmp_path_factory.mktemp("sentiment") / "model")
    config = SentimentConfig(train_layers=-1, epochs=12, batch_size=16, learning_rate=3e-3,
                             max_len=16)
    clf = train_sentiment(tiny_ckpt, texts, labels, out, config, {"files": ["toy"]})
    return clf, out


def test_training_learns_negation(trained):
    clf, _ = trained
    texts, labels = _toy(80, 1)
    metrics = clf.evaluate(texts, labels)
    assert metrics["auc"] > 0.9 and metrics["accuracy"] > 0.8, metrics
    assert clf.meta["validation"]["auc"] == max(h["auc"] for h in clf.meta["history"])


def test_training_is_reproducible_whatever_the_global_random_state(tiny_ckpt, tmp_path):
    """The same settings give the same head, even after other code drew random numbers (the
    new Dense layer's initial weights once came from the unseeded global state)."""
    import random
    texts, labels = _toy(60, 0)
    config = SentimentConfig(train_layers=1, epochs=1, batch_size=16, max_len=16)
    weights = []
    for state in (1, 2):
        random.seed(state)
        np.random.seed(state)
        tf.random.set_seed(state)
        clf = train_sentiment(tiny_ckpt, texts, labels, str(tmp_path / str(state)), config)
        weights.append(clf.model.get_weights())
    for first, second in zip(*weights):
        np.testing.assert_array_equal(first, second)


def test_bfloat16_fine_tuning_learns_negation_and_saves_a_float32_head(tiny_ckpt, tmp_path):
    """precision="bfloat16": the trained layers and the head compute in bfloat16 (float32
    variables and logits); train_sentiment returns the saved head reloaded in float32."""
    from bert_rec.backend import keras
    texts, labels = _toy(160, 0)
    low = SentimentClassifier(tiny_ckpt, train_layers=-1, max_len=16, precision="bfloat16")
    assert {layer.compute_dtype for layer in low.transformer.model.layers
            if layer.name.startswith("Transformer-1-")} == {"bfloat16"}
    assert {v.dtype for v in low.model.trainable_variables} == {tf.float32}
    assert keras.mixed_precision.global_policy().name == "float32"  # restored
    config = SentimentConfig(train_layers=-1, epochs=12, batch_size=16, learning_rate=3e-3,
                             max_len=16, precision="bfloat16")
    out = str(tmp_path / "bf16")
    clf = train_sentiment(tiny_ckpt, texts, labels, out, config)
    assert clf.precision == "float32" and clf.directory == out
    assert clf.meta["settings"]["precision"] == "bfloat16"
    test_texts, test_labels = _toy(80, 1)
    # ranks by negation (accuracy at P = 0.5 is left out: the first epoch with a perfect
    # validation AUC is kept, and how calibrated it is varies from run to run)
    assert clf.evaluate(test_texts, test_labels)["auc"] > 0.9
    # the same weights computing in bfloat16 agree up to its rounding
    low.model.set_weights(clf.model.get_weights())
    low_p, high_p = low.predict(test_texts), clf.predict(test_texts)
    assert np.abs(low_p - high_p).max() < 0.05 and np.abs(low_p - high_p).max() > 0


def test_model_directory_holds_the_head(trained, tiny_ckpt):
    clf, out = trained
    assert SentimentClassifier.present(out) and not SentimentClassifier.present(tiny_ckpt)
    assert {"bert_rec.json", "stopwords.txt", "sentiment.npz", "sentiment.json",
            "vocab.txt"} <= set(os.listdir(out))
    reloaded = SentimentClassifier.load(out)
    texts = ["这个视频 不好看", "这个视频 好看 喜欢", "没有 推荐"]
    np.testing.assert_allclose(reloaded.predict(texts), clf.predict(texts), atol=1e-6)
    meta = json.load(open(os.path.join(out, "sentiment.json"), encoding="utf-8"))
    assert meta["train_layers"] == 2 and meta["data"] == {"files": ["toy"]}
    assert meta["truncation"] == "head" and reloaded.truncation == "head"
    rec = Recommender.load(out)
    assert rec.sentiment is not None and not rec.trained


def test_warm_cache_answers_without_cleaning_or_running_the_head(trained, tmp_path,
                                                                  monkeypatch):
    """With an encode cache the head's P(positive) of raw texts are kept: a warm call cleans
    and runs nothing and gives the same floats; other head files are another namespace."""
    import shutil
    _, out = trained
    texts = ["这个视频 不好看", "这个视频 好看 喜欢", "没有 推荐", "这个视频 不好看"]
    plain = SentimentClassifier.load(out).predict(texts)
    rec = Recommender.load(out, cache_dir=str(tmp_path / "cache"))
    clf = rec.sentiment
    assert clf.cache is not None and clf.cache.directory != rec.encoder.cache.directory
    np.testing.assert_array_equal(clf.predict(texts), plain)  # cold: computed and stored
    calls = []
    monkeypatch.setattr(clf.pipeline, "clean_many", lambda batch: calls.append(batch))
    monkeypatch.setattr(clf, "_logits", lambda *a: calls.append(a))
    np.testing.assert_array_equal(clf.predict(texts[::-1]), plain[::-1])
    assert calls == []  # every raw text was a hit
    monkeypatch.undo()
    other = tmp_path / "other"
    shutil.copytree(out, other)
    arrays = dict(np.load(other / "sentiment.npz"))
    name = next(k for k in arrays if k.startswith("sentiment_head/0"))
    arrays[name] = -arrays[name]  # the head's kernel flipped: another classifier
    np.savez(other / "sentiment.npz", **arrays)
    flipped = Recommender.load(str(other), cache_dir=str(tmp_path / "cache")).sentiment
    assert flipped.cache.directory != clf.cache.directory
    assert not np.allclose(flipped.predict(texts), plain, atol=1e-3)  # no stale hits
    with pytest.raises(ValueError, match="not loaded from a model directory"):
        SentimentClassifier(out).enable_cache(str(tmp_path / "cache"))


def test_sentiment_command(trained, tmp_path, tiny_ckpt, capsys):
    _, out = trained
    inputs = tmp_path / "in.jsonl"
    inputs.write_text('{"text": "这个视频<b>不好看 没有喜欢</b>"}\n{"text": "这个视频 好看 喜欢"}\n',
                      encoding="utf-8")
    assert main(["sentiment", "--model", out, "--input", str(inputs), "--format", "json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["text"] for r in rows] == ["视频 不 好看 没有 喜欢", "视频 好看 喜欢"]  # cleaned
    assert rows[0]["label"] == "negative" and rows[1]["label"] == "positive"
    assert all(0 <= r["positive"] <= 1 and set(r) == {"text", "positive", "label"} for r in rows)
    lines = tmp_path / "in.txt"
    lines.write_text("这个视频 不好看\n\n这个视频 好看\n", encoding="utf-8")
    assert main(["sentiment", "--model", out, "--input", str(lines)]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2
    assert main(["sentiment", "--model", tiny_ckpt, "--input", str(lines)]) == 2
    err = capsys.readouterr().err.strip()
    assert "has no sentiment head" in err and "train-sentiment" in err and len(err.splitlines()) == 1


def test_train_sentiment_command_from_the_log(tiny_ckpt, tmp_path, capsys):
    rows = []
    for n in range(24):
        liked = n % 2 == 0
        rows.append({"user_id": f"u{n}", "item_id": "a", "behavior": "rate",
                     "timestamp": 1709287200 + n, "rating": 5 if liked else 1})
        rows.append({"user_id": f"u{n}", "item_id": "a", "behavior": "comment",
                     "timestamp": 1709287300 + n, "text": "好看" if liked else "不好看"})
    log = tmp_path / "b.jsonl"
    log.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                   encoding="utf-8")
    out = tmp_path / "m"
    assert main(["train-sentiment", "--model", tiny_ckpt, "--behaviors", str(log), "--out",
                 str(out), "--epochs", "1", "--max-len", "16"]) == 0
    err = capsys.readouterr().err
    assert "24 labelled texts (12 positive)" in err and "validation accuracy" in err
    meta = json.loads((out / "sentiment.json").read_text(encoding="utf-8"))
    assert meta["data"]["log_examples"] == 24 and meta["settings"]["positive_rating"] == 4.0
    assert main(["train-sentiment", "--model", tiny_ckpt, "--out", str(out)]) == 2
    assert "needs labelled texts" in capsys.readouterr().err


def test_a_complaint_pushes_recommendations_away(trained):
    """With the head, a comment the head reads as negative makes its item a dislike: items like
    it are ranked lower, and the explanation says why, with a negative share."""
    _, out = trained
    items = [Item("food1", "这个视频 好吃 红烧肉"), Item("food2", "这个视频 好吃 红烧肉 家常菜"),
             Item("ball1", "篮球 比赛 精彩"), Item("ball2", "篮球 比赛 集锦"),
             Item("pets1", "小猫 小狗 可爱")]
    history = [Behavior("u", "ball1", "view", 0.0), Behavior("u", "food1", "view", 10.0),
               Behavior("u", "food1", "comment", 20.0, text="这个视频 不好吃 没有推荐")]
    signed = Recommender.load(out).index_items(items)
    assert signed.sentiment.predict(["这个视频 不好吃 没有推荐"])[0] < 0.5
    result = signed.recommend({"u": history}, k=3, explain=3)[0]
    blind = Recommender.load(out, overrides={"scoring": {"polarity": "off"}}).index_items(items)
    before = blind.recommend({"u": history}, k=3)[0]
    rank = {r.item_id: i for i, r in enumerate(result.items)}
    blind_rank = {r.item_id: i for i, r in enumerate(before.items)}
    assert rank.get("food2", 9) > blind_rank["food2"]
    for recommended in result.items:  # every explanation: the food1 behaviours are dislikes
        assert sum(b.share for b in recommended.because) == pytest.approx(1.0, abs=1e-5)
        for because in recommended.because:
            assert because.polarity == ("negative" if because.item_id == "food1" else "neutral")


def test_head_tail_truncation_keeps_the_verdict_at_the_end(tiny_ckpt):
    from bert_rec.checkpoint import find_checkpoint
    from bert_rec.tokenization import encode_texts, head_tail, load_tokenizer
    ids = list(range(100, 130))                      # [CLS]=100, body 101..128, [SEP]=129
    cut = head_tail(ids, 10)                         # room 8: head 2, tail 6
    assert cut == [100, 101, 102, 123, 124, 125, 126, 127, 128, 129]
    assert head_tail(ids[:8], 10) == ids[:8]         # short texts are not touched
    tokenizer = load_tokenizer(find_checkpoint(tiny_ckpt).vocab_path)
    review = "好看" * 40 + "但是 结局 太差"
    head, both = (encode_texts(tokenizer, [review], 16, t)[0] for t in ("head", "head_tail"))
    assert len(head) == len(both) == 16 and head[0] == both[0] and head[-1] == both[-1]
    verdict = tokenizer.encode("太差")[0][1:-1]
    assert both[-1 - len(verdict):-1] == verdict and head[-1 - len(verdict):-1] != verdict
    with pytest.raises(ValueError, match="truncation must be one of head, head_tail"):
        SentimentConfig(truncation="middle")


def test_ngram_model_is_the_baselines_and_round_trips(tmp_path):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from bert_rec.ngrams import NgramLogit, fit_blend
    texts, labels = _toy(200, 3)
    words = [t.split() for t in texts]
    model = NgramLogit.fit(words, labels)
    # bench/sentiment.py's baseline: the same features and classifier, fitted by sklearn
    baseline = TfidfVectorizer(tokenizer=str.split, lowercase=False, token_pattern=None,
                               ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    classifier = LogisticRegression(max_iter=2000).fit(baseline.fit_transform(texts), labels)
    expected = classifier.decision_function(baseline.transform(texts[:50]))
    np.testing.assert_allclose(model.logit(words[:50]), expected, atol=1e-4)
    model.save(str(tmp_path))
    np.testing.assert_allclose(NgramLogit.load(str(tmp_path)).logit(words[:50]),
                               model.logit(words[:50]), atol=1e-6)
    # the blend: a logistic regression on the two log-odds, weights >= 0
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    good, noise = (2 * y - 1) + rng.normal(0, 1, 400), rng.normal(0, 1, 400)
    blend = fit_blend(good, noise - 3 * (2 * y - 1), y)  # the second is anti-correlated
    assert blend["bert"] == 0.0 and blend["ngram"] > 0.5
    both = fit_blend(good, (2 * y - 1) + rng.normal(0, 1, 400), y)
    assert both["ngram"] > 0.3 and both["bert"] > 0.3
    assert fit_blend(good, noise, np.ones(400)) == {"ngram": 1.0, "bert": 1.0, "bias": 0.0}


def test_head_stacked_on_ngrams(tiny_ckpt, tmp_path):
    texts, labels = _toy(160, 0)
    out = str(tmp_path / "model")
    # enough training for BERT's half to learn too (2 epochs of the top layer did not, with
    # 16 validation texts to tell), now that the head's initial weights are seeded
    config = SentimentConfig(train_layers=-1, epochs=6, batch_size=16, learning_rate=3e-3,
                             max_len=16, ngrams=True, validation_fraction=0.25)
    clf = train_sentiment(tiny_ckpt, texts, labels, out, config)
    test_texts, test_labels = _toy(80, 1)
    assert clf.evaluate(test_texts, test_labels)["auc"] > 0.95
    assert 0.5 < clf.meta["ngrams_validation_auc"] <= 1.0
    assert 0.5 < clf.meta["bert_validation_auc"] <= 1.0
    meta = json.load(open(os.path.join(out, "sentiment.json"), encoding="utf-8"))
    assert meta["ngrams"] is True and os.path.isfile(os.path.join(out, "ngrams.npz"))
    assert meta["blend"] == clf.blend and set(clf.blend) == {"ngram", "bert", "bias"}
    assert clf.blend["ngram"] >= 0 and clf.blend["bert"] >= 0
    reloaded = SentimentClassifier.load(out)
    assert reloaded.ngrams is not None and reloaded.blend == clf.blend
    np.testing.assert_allclose(reloaded.predict(test_texts), clf.predict(test_texts), atol=1e-6)
    # P(positive) = sigmoid(a * n-gram log-odds + b * BERT's + c)
    cleaned = clf.pipeline.clean_many(test_texts[:4])
    ngram_half = clf.ngrams
    clf.ngrams = None
    without = clf.predict(test_texts[:4])
    clf.ngrams = ngram_half
    b = clf.blend
    log_odds = (b["bert"] * np.log(without / (1 - without)) + b["bias"]
                + b["ngram"] * ngram_half.logit([c.split() for c in cleaned]))
    np.testing.assert_allclose(clf.predict(test_texts[:4]), 1 / (1 + np.exp(-log_odds)),
                               atol=1e-5)
    # a recommender's model directory written from it keeps the n-gram half
    items = [Item("a", "这个视频 好看"), Item("b", "小猫 可爱")]
    saved = Recommender.load(out).index_items(items).save(str(tmp_path / "rec"))
    again = Recommender.load(saved).sentiment
    assert again.ngrams is not None
    np.testing.assert_allclose(again.predict(test_texts), clf.predict(test_texts), atol=1e-6)
    # a model directory written before the blend (no "blend") adds the two log-odds
    del meta["blend"]
    with open(os.path.join(out, "sentiment.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f)
    assert SentimentClassifier.load(out).blend == {"ngram": 1.0, "bert": 1.0, "bias": 0.0}
