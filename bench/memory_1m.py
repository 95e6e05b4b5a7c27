#!/usr/bin/env python
"""Peak memory (RSS) and time of ``bert-rec recommend`` on a SIMULATED 1-million-behaviour log.

The log is built from ``data/sample`` (itself simulated users on real captions): its 300 users'
behaviour sequences are replayed by as many renamed copies as it takes to reach ``--rows``, each
copy shifted in time, and every comment gets a few words of a random item title appended so that
the log has tens of thousands of distinct texts, as a real one would. It is written to ``--out``
(default ``/tmp/bert_rec_bench``, never committed) once and reused.

Each measured command runs as a child process; its peak resident set size is the kernel's
``ru_maxrss`` for that child (``os.wait4``), its time the wall-clock time. Usage::

    .venv/bin/python bench/memory_1m.py [--rows 1000000] [--model checkpoints/tiny-bert-zh]

Prints a Markdown table (the README's "Robustness and privacy" section shows one).
"""

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "data", "sample")
SAMPLE_ROWS = 9616  # behaviours of data/sample
SPAN = 60 * 86400  # each copy of the sample is shifted by up to this many seconds
READ_ONLY = ("from bert_rec.data import group_by_user, read_behaviors, read_items; import sys; "
             "items, _ = read_items(sys.argv[1]); "
             "b, _ = read_behaviors(sys.argv[2], item_ids={i.item_id for i in items}); "
             "h = group_by_user(b); print(len(b), 'behaviours,', len(h), 'users')")


def build_log(path, rows, seed=0):
    """Write a simulated log of about ``rows`` behaviours to ``path`` (JSON Lines)."""
    rng = random.Random(seed)
    with open(os.path.join(SAMPLE, "behaviors.jsonl"), encoding="utf-8") as f:
        sample = [json.loads(line) for line in f]
    with open(os.path.join(SAMPLE, "items.jsonl"), encoding="utf-8") as f:
        titles = [json.loads(line)["title"] for line in f]
    tmp = path + ".part"
    written = copy = 0
    with open(tmp, "w", encoding="utf-8") as out:
        while written < rows:
            shift = rng.randrange(SPAN)
            for record in sample[:rows - written]:
                record = dict(record, user_id=f"{record['user_id']}-{copy:04d}")
                record["timestamp"] = _shift(record["timestamp"], shift)
                if record.get("text"):
                    title = rng.choice(titles)
                    start = rng.randrange(max(len(title) - 4, 1))
                    record["text"] += " " + title[start:start + 6]
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
            written += min(len(sample), rows - written)
            copy += 1
    os.replace(tmp, path)
    return copy


def _shift(timestamp, seconds):
    """An ISO-8601 'Z' timestamp moved back by ``seconds`` (keeps it in the past)."""
    from datetime import datetime, timedelta  # noqa: PLC0415
    moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00")) - timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def measure(argv):
    """Run ``argv``; return (peak RSS in MiB, seconds, exit code, last stderr lines)."""
    started = time.time()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "BERT_REC_PROGRESS": "0",
                                 "TF_CPP_MIN_LOG_LEVEL": "2"})
    err = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    tail = [line for line in err.splitlines() if line.strip()][-2:]
    return usage.ru_maxrss / 1024, time.time() - started, proc.returncode, tail


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--out", default="/tmp/bert_rec_bench")
    parser.add_argument("--model", default=os.path.join(ROOT, "checkpoints", "tiny-bert-zh"))
    parser.add_argument("--users", type=int, default=10, help="users in the sampled run")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    log = os.path.join(args.out, f"behaviors-{args.rows}.jsonl")
    if not os.path.exists(log):
        print(f"writing {log} ...", file=sys.stderr)
        build_log(log, args.rows)
    items = os.path.join(SAMPLE, "items.jsonl")
    size = os.path.getsize(log) / 2**20
    full_copies = max(args.rows // SAMPLE_ROWS, 1)  # users of a complete copy of the sample
    users = [f"u{(37 * k) % 300 + 1:04d}-{(13 * k) % full_copies:04d}" for k in range(args.users)]
    recommend = [sys.executable, "-m", "bert_rec.cli", "recommend", "--model", args.model,
                 "--items", items, "--format", "json", "-k", "10"]
    runs = [
        ("read + validate + group only (no model)",
         [sys.executable, "-c", READ_ONLY, items, log]),
        ("recommend, all 300 users of data/sample (9,616 behaviours): fixed cost",
         [*recommend, "--behaviors", os.path.join(SAMPLE, "behaviors.jsonl"),
          "--output", os.path.join(args.out, "recs-sample.jsonl")]),
        (f"recommend --user (sample of {len(users)} users)",
         [*recommend, "--behaviors", log, "--user", *users,
          "--output", os.path.join(args.out, "recs-some.jsonl")]),
        ("recommend, all users",
         [*recommend, "--behaviors", log, "--output", os.path.join(args.out, "recs-all.jsonl")]),
    ]
    print(f"log: {log} ({args.rows:,} behaviours, {size:.0f} MiB); model: {args.model}; "
          f"{platform.python_version()}, {os.cpu_count()} CPUs\n")
    print("| run | peak RSS | time |")
    print("|---|---|---|")
    for name, command in runs:
        rss, seconds, code, tail = measure(command)
        if code:
            print(f"| {name} | failed ({code}): {' / '.join(tail)} | |")
            continue
        print(f"| {name} | {rss:,.0f} MiB | {seconds:.0f} s |", flush=True)
        for line in tail:
            print(f"    {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
