#!/usr/bin/env python
"""Batch inference: recommendations for every user in a behaviour log, as JSON Lines.

    python scripts/infer.py --model MODEL_DIR --items items.jsonl --behaviors behaviors.jsonl \
        --out results.jsonl [-k 10] [--user ID ...] [--cache-dir DIR | --no-cache]

One JSON object per user (the `bert-rec recommend --format json` schema), written to a temporary
file and renamed, so OUT is either the previous complete file or the new complete one. Every
other option is `bert-rec recommend`'s, e.g. the encode cache (`--cache-dir`, `--no-cache`).

With `--engine ray [--ray-address ADDR] [--num-actors N]` the job runs on Ray Data and OUT is a
folder of part files ending with `_SUCCESS` (README 'Scaling out').
"""
import argparse
import sys

from bert_rec.cli import main


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSONL results file")
    known, rest = parser.parse_known_args(argv)
    return known.out, rest


if __name__ == "__main__":
    out, rest = parse(sys.argv[1:])
    sys.exit(main(["recommend", *rest, "--format", "json", "--output", out]))
