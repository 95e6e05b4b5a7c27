#!/usr/bin/env python
"""Past one process: the overhead of the distributed paths on this machine, in one run.

Batch recommendation (top-10 for every user of the SIMULATED 20k-item x 10k-user set of
bench/simdata.py, checkpoints/tiny-bert-zh zero-shot, no encode cache), each as a user runs it,
from the command line, wall time including start-up:

- ``single``: ``bert-rec recommend --format json --output FILE`` (one process, every core);
- ``ray, N actors``: ``bert-rec recommend --engine ray --num-actors N --output DIR``, Ray
  started embedded on this machine (``ray start`` and the model loads are in the time).

The Ray outputs are checked against the single-process output: same users, same top-10 lists.
``ray_vs_single_users_per_s`` is the 2-actor path's users/s over the single process's (same
cores: on a 2-core machine the point is the overhead, not a speed-up; target >= 0.7).

Training (on unless ``--no-training``): examples/s of ``bert-rec train`` on data/sample, one
process against two workers under ``--distributed multi-worker`` on 127.0.0.1 (same global
batch), started with TF_CONFIG (``multiworker_vs_single_examples_per_s``) and by Ray Train
(``--num-workers 2``, ``ray_train_vs_single_examples_per_s``).

The simulated catalogue has many items with equal texts, so many exact ties: the Ray actors run
TensorFlow on one thread, the single process on two, and float sums differing in the last bits
order a tie differently. The table counts identical lists and lists equal up to ties (at each
position the same item, or scores within 2e-5).

    .venv/bin/python bench/distributed.py [--items 20000] [--users 10000] [--no-training]
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import SCRATCH, TINY, table, write_result  # noqa: E402
from simdata import dataset  # noqa: E402

from bert_rec.ray_engine import read_output  # noqa: E402
from bert_rec.utils.net import free_ports  # noqa: E402

BIN = os.path.dirname(sys.executable)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(args, env=None):
    """Wall seconds of a command (which must succeed)."""
    started = time.perf_counter()
    done = subprocess.run(args, capture_output=True, text=True, check=False,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
                               "BERT_REC_PROGRESS": "0", **(env or {})})
    seconds = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"failed: {' '.join(args)}\n{done.stderr[-3000:]}")
    return seconds


TIE = 2e-5  # scores this close are a tie (the simulated catalogue has many equal texts)


def top_lists(path):
    """{user_id: [(item id, score)]} of a JSON output file or a finished Ray run's folder."""
    if os.path.isdir(path):
        records = read_output(path).values()
    else:
        with open(path, encoding="utf-8") as f:
            records = [json.loads(line) for line in f]
    return {r["user_id"]: [(i["item_id"], i["score"]) for i in r["items"]] for r in records}


def same_up_to_ties(a, b):
    """Two top-k lists rank alike: at every position the same item, or items whose scores
    both equal (within TIE) that position's score in the other list."""
    return len(a) == len(b) and all(
        x == y or abs(sx - sy) <= TIE for (x, sx), (y, sy) in zip(a, b))


def recommend_runs(items, behaviors, actors):
    """[(path, seconds, output)] for the single process and Ray with each actor count."""
    base = [os.path.join(BIN, "bert-rec"), "recommend", "--model", TINY, "--items", items,
            "--behaviors", behaviors, "--format", "json", "--no-cache", "--explain", "3"]
    out = os.path.join(SCRATCH, "distributed")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    runs = [("single process", run([*base, "--output", os.path.join(out, "single.jsonl")]),
             os.path.join(out, "single.jsonl"))]
    for n in actors:
        folder = os.path.join(out, f"ray-{n}")
        runs.append((f"ray, {n} actor(s)", run([*base, "--output", folder, "--engine", "ray",
                                                "--num-actors", str(n)]), folder))
    return runs


