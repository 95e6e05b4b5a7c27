#!/usr/bin/env python
"""Scaling: time and peak memory of ``bert-rec recommend`` (all users, top-10, explanations, JSON
output) as the catalogue grows 1k -> 10k -> 100k items and the users 1k -> 10k.

Data: SIMULATED sets from bench/simdata.py (10,000 users per catalogue; the 1k-user runs take the
first 1,000 of them). Model: checkpoints/tiny-bert-zh (zero-shot). Each run is a child process
running the real command line; its peak RSS is the kernel's ``ru_maxrss`` for that child.

For each catalogue a first run fills an on-disk encode cache (``--cache-dir``, a fresh one per
catalogue): its time is the cold cost, item encoding included. The measured runs then reuse that
cache, as a second ``bert-rec recommend`` on an unchanged catalogue would; the cold column shows
what encoding adds. Growth is the log-log slope between the smallest and largest size.

    .venv/bin/python bench/scaling.py [--items 1000 10000 100000] [--users 1000 10000]
"""

import argparse
import math
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import SCRATCH, TINY, table, write_result  # noqa: E402
from memory_1m import measure  # noqa: E402
from simdata import dataset  # noqa: E402


def first_users(behaviors_path, n):
    """A behaviours file with the first ``n`` users of ``behaviors_path`` (written once)."""
    out = behaviors_path.replace(".jsonl", f"-first{n}.jsonl")
    if not os.path.exists(out):
        import json  # noqa: PLC0415
        seen = []
        with open(behaviors_path, encoding="utf-8") as f, \
                open(out + ".part", "w", encoding="utf-8") as g:
            for line in f:
                user = json.loads(line)["user_id"]
                if user not in seen[-1:]:
                    seen.append(user)
                if len(seen) > n:
                    break
                g.write(line)
        os.replace(out + ".part", out)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", nargs="+", type=int, default=[1000, 10_000, 100_000])
    parser.add_argument("--users", nargs="+", type=int, default=[1000, 10_000])
    args = parser.parse_args(argv)
    max_users = max(args.users)
    runs = []
    for n_items in args.items:
        items_path, behaviors_path = dataset(n_items, max_users)
        cache = os.path.join(SCRATCH, f"scaling-cache-{n_items}")
        shutil.rmtree(cache, ignore_errors=True)
        out = os.path.join(SCRATCH, "scaling-out.jsonl")
        command = [sys.executable, "-m", "bert_rec.cli", "recommend", "--model", TINY,
                   "--items", items_path, "--format", "json", "-k", "10", "--output", out,
                   "--cache-dir", cache]
        cold = None
        for n_users in sorted(args.users):
            path = behaviors_path if n_users == max_users else first_users(behaviors_path,
                                                                           n_users)
            if cold is None:
                rss, cold, code, tail = measure([*command, "--behaviors", path])
                if code:
                    raise SystemExit(f"recommend failed ({code}): {' / '.join(tail)}")
            rss, seconds, code, tail = measure([*command, "--behaviors", path])
            if code:
                raise SystemExit(f"recommend failed ({code}): {' / '.join(tail)}")
            runs.append({"items": n_items, "users": n_users, "seconds": seconds,
                         "peak_rss_mib": rss,
                         "cold_seconds": cold if n_users == min(args.users) else None})
            print(f"{n_items:,} items, {n_users:,} users: {seconds:.1f} s, {rss:,.0f} MiB",
                  file=sys.stderr, flush=True)
    print(f"\nbert-rec recommend, tiny model, all users, top-10 with explanations "
          f"(simulated data; disk cache warm; cold = first run, items encoded)\n")
    table(["items", "users", "seconds", "peak RSS MiB", "cold seconds (first run)"],
          [[r["items"], r["users"], r["seconds"], r["peak_rss_mib"],
            r["cold_seconds"] if r["cold_seconds"] is not None else ""] for r in runs])
    growth = {}
    by = {(r["items"], r["users"]): r for r in runs}
    lo_i, hi_i = min(args.items), max(args.items)
    lo_u, hi_u = min(args.users), max(args.users)
    for users in args.users:
        growth[f"time vs items at {users} users"] = _slope(
            lo_i, hi_i, by[lo_i, users]["seconds"], by[hi_i, users]["seconds"])
        growth[f"memory vs items at {users} users"] = _slope(
            lo_i, hi_i, by[lo_i, users]["peak_rss_mib"], by[hi_i, users]["peak_rss_mib"])
    for items in args.items:
        growth[f"time vs users at {items} items"] = _slope(
            lo_u, hi_u, by[items, lo_u]["seconds"], by[items, hi_u]["seconds"])
    growth["cold time vs items"] = _slope(lo_i, hi_i, by[lo_i, lo_u]["cold_seconds"],
                                          by[hi_i, lo_u]["cold_seconds"])
    print("\ngrowth exponents (log-log slope; 1 = linear, 0 = flat):")
    for key, value in growth.items():
        print(f"  {key}: {value:.2f}")
    write_result("scaling", {"runs": runs, "growth_exponents": growth})
    return 0


def _slope(x0, x1, y0, y1):
    return math.log(y1 / y0) / math.log(x1 / x0)


if __name__ == "__main__":
    sys.exit(main())
