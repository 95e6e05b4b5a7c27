#!/usr/bin/env python
"""Training throughput: examples/s and peak memory of ``bert-rec train``'s optimisation step
for the tiny, small and base configurations, with the encoder frozen, only its top 2 layers
trained, and all of it trained.

Data: data/sample (simulated users on real captions) restricted to its first ``--items`` items,
so that building the trainer (which encodes the catalogue once) stays short for base. The step
is ``Trainer._train_step`` (one traced ``tf.function``) on batches of ``--batch-size``
examples with ``--negatives`` sampled negatives, exactly as ``Trainer.fit`` feeds it. With a
frozen encoder the step reads precomputed encoder vectors; with trained layers it runs BERT
forward and backward over every distinct text of the batch (history units and candidates).

Each configuration and mode runs in its own child process. Time: median step after one
warm-up step (which traces). Memory: the child's peak RSS during the measured steps, and its
growth over the RSS just before them.

    .venv/bin/python bench/training.py [--configs tiny small base] [--steps 10]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import CONFIGS, ROOT, peak_mib, random_checkpoint, reset_peak, rss_mib  # noqa: E402
from common import table, write_result  # noqa: E402

MODES = {"frozen": 0, "top-2": 2, "all": None}  # trained encoder layers (None: every layer)


def child(name, mode, args):
    """Measure one configuration and mode in this process; print one JSON line."""
    os.environ.setdefault("BERT_REC_PROGRESS", "0")
    import numpy as np  # noqa: PLC0415
    from bert_rec.data import group_by_user, read_behaviors, read_items  # noqa: PLC0415
    from bert_rec.recommend import Recommender  # noqa: PLC0415
    from bert_rec.training import Trainer  # noqa: PLC0415
    from bert_rec.config import TrainConfig  # noqa: PLC0415

    sample = os.path.join(ROOT, "data", "sample")
    items, _ = read_items(os.path.join(sample, "items.jsonl"))
    items = items[:args.items]
    behaviors, _ = read_behaviors(os.path.join(sample, "behaviors.jsonl"),
                                  item_ids={i.item_id for i in items}, on_error="skip")
    rec = Recommender.load(random_checkpoint(name))
    layers = rec.encoder.transformer.num_hidden_layers
    train_layers = layers if MODES[mode] is None else MODES[mode]
    config = TrainConfig(batch_size=args.batch_size, extra_negatives=args.negatives,
                         train_layers=train_layers)
    trainer = Trainer(rec, items, group_by_user(behaviors), config, log=open(os.devnull, "w"))
    rng = np.random.default_rng(0)
    order = rng.permutation(len(trainer.examples))
    steps = args.steps if name != "base" or mode == "frozen" else max(2, args.steps // 5)
    batches = [trainer._batch(order[i * args.batch_size:(i + 1) * args.batch_size], rng)  # noqa: SLF001
               for i in range(steps + 1)]
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
    step = statistics.median(times)
    print(json.dumps({"config": name, "mode": mode, "layers": layers,
                      "trained_layers": train_layers, "examples": len(trainer.examples),
                      "batch_size": args.batch_size, "steps": steps, "step_s": step,
                      "examples_per_s": args.batch_size / step, "peak_rss_mib": peak_mib(),
                      "step_memory_mib": peak_mib() - before}))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--items", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--negatives", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10,
                        help="measured steps (base with trained layers: a fifth, at least 2)")
    parser.add_argument("--child", nargs=2, metavar=("CONFIG", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child, args)
        return 0
    passthrough = ["--items", str(args.items), "--batch-size", str(args.batch_size),
                   "--negatives", str(args.negatives), "--steps", str(args.steps)]
    runs = []
    for name in args.configs:
        random_checkpoint(name)  # made once, outside the measured children
        for mode in args.modes:
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), *passthrough,
                                   "--child", name, mode], capture_output=True, text=True,
                                  env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}, check=False)
            if proc.returncode:
                raise SystemExit(f"{name}/{mode} failed:\n{proc.stderr[-2000:]}")
            runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            r = runs[-1]
            print(f"{name} {mode}: {r['examples_per_s']:.1f} examples/s", file=sys.stderr,
                  flush=True)
    print(f"\ntraining step, batch {args.batch_size}, {args.negatives} sampled negatives, "
          f"data/sample restricted to {args.items} items\n")
    table(["config", "encoder layers trained", "step s", "examples/s", "peak RSS MiB",
           "step memory MiB"],
          [[r["config"], f"{r['trained_layers']} of {r['layers']} ({r['mode']})", r["step_s"],
            r["examples_per_s"], r["peak_rss_mib"], r["step_memory_mib"]] for r in runs])
    write_result("training", {"batch_size": args.batch_size, "negatives": args.negatives,
                              "items": args.items, "runs": runs})
    return 0


if __name__ == "__main__":
    sys.exit(main())