def _train(out, workers, epochs, launch="tf_config"):
    """(examples/s, wall seconds) of ``bert-rec train`` on data/sample: examples/s from the
    epoch seconds of the chief's history.json (validation included, start-up not), wall seconds
    from the command line. One process, ``workers`` processes with TF_CONFIG
    (``launch="tf_config"``) or ``--num-workers`` on embedded Ray (``launch="ray"``)."""
    data = os.path.join(ROOT, "data", "sample")
    cmd = [os.path.join(BIN, "bert-rec"), "train", "--model", TINY, "--items",
           os.path.join(data, "items.jsonl"), "--behaviors",
           os.path.join(data, "behaviors.jsonl"), "--out", out, "--epochs", str(epochs),
           "--patience", str(epochs), "--seed", "3"]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "BERT_REC_PROGRESS": "0"}
    env.pop("TF_CONFIG", None)
    started = time.perf_counter()
    if workers == 1 or launch == "ray":
        extra = ["--num-workers", str(workers)] if launch == "ray" else []
        procs = [subprocess.Popen(cmd + extra, env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True)]
    else:
        cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(workers)]}
        procs = [subprocess.Popen(cmd + ["--distributed", "multi-worker"], env={
            **env, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {
                "type": "worker", "index": i}})}, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, text=True) for i in range(workers)]
    logs = [proc.communicate()[1] for proc in procs]
    seconds = time.perf_counter() - started
    if any(proc.returncode for proc in procs):
        sys.exit("training failed:\n" + "\n".join(log[-2000:] for log in logs))
    examples = int(logs[0].split("training on ")[1].split()[0])
    with open(os.path.join(out, "training", "history.json"), encoding="utf-8") as f:
        history = json.load(f)
    return examples * len(history) / sum(h["seconds"] for h in history), seconds


def training_runs(epochs=3):
    """{path: (examples/s, wall seconds)} of one process, two TF_CONFIG workers and two Ray
    Train workers on data/sample."""
    out = os.path.join(SCRATCH, "distributed-train")
    shutil.rmtree(out, ignore_errors=True)
    return {"one process": _train(os.path.join(out, "single"), 1, epochs),
            "2 workers, TF_CONFIG": _train(os.path.join(out, "two"), 2, epochs),
            "2 workers, Ray Train (--num-workers 2)": _train(os.path.join(out, "ray"), 2,
                                                            epochs, launch="ray")}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--actors", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--no-training", action="store_true")
    args = parser.parse_args(argv)
    items, behaviors = dataset(args.items, args.users)
    runs = recommend_runs(items, behaviors, args.actors)
    single = top_lists(runs[0][2])
    n = len(single)
    rows, figures = [], {"items": args.items, "users": n, "runs": []}
    for path, seconds, output in runs:
        lists = top_lists(output)
        same = sum([i for i, _ in lists.get(u, [])] == [i for i, _ in top]
                   for u, top in single.items())
        alike = sum(same_up_to_ties(lists.get(u, []), top) for u, top in single.items())
        rows.append([path, n, seconds, n / seconds, runs[0][1] / seconds,
                     f"{same}/{n}", f"{alike}/{n}"])
        figures["runs"].append({"path": path, "seconds": seconds, "users_per_s": n / seconds,
                                "identical_top_10": same, "same_up_to_ties": alike})
    print(f"\nbatch recommendation, {args.items:,} simulated items x {n:,} simulated users, "
          f"top-10 with explanations, wall time from the command line\n")
    table(["path", "users", "seconds", "users/s", "vs single", "top-10 = single",
           f"= up to ties ({TIE:g})"], rows)
    two = [r for r in figures["runs"] if r["path"].startswith("ray, 2")]
    summary = {"ray_vs_single_users_per_s": (two[0]["users_per_s"] / figures["runs"][0][
        "users_per_s"]) if two else None}
    if not args.no_training:
        runs = training_runs()
        one = runs["one process"][0]
        print("\ntraining on data/sample (3 epochs, tiny model, frozen encoder): examples/s from "
              "the epoch times, wall seconds from the command line\n")
        table(["path", "examples/s", "vs one process", "wall seconds"],
              [[path, rate, rate / one, wall] for path, (rate, wall) in runs.items()])
        figures["training"] = {path: {"examples_per_s": rate, "wall_seconds": wall}
                               for path, (rate, wall) in runs.items()}
        summary["multiworker_vs_single_examples_per_s"] = runs["2 workers, TF_CONFIG"][0] / one
        summary["ray_train_vs_single_examples_per_s"] = runs[
            "2 workers, Ray Train (--num-workers 2)"][0] / one
    write_result("distributed", figures, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
