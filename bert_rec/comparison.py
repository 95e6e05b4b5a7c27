"""bert_rec against the classic recommenders on one split (``bert-rec evaluate``).

evaluation.py holds the TF-free protocol, metrics and baselines; this module adds the BERT
models (the given model and its zero-shot form) and the bar chart.
"""


from .evaluation import dislike_probe, evaluate_scores, run_baselines
from .recommend import Recommender
from .utils.atomic import save_figure

METHOD_ORDER = ("bert_rec", "zero_shot", "itemknn", "tfidf", "popularity")


def evaluate_all(model_path, items, cases, k=10, cache_dir=None, overrides=None, truth=None):
    """{method: metrics} for bert_rec, zero_shot and the baselines, on the same cases.

    ``zero_shot`` is the model's encoder with the zero-shot head (weighted-mean pooling,
    BERT-whitening fitted on these items); for a raw checkpoint directory it equals bert_rec.
    The baselines weigh behaviours with the model's scoring settings. Every method also gets
    the disliked-items rate (``evaluation.dislike_probe``: ``truth`` (user, item) pairs, else
    ratings below the midpoint). ``cache_dir`` and ``overrides``: as for ``Recommender.load``.
    """
    results = {}
    model = Recommender.load(model_path, cache_dir=cache_dir,
                             overrides=overrides).index_items(items)
    probe = dislike_probe(items, cases, model.config.scoring, truth)
    results["bert_rec"] = evaluate_model(model, cases, items, k, probe)
    if model.trained:
        zero_shot = Recommender.load(model_path, zero_shot=True, cache_dir=cache_dir,
                                     overrides=overrides).index_items(items)
        results["zero_shot"] = evaluate_model(zero_shot, cases, items, k, probe)
    else:
        results["zero_shot"] = dict(results["bert_rec"])
    results.update(run_baselines(items, cases, k=k, weights=model.config.scoring, probe=probe))
    return {name: results[name] for name in METHOD_ORDER}


def evaluate_model(model, cases, items, k, probe=None):
    """Metrics of an indexed Recommender on leave-last-out ``cases``."""
    return evaluate_scores(lambda batch: model.score([c.history for c in batch]), cases, items,
                           k=k, probe=probe)


def plot_results(report, path):
    """Grouped bar chart of HR/NDCG/MRR@K per method, written atomically."""
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415
    results, k = report["results"], report["k"]
    methods = list(results)
    metrics = [("hr", f"HR@{k}"), ("ndcg", f"NDCG@{k}"), ("mrr", "MRR")]
    x = np.arange(len(methods))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(metrics)
    for i, (key, label) in enumerate(metrics):
        bars = ax.bar(x + (i - 1) * width, [results[m][key] for m in methods], width, label=label)
        ax.bar_label(bars, fmt="%.3f", fontsize=7)
    ax.set_xticks(x, methods)
    ax.set_title(f"leave-last-out, {report['users_evaluated']} users, full ranking")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
