#!/usr/bin/env python
"""Does ``--precision bfloat16`` change what users are recommended? Top-10 lists of every user
of data/sample (SIMULATED users on real captions) from ``Recommender.recommend`` with the
shipped tiny checkpoint (zero-shot) in float32 and in bfloat16, compared user by user.

bfloat16 keeps 8 bits of mantissa, so the rounding is the same whether the CPU has BF16
instructions or emulates them (only the speed differs: see bench/encoder.py): this check runs
anywhere. Not part of ``make bench`` (it measures agreement, not speed).

    .venv/bin/python bench/bf16_topk.py [--model checkpoints/tiny-bert-zh] [-k 10]
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, TINY, write_result  # noqa: E402


def top_lists(model, items, histories, k, precision):
    from bert_rec.recommend import Recommender  # noqa: PLC0415
    rec = Recommender.load(model, precision=precision).index_items(items).use_index("exact")
    return {r.user_id: [(x.item_id, x.score) for x in r.items]
            for r in rec.recommend(histories, k=k, explain=0)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=TINY)
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args(argv)
    os.environ.setdefault("BERT_REC_PROGRESS", "0")
    from bert_rec.data import group_by_user, read_behaviors, read_items  # noqa: PLC0415
    sample = os.path.join(ROOT, "data", "sample")
    items, _ = read_items(os.path.join(sample, "items.jsonl"))
    behaviors, _ = read_behaviors(os.path.join(sample, "behaviors.jsonl"))
    histories = group_by_user(behaviors)
    full = top_lists(args.model, items, histories, args.k, "float32")
    low = top_lists(args.model, items, histories, args.k, "bfloat16")
    same_order = sum([i for i, _ in full[u]] == [i for i, _ in low[u]] for u in full)
    same_set = sum({i for i, _ in full[u]} == {i for i, _ in low[u]} for u in full)
    overlap = np.mean([len({i for i, _ in full[u]} & {i for i, _ in low[u]}) / args.k
                       for u in full])
    diffs = [abs(a - b) for u in full for (i, a), (j, b) in zip(full[u], low[u]) if i == j]
    figures = {"model": os.path.relpath(args.model, ROOT), "users": len(full), "k": args.k,
               "identical_lists": int(same_order), "identical_sets": int(same_set),
               "mean_overlap": float(overlap),
               "max_score_diff_same_item_and_rank": float(max(diffs, default=0.0))}
    print(f"{len(full)} users, top-{args.k}: identical lists for {same_order}, same sets for "
          f"{same_set}, mean overlap {overlap:.3f}; largest score difference at the same rank "
          f"and item {figures['max_score_diff_same_item_and_rank']:.4f}")
    write_result("bf16_topk", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
