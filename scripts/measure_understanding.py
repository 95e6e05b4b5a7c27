#!/usr/bin/env python3
"""Measure what each part of "understanding" adds, on the SIMULATED data/sample and data/heldout.

For each set: the baselines, the zero-shot model of each checkpoint, and `bert-rec train`
models built from the previous default (strict stopword list, every behaviour counted as
interest, attention user tower, the previous checkpoint) with one new part at a time — the
cleaning that keeps negations, signed polarity (ratings + a sentiment head trained on the
log's own rated comments from the training split), the sequence tower, the new checkpoint —
and all of them together; also both ends without item-id embeddings (text only). Every row is evaluated leave-last-out (full ranking, K=10) with the
disliked-items rate against the simulator's ground truth (`dislikes.jsonl`).

    python scripts/measure_understanding.py [--sets sample heldout] \
        [--checkpoint checkpoints/small-bert-zh] [--previous checkpoints/tiny-bert-zh] \
        [--out bench/results/understanding.json]

Prints one table per set (README "Understanding") and writes every figure as JSON. Runs in
about 30 minutes on 2 cores (one training run per row).
"""

import argparse
import json
import os
import shlex
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

STRICT = {"text": {"keep_meaning_words": False}}
BLIND = {"scoring": {"polarity": "off"}}


def variants(previous, current):
    """name -> (checkpoint, model overrides, train settings, sentiment head)."""
    before = {**STRICT, **BLIND}
    sequence, text_only = {"user_tower": "sequence"}, {"id_embeddings": False}
    return {
        "previous default": (previous, before, {}, False),
        "+ cleaning keeps negations": (previous, BLIND, {}, False),
        "+ signed polarity (ratings + sentiment head)": (previous, STRICT, {}, True),
        "+ sequence tower": (previous, before, sequence, False),
        "+ new checkpoint": (current, before, {}, False),
        "all, attention tower": (current, {}, {}, True),
        "all, sequence tower": (current, {}, sequence, True),
        # every part but the new checkpoint: the demo's model (make demo uses tiny-bert-zh)
        "all, attention tower, previous checkpoint": (previous, {}, {}, True),
        "previous default, text only (no item ids)": (previous, before, text_only, False),
        "all, text only (no item ids)": (current, {}, text_only, True),
    }


def sentiment_model(checkpoint, histories, overrides, out, seed=0):
    """A model directory with a sentiment head trained on the training split's rated comments."""
    from bert_rec.config import SentimentConfig
    from bert_rec.sentiment import log_labels, train_sentiment
    from bert_rec.training import split_for_training
    _, val_cases, _, _ = split_for_training(histories)
    texts, labels = log_labels([b for case in val_cases for b in case.history])
    config = SentimentConfig(train_layers=-1, epochs=8, learning_rate=2e-4, max_len=64,
                             seed=seed)
    clf = train_sentiment(checkpoint, texts, labels, out, config,
                          {"behaviors": "training split", "log_examples": len(texts)},
                          overrides=overrides)
    return out, clf.meta["validation"]


def run_set(name, args, work):
    from bert_rec.comparison import evaluate_model
    from bert_rec.config import TrainConfig
    from bert_rec.data import group_by_user, read_behaviors, read_items
    from bert_rec.evaluation import dislike_probe, leave_last_out, run_baselines
    from bert_rec.recommend import Recommender
    from bert_rec.training import train
    folder = os.path.join(ROOT, "data", name)
    items, _ = read_items(os.path.join(folder, "items.jsonl"))
    behaviors, _ = read_behaviors(os.path.join(folder, "behaviors.jsonl"),
                                  item_ids={i.item_id for i in items})
    histories = group_by_user(behaviors)
    cases, _ = leave_last_out(histories)
    with open(os.path.join(folder, "dislikes.jsonl"), encoding="utf-8") as f:
        truth = [(r["user_id"], r["item_id"]) for r in map(json.loads, f)]
    probe = dislike_probe(items, cases, truth=truth)
    rows = dict(run_baselines(items, cases, k=10, probe=probe))
    for label, ckpt in (("zero-shot, previous checkpoint", args.previous),
                        ("zero-shot, new checkpoint", args.checkpoint)):
        rec = Recommender.load(ckpt, overrides=STRICT if ckpt == args.previous else None)
        rows[label] = evaluate_model(rec.index_items(items), cases, items, 10, probe)
    notes = {}
    chosen = {label: v for label, v in variants(args.previous, args.checkpoint).items()
              if not args.variants or label in args.variants}
    for label, (ckpt, overrides, settings, with_sentiment) in chosen.items():
        runs = []
        for seed in args.seeds:
            started = time.time()
            run = label if len(args.seeds) == 1 else f"{label}, seed {seed}"
            model = ckpt
            if with_sentiment:
                model, notes[run] = sentiment_model(ckpt, histories, overrides,
                                                    os.path.join(work, f"{name}-{len(rows)}-s"),
                                                    seed)
            _, rec = train(model, items, histories, os.path.join(work, f"{name}-{len(rows)}"),
                           TrainConfig(**settings, seed=seed), log=open(os.devnull, "w"),
                           overrides=overrides)
            rows[run] = evaluate_model(rec, cases, items, 10, probe)
            rows[run]["seconds"] = round(time.time() - started, 1)
            runs.append(rows[run])
            print(f"  {name}: {run}: NDCG@10 {rows[run]['ndcg']:.4f}, disliked "
                  f"{rows[run]['disliked']:.4f} ({rows[run]['seconds']:.0f} s)", file=sys.stderr)
        if len(runs) > 1:
            rows[f"{label}, mean of {len(runs)} seeds"] = {
                key: float(sum(r[key] for r in runs) / len(runs)) for key in runs[0]}
    return {"users": len(cases), "rows": rows, "sentiment_validation": notes}


def table(result):
    lines = ["| method | HR@10 | NDCG@10 | MRR | Coverage@10 | disliked-items rate |",
             "|---|---|---|---|---|---|"]
    for label, m in result["rows"].items():
        lines.append(f"| {label} | {m['hr']:.4f} | {m['ndcg']:.4f} | {m['mrr']:.4f} | "
                     f"{m['coverage']:.4f} | {m['disliked']:.4f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sets", nargs="+", default=["sample", "heldout"])
    parser.add_argument("--checkpoint",
                        default=os.path.join(ROOT, "checkpoints", "small-bert-zh"))
    parser.add_argument("--previous", default=os.path.join(ROOT, "checkpoints", "tiny-bert-zh"))
    parser.add_argument("--variants", nargs="+", metavar="LABEL",
                        help="only these rows (their labels as printed; default: all)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0],
                        help="one training run per seed for each row, and their mean")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results",
                                                      "understanding.json"))
    args = parser.parse_args(argv)
    os.environ.setdefault("BERT_REC_PROGRESS", "0")
    from bert_rec.utils.atomic import write_json
    results = {}
    with tempfile.TemporaryDirectory(prefix="bert_rec-understanding-") as work:
        for name in args.sets:
            results[name] = run_set(name, args, work)
            print(f"\n{name} (SIMULATED users, {results[name]['users']} evaluated, K=10)\n")
            print(table(results[name]))
    write_json(args.out, {"command": "python scripts/measure_understanding.py "
                                     + shlex.join(argv if argv is not None else sys.argv[1:]),
                          "results": results})
    print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
