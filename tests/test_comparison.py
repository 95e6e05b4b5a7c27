"""bert-rec evaluate's comparison: the model, its zero-shot form and the baselines on one split."""

import os
import sys

import numpy as np
import pytest

from bert_rec.comparison import METHOD_ORDER, evaluate_all, plot_results
from bert_rec.config import ScoringConfig
from bert_rec.evaluation import leave_last_out, run_baselines
from bert_rec.recommend import Recommender

sys.path.insert(0, os.path.dirname(__file__))
from test_training import _dataset  # noqa: E402


@pytest.fixture(scope="module")
def split():
    items, histories = _dataset(n_users=12)
    cases, _ = leave_last_out(histories)
    return items, cases


def test_checkpoint_results_cover_every_method(tiny_ckpt, split):
    items, cases = split
    results = evaluate_all(tiny_ckpt, items, cases, k=5)
    assert list(results) == list(METHOD_ORDER)
    assert results["zero_shot"] == results["bert_rec"]  # a checkpoint is its own zero-shot
    for metrics in results.values():
        assert set(metrics) == {"hr", "ndcg", "mrr", "coverage", "disliked"}
        assert all(0 <= value <= 1 for value in metrics.values())
    plain = run_baselines(items, cases, k=5)["itemknn"]
    assert {m: v for m, v in results["itemknn"].items() if m != "disliked"} == plain


def test_baselines_weigh_behaviours_as_the_model_does(tiny_ckpt, split, tmp_path):
    """Defect: the baselines used the default weights, not the model's ScoringConfig."""
    items, cases = split
    scoring = ScoringConfig(behavior_weights={"view": 1.0, "click": 0.0})
    rec = Recommender.load(tiny_ckpt, overrides={"scoring": {"behavior_weights":
                                                             scoring.behavior_weights}})
    model = rec.index_items(items).save(str(tmp_path / "model"))
    results = evaluate_all(model, items, cases, k=5)
    with_model_weights = run_baselines(items, cases, k=5, weights=scoring)
    for method in ("itemknn", "tfidf"):
        got = {m: v for m, v in results[method].items() if m != "disliked"}
        assert got == with_model_weights[method]
    default = run_baselines(items, cases, k=5)["itemknn"]
    assert {m: v for m, v in results["itemknn"].items() if m != "disliked"} != default


def test_plot_is_a_png(tmp_path):
    report = {"k": 5, "users_evaluated": 3, "results": {
        m: {"hr": v, "ndcg": v / 2, "mrr": v / 3, "coverage": 0.1}
        for m, v in zip(METHOD_ORDER, np.linspace(0.1, 0.5, len(METHOD_ORDER)))}}
    path = tmp_path / "plot.png"
    plot_results(report, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
