#!/usr/bin/env python
"""Training throughput: examples/s and peak memory of ``bert-rec train``'s optimisation step
for the tiny, small and base configurations, with the encoder frozen, only its top 2 layers
trained, and all of it trained.

Data: the first ``--users`` users of data/sample (simulated users on real captions) and the items
they touched, so that building the trainer (which encodes the catalogue once) stays short for
base while the users keep their whole histories (16.7 training examples per user on data/sample;
how much user batching saves depends on it). The step is ``Trainer._train_step`` (one traced
``tf.function``) on batches of ``--batch-size`` examples with ``--negatives`` sampled negatives,
formed as ``Trainer.fit`` forms them (``training.epoch_order``); the measured batches are spread
evenly over the epoch, and examples/s is their examples over their time. With a frozen encoder
the step reads precomputed encoder vectors; with trained layers it runs BERT forward and backward
over every distinct text of the batch (history units and candidates):

- ``top-2``: the product's path: only the top 2 layers, on the frozen layers' token states
  stored once when the trainer is built (``setup s`` includes that), batches of whole users
  (``--batching user``, the default), whose examples share their history texts;
- ``top-2-random``: the same on batches shuffled across users (``--batching random``);
- ``top-2-off``: every layer at every step, batches shuffled across users: the path before
  both. ``finetune_top2_speedup`` is base top-2 over base top-2-off;
- ``all``: every layer trained (user batches);
- on a CPU with bfloat16 matmul instructions (AVX-512 BF16 or AMX) also ``top-2-bf16``: top-2
  with ``TrainConfig.precision="bfloat16"`` (``bert-rec train --precision bfloat16``):
  ``finetune_top2_bf16_speedup`` is base top-2-bf16 over base top-2-off (null elsewhere,
  where bfloat16 is emulated and slower).

Then the same fit (``--train-layers 2`` on the shipped checkpoints/small-bert-zh, the same users)
the old way (every layer at every step, random batches; two seeds: their spread is the
yardstick), on stored float32 and float16 states, with user batches, and (with BF16
instructions) in bfloat16: loss and validation NDCG per epoch.

Each configuration and mode runs in its own child process. Time: the warm-up step (which traces)
is not counted. Memory: the child's peak RSS during the measured steps, and its growth over the
RSS just before them.

    .venv/bin/python bench/training.py [--configs tiny small base] [--steps 20] [--no-quality]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (CONFIGS, ROOT, SCRATCH, peak_mib, random_checkpoint,  # noqa: E402
                    reset_peak, rss_mib, table, write_result)

# mode -> (trained encoder layers (None: every layer), TrainConfig.frozen_states, .precision,
#          .batching)
MODES = {"frozen": (0, "float16", "float32", "user"),
         "top-2": (2, "float16", "float32", "user"),
         "top-2-random": (2, "float16", "float32", "random"),
         "top-2-off": (2, "off", "float32", "random"),
         "all": (None, "float16", "float32", "user"),
         "top-2-bf16": (2, "float16", "bfloat16", "user")}
BF16_MODES = ("top-2-bf16",)  # run only on a CPU with bfloat16 instructions


def sample_slice(n_users):
    """(the items the first ``n_users`` users of data/sample touched, those users' histories)."""
    os.environ.setdefault("BERT_REC_PROGRESS", "0")
    from bert_rec.data import group_by_user, read_behaviors, read_items  # noqa: PLC0415
    sample = os.path.join(ROOT, "data", "sample")
    behaviors, _ = read_behaviors(os.path.join(sample, "behaviors.jsonl"))
    histories = group_by_user(behaviors)
    histories = {user: histories[user] for user in sorted(histories)[:n_users]}
    touched = {b.item_id for history in histories.values() for b in history}
    items, _ = read_items(os.path.join(sample, "items.jsonl"))
    return [item for item in items if item.item_id in touched], histories


def child(name, mode, args):
    """Measure one configuration and mode in this process; print one JSON line."""
    import numpy as np  # noqa: PLC0415
    from bert_rec.config import TrainConfig  # noqa: PLC0415
    from bert_rec.recommend import Recommender  # noqa: PLC0415
    from bert_rec.training import Trainer, epoch_order  # noqa: PLC0415

    items, histories = sample_slice(args.users)
    trained, frozen_states, precision, batching = MODES[mode]
    rec = Recommender.load(random_checkpoint(name), precision=precision)
    layers = rec.encoder.transformer.num_hidden_layers
    train_layers = layers if trained is None else trained
    config = TrainConfig(batch_size=args.batch_size, extra_negatives=args.negatives,
                         train_layers=train_layers, frozen_states=frozen_states,
                         precision=precision, batching=batching)
    started = time.perf_counter()
    trainer = Trainer(rec, items, histories, config, log=open(os.devnull, "w"))
    setup = time.perf_counter() - started  # includes computing the stored states, if any
    stored = trainer.stored is not None
    rng = np.random.default_rng(0)
    order = epoch_order(trainer.examples, config.seed, 0, batching)
    size = args.batch_size
    total = len(order) // size  # whole batches of the epoch
    steps = min(total - 1, args.steps if name != "base" or mode == "frozen"
                else max(2, args.steps // 2))
    # the warm-up batch, then ``steps`` batches spread evenly over the epoch
    picked = [0, *np.linspace(1, total - 1, steps).round().astype(int).tolist()]
    batches = [trainer._batch(order[i * size:(i + 1) * size], rng) for i in picked]  # noqa: SLF001
    rows = [len(np.unique(np.concatenate([b[0].ravel(), b[3]]))) for b in batches[1:]]
    import tensorflow as tf  # noqa: PLC0415
    trainer._train_step(*[tf.constant(x) for x in batches[0]])  # noqa: SLF001  (traces)
    before = rss_mib()
    reset_peak()
    times = []
    for batch in batches[1:]:
        tensors = [tf.constant(x) for x in batch]
        start = time.perf_counter()
        loss, _ = trainer._train_step(*tensors)  # noqa: SLF001
        float(loss)
        times.append(time.perf_counter() - start)
    print(json.dumps({"config": name, "mode": mode, "precision": precision, "batching": batching,
                      "layers": layers, "trained_layers": train_layers, "stored_states": stored,
                      "setup_s": setup, "examples": len(trainer.examples),
                      "users": len(histories), "batch_size": size, "steps": steps,
                      "step_s": sum(times) / steps, "median_step_s": statistics.median(times),
                      "unit_rows_per_example": sum(rows) / (steps * size),
                      "examples_per_s": steps * size / sum(times), "peak_rss_mib": peak_mib(),
                      "step_memory_mib": peak_mib() - before}))


# (frozen_states, seed, precision, batching); the bfloat16 run only on a CPU with BF16
# instructions. The first two are the path before stored states and user batches (their spread
# is the yardstick); then stored states alone, in float32 and float16; then the product's path
# (float16 states, user batches; two seeds) and the same in bfloat16.
QUALITY_RUNS = [("off", 0, "float32", "random"), ("off", 1, "float32", "random"),
                ("float32", 0, "float32", "random"), ("float16", 0, "float32", "random"),
                ("float16", 0, "float32", "user"), ("float16", 1, "float32", "user"),
                ("float16", 0, "bfloat16", "user")]


def quality(args):
    """The same fit, several ways (QUALITY_RUNS): --train-layers 2 on the shipped small
    checkpoint (4 layers), the default batch size and negatives, ``--quality-epochs`` epochs;
    one JSON line of loss and validation curves per run."""
    from bert_rec.config import TrainConfig  # noqa: PLC0415
    from bert_rec.encoder import cpu_has_bf16  # noqa: PLC0415
    from bert_rec.recommend import Recommender  # noqa: PLC0415
    from bert_rec.training import Trainer  # noqa: PLC0415

    items, histories = sample_slice(args.quality_users)
    out = os.path.join(SCRATCH, "training-quality")
    shutil.rmtree(out, ignore_errors=True)
    for frozen_states, seed, precision, batching in QUALITY_RUNS:
        if precision == "bfloat16" and not cpu_has_bf16():
            continue
        rec = Recommender.load(os.path.join(ROOT, "checkpoints", "small-bert-zh"),
                               precision=precision)
        config = TrainConfig(train_layers=2, frozen_states=frozen_states, seed=seed,
                             epochs=args.quality_epochs, patience=args.quality_epochs,
                             precision=precision, batching=batching)
        started = time.perf_counter()
        trainer = Trainer(rec, items, histories, config, log=open(os.devnull, "w"))
        history = trainer.fit(os.path.join(out, f"{frozen_states}-{seed}-{precision}-{batching}"))
        print(json.dumps({"frozen_states": frozen_states, "seed": seed, "precision": precision,
                          "batching": batching, "seconds": time.perf_counter() - started,
                          "examples": len(trainer.examples), "users": len(histories),
                          "loss": [h["loss"] for h in history],
                          "val_ndcg": [h["val_ndcg"] for h in history],
                          "val_hr": [h["val_hr"] for h in history]}), flush=True)


def run_child(extra, args):
    passthrough = ["--users", str(args.users), "--batch-size", str(args.batch_size),
                   "--negatives", str(args.negatives), "--steps", str(args.steps),
                   "--quality-users", str(args.quality_users),
                   "--quality-epochs", str(args.quality_epochs)]
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), *passthrough, *extra],
                          capture_output=True, text=True,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, check=False)
    if proc.returncode:
        raise SystemExit(f"{' '.join(extra)} failed:\n{proc.stderr[-2000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--modes", nargs="+", default=None, choices=list(MODES),
                        help="default: all (top-2-bf16 only on a CPU with BF16 instructions)")
    parser.add_argument("--users", type=int, default=40,
                        help="the first N users of data/sample and the items they touched")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--negatives", type=int, default=16)
    parser.add_argument("--steps", type=int, default=20,
                        help="measured steps (base with trained layers: half, at least 2)")
    parser.add_argument("--quality-users", type=int, default=60,
                        help="users of data/sample for the loss-curve comparison")
    parser.add_argument("--quality-epochs", type=int, default=3)
    parser.add_argument("--no-quality", action="store_true",
                        help="skip the loss-curve comparison of the stored states")
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--quality-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child, args)
        return 0
    if args.quality_child:
        quality(args)
        return 0
    from bert_rec.encoder import cpu_has_bf16  # noqa: PLC0415
    if args.modes is None:
        args.modes = [m for m in MODES if m not in BF16_MODES or cpu_has_bf16()]
    runs = []
    for name in args.configs:
        random_checkpoint(name)  # made once, outside the measured children
        for mode in args.modes:
            runs.append(run_child(["--child", name, mode], args)[-1])
            r = runs[-1]
            print(f"{name} {mode}: {r['examples_per_s']:.1f} examples/s", file=sys.stderr,
                  flush=True)
    print(f"\ntraining step, batch {args.batch_size}, {args.negatives} sampled negatives, "
          f"the first {args.users} users of data/sample ({runs[0]['examples']} examples)\n")
    table(["config", "encoder layers trained", "stored states", "batches", "setup s",
           "step s", "unit rows / example", "examples/s", "peak RSS MiB", "step memory MiB"],
          [[r["config"], f"{r['trained_layers']} of {r['layers']} ({r['mode']})",
            "yes" if r["stored_states"] else "no", r["batching"], r["setup_s"], r["step_s"],
            r["unit_rows_per_example"], r["examples_per_s"], r["peak_rss_mib"],
            r["step_memory_mib"]] for r in runs])
    rate = {(r["config"], r["mode"]): r["examples_per_s"] for r in runs}
    summary = {}
    if ("base", "top-2") in rate and ("base", "top-2-off") in rate:
        summary["finetune_top2_speedup"] = rate["base", "top-2"] / rate["base", "top-2-off"]
        print(f"\nbase --train-layers 2: {summary['finetune_top2_speedup']:.2f}x the examples/s "
              f"of running the frozen layers at every step on random batches")
        if ("base", "top-2-random") in rate:
            stored = rate["base", "top-2-random"] / rate["base", "top-2-off"]
            print(f"  stored states alone (random batches): {stored:.2f}x; user batches on "
                  f"top of them: {rate['base', 'top-2'] / rate['base', 'top-2-random']:.2f}x")
    if not cpu_has_bf16():
        summary["finetune_top2_bf16_speedup"] = None  # null without BF16 instructions
    if ("base", "top-2-bf16") in rate and ("base", "top-2-off") in rate:
        summary["finetune_top2_bf16_speedup"] = (rate["base", "top-2-bf16"]
                                                 / rate["base", "top-2-off"])
        print(f"base --train-layers 2 --precision bfloat16: "
              f"{summary['finetune_top2_bf16_speedup']:.2f}x")
    curves = [] if args.no_quality else run_child(["--quality-child"], args)
    if curves:
        print(f"\n--train-layers 2 on checkpoints/small-bert-zh, the first {args.quality_users} "
              f"users of data/sample ({curves[0]['examples']} examples), "
              f"{args.quality_epochs} epochs\n")
        table(["frozen layers", "precision", "batches", "seed", "loss per epoch",
               "val NDCG@10 per epoch", "seconds"],
              [[c["frozen_states"], c["precision"], c["batching"], c["seed"],
                " ".join(f"{x:.4f}" for x in c["loss"]),
                " ".join(f"{x:.4f}" for x in c["val_ndcg"]), c["seconds"]] for c in curves])
    write_result("training", {"batch_size": args.batch_size, "negatives": args.negatives,
                              "users": args.users, "quality_users": args.quality_users,
                              "runs": runs, "quality": curves}, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
