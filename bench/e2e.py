#!/usr/bin/env python
"""End-to-end recommend: users/s for top-10 for every user of a SIMULATED set (20k items, 10k
users; bench/simdata.py), bert_rec's batched path against a naive per-user path, in one run.

Both paths use the same Recommender (checkpoints/tiny-bert-zh, zero-shot, no on-disk cache) and
the same indexed catalogue (its encoding is timed once, apart):

- ``bert_rec``: ``Recommender.recommend`` over all users: every distinct behaviour text is
  encoded once, users are pooled and scored in batches with the CosineSimilarity layer;
- ``naive``: for each user on its own, encode the texts of the items and comments in their
  history with the same encoder (one call per user), project, pool, score the catalogue, top-10.
  It is timed on a random subset of users (``--naive-users``) and compared there: the top-10
  lists of both paths must be identical.

Also reported: the batched path with explanations (as ``bert-rec recommend`` prints them) and
two full runs as ``bert-rec recommend`` does them (load, index, exact ItemIndex, recommend),
the first with an empty on-disk encode cache, the second with the cache it filled:
``warm_cache_speedup`` is the second's users/s over the first's.

    .venv/bin/python bench/e2e.py [--items 20000] [--users 10000] [--naive-users 300]
"""

import argparse
import os
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import SCRATCH, TINY, table, write_result  # noqa: E402
from simdata import dataset  # noqa: E402


def naive_recommend(rec, history, k):
    """One user, nothing shared with other users: the path the batched one must beat."""
    from bert_rec.retrieval import best_k  # noqa: PLC0415
    from bert_rec.units import pad_units, text_unit_rows, user_units  # noqa: PLC0415
    config, encoder, towers, catalogue = rec.config, rec.encoder, rec.towers, rec.catalogue
    recent = history[-config.scoring.max_history:]
    item_ids = list(dict.fromkeys(b.item_id for b in recent))
    item_raw = encoder.encode([catalogue.items[catalogue.rows[i]].full_text() for i in item_ids],
                              max_len=config.item_max_len)
    id_rows = [rec.id_vocab.get(i, towers.num_ids) for i in item_ids]
    distinct, text_rows = text_unit_rows((b.text for b in recent), encoder.pipeline,
                                         offset=len(item_ids))
    vectors = [towers.project(item_raw, id_rows)]
    if distinct:
        vectors.append(towers.project(encoder.encode(distinct, max_len=config.text_max_len,
                                                     clean=False)))
    table = np.concatenate(vectors)  # [items + texts, D]
    units = user_units(history, config.scoring, {i: r for r, i in enumerate(item_ids)},
                       text_rows)
    rows, weights, features = pad_units([units])  # [1, N], [1, N], [1, N, 3]
    _, _, scores = towers.score_units(table, rows, weights, features,
                                      catalogue.vectors)  # [1, M]
    return best_k(np.arange(len(catalogue.items)), scores[0], k,
                  rec._seen_rows(history))  # noqa: SLF001


def timed(fn, *args, **kwargs):
    """(result, seconds) of one call."""
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def compare_naive(rec, histories, fast, n_users, k):
    """Time the naive path on ``n_users`` random users and compare its top-k with ``fast``."""
    pick = np.random.default_rng(0).choice(len(histories), min(n_users, len(histories)),
                                           replace=False)
    users = [list(histories)[i] for i in sorted(pick)]
    naive, seconds = timed(lambda: {u: naive_recommend(rec, histories[u], k) for u in users})
    by_user = {r.user_id: r for r in fast}
    same = diff = 0
    worst = 0.0
    items = rec.catalogue.items
    for u in users:
        rows, scores = naive[u]
        fast_ids = [item.item_id for item in by_user[u].items]
        same += fast_ids == [items[r].item_id for r in rows]
        diff += set(fast_ids) != {items[r].item_id for r in rows}
        worst = max(worst, float(np.max(np.abs(
            np.array([i.score for i in by_user[u].items]) - scores))))
    return {"naive_users": len(users), "naive_s": seconds, "identical_top_k": same,
            "different_sets": diff, "max_score_difference": worst}


def disk_cache_runs(items, histories, k):
    """Seconds of a full run as ``bert-rec recommend`` does it (load, index the catalogue, the
    exact ItemIndex, recommend; no explanations) with an empty, then a warm encode cache."""
    from bert_rec.recommend import Recommender  # noqa: PLC0415
    cache_dir = os.path.join(SCRATCH, "e2e-cache")
    shutil.rmtree(cache_dir, ignore_errors=True)
    seconds = []
    for _ in range(2):
        seconds.append(timed(lambda: Recommender.load(TINY, cache_dir=cache_dir).index_items(
            items).use_index("exact").recommend(histories, k=k, explain=0))[1])
    return seconds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--naive-users", type=int, default=300)
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args(argv)
    os.environ.setdefault("BERT_REC_PROGRESS", "0")
    from bert_rec.data import group_by_user, read_behaviors, read_items  # noqa: PLC0415
    from bert_rec.recommend import Recommender  # noqa: PLC0415

    items_path, behaviors_path = dataset(args.items, args.users)
    items, _ = read_items(items_path)
    behaviors, _ = read_behaviors(behaviors_path, item_ids={i.item_id for i in items})
    histories = group_by_user(behaviors)
    n_texts = len({b.text for b in behaviors if b.text})
    print(f"simulated set: {len(items):,} items, {len(histories):,} users, "
          f"{len(behaviors):,} behaviours, {n_texts:,} distinct behaviour texts", file=sys.stderr)

    rec = Recommender.load(TINY)
    _, index_seconds = timed(rec.index_items, items)
    warm = {u: histories[u] for u in list(histories)[:64]}
    rec.recommend(warm, k=args.k, explain=0)  # trace the functions once
    naive_recommend(rec, next(iter(warm.values())), args.k)
    fast, fast_seconds = timed(rec.recommend, histories, k=args.k, explain=0)
    _, explained_seconds = timed(rec.recommend, histories, k=args.k, explain=3)
    naive = compare_naive(rec, histories, fast, args.naive_users, args.k)
    cold_cache, warm_cache = disk_cache_runs(items, histories, args.k)

    n = len(histories)
    fast_rate, naive_rate = n / fast_seconds, naive["naive_users"] / naive["naive_s"]
    runs = [  # (path, users, seconds); users/s and the speed-up over naive follow
        ("bert_rec (batched, distinct texts once)", n, fast_seconds),
        ("bert_rec with explanations (3 per item)", n, explained_seconds),
        (f"naive per-user (random {naive['naive_users']} users)", naive["naive_users"],
         naive["naive_s"]),
        ("bert_rec incl. catalogue encoding, empty disk cache", n, cold_cache),
        ("same, second run (disk cache warm)", n, warm_cache),
    ]
    runs = [[path, users_, s, users_ / s, users_ / s / naive_rate] for path, users_, s in runs]
    print(f"\n{len(items):,} simulated items, {n:,} simulated users, top-{args.k}; catalogue "
          f"encoding {index_seconds:.1f} s (shared by both paths, not in the first rows)\n")
    table(["path", "users", "seconds", "users/s", "speed-up vs naive"], runs)
    print(f"\nnaive vs batched on {naive['naive_users']} users: identical top-{args.k} lists "
          f"{naive['identical_top_k']}/{naive['naive_users']}, different item sets "
          f"{naive['different_sets']}, largest score difference "
          f"{naive['max_score_difference']:.2e}")
    figures = {"items": len(items), "users": n, "behaviors": len(behaviors),
               "distinct_behavior_texts": n_texts, "catalogue_encoding_s": index_seconds,
               "batched_s": fast_seconds, "batched_users_per_s": fast_rate,
               "explained_s": explained_seconds, "naive_users_per_s": naive_rate,
               "speedup": fast_rate / naive_rate, **naive,
               "with_catalogue_empty_cache_s": cold_cache,
               "with_catalogue_warm_cache_s": warm_cache}
    print(f"warm-cache full run: {cold_cache / warm_cache:.2f}x the users/s of the first run")
    write_result("e2e", figures, {"e2e_speedup_vs_naive": fast_rate / naive_rate,
                                  "warm_cache_speedup": cold_cache / warm_cache})
    return 0


if __name__ == "__main__":
    sys.exit(main())
