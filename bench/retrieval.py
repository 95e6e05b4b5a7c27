#!/usr/bin/env python
"""Retrieval: top-10 for 1,000 queries over 100k and 1M item vectors (dim 256 and 768).

Methods, side by side in one process on the same SIMULATED vectors:

- ``exact``: bert_rec's ``ItemIndex(backend="exact")``, the path ``bert-rec recommend --index
  exact`` uses: faiss's exact kernel (``faiss.knn``) on the index's own vectors;
- ``exact-tf``: the same index with ``engine="tensorflow"`` (blocked matmul + grouped top-k),
  what runs when faiss is not installed;
- ``numpy``: what one would write by hand: normalise, ``q @ V.T`` in query blocks of 64,
  ``argpartition``;
- ``faiss-flat``: faiss ``IndexFlatIP`` (exact) on the normalised vectors;
- ``faiss-ivf``: bert_rec's approximate backend (``IndexIVFFlat``, sqrt(M) lists, nprobe 16);
  its recall@10 is measured against ``exact``.

The vectors are simulated: 2,000 Gaussian clusters (centroids N(0, 1), members centroid +
N(0, 1) noise), queries drawn the same way, so that neighbours exist as they do for real
embeddings (uniformly random vectors are a worst case no catalogue looks like).

Time: median of ``--repeats`` searches of all queries after a warm-up search of 64 queries
(numpy on a million items: one search); ``build`` is index construction. Memory: peak RSS added by building the index and searching
once, on top of the process holding the caller's vectors (kernel peak mark reset before each
method), as a multiple of the raw float32 vector bytes. Every method keeps one normalised copy,
so 1.0 is the floor.

    .venv/bin/python bench/retrieval.py [--sizes 100000 1000000] [--dims 256 768]
"""

import argparse
import gc
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import peak_mib, reset_peak, rss_mib, table, timed, write_result  # noqa: E402

K = 10


def simulate(n, dim, clusters=2000, seed=0):
    """n clustered vectors [n, dim] float32, generated in slices to keep the peak low.

    The centroids depend only on ``dim`` (items and queries share them); ``seed`` draws the
    members.
    """
    centroids = np.random.default_rng(dim).standard_normal((clusters, dim), dtype=np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 65536):
        stop = min(start + 65536, n)
        out[start:stop] = rng.standard_normal((stop - start, dim), dtype=np.float32)
        out[start:stop] += centroids[rng.integers(0, clusters, stop - start)]
    return out


def numpy_top_k(vectors, queries, k=K, block=64):
    """The hand-written baseline (rows [Q, k])."""
    v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    out = np.empty((len(q), k), np.int64)
    for start in range(0, len(q), block):
        s = q[start:start + block] @ v.T  # [b, M]
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, part, 1), axis=1)
        out[start:start + block] = np.take_along_axis(part, order, 1)
    return out


class Method:
    """build() -> searcher; searcher(queries) -> rows [Q, K]."""

    def __init__(self, name, build):
        self.name, self.build = name, build


def methods(ids):
    from bert_rec.retrieval import ItemIndex  # noqa: PLC0415

    def item_index(backend, engine="auto"):
        def build(vectors):
            index = ItemIndex(vectors.shape[1], backend, engine=engine).add(ids, vectors)
            if backend != "exact":
                index._faiss_index()  # noqa: SLF001  (build now, not inside the timed search)
            return lambda q: index.search(q, K)[0]
        return build

    def faiss_flat(vectors):
        import faiss  # noqa: PLC0415
        v = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        index = faiss.IndexFlatIP(v.shape[1])
        index.add(v)
        del v
        return lambda q: index.search(q / np.linalg.norm(q, axis=1, keepdims=True), K)[1]

    def numpy_build(vectors):
        return lambda q: numpy_top_k(vectors, q)

    return [Method("exact", item_index("exact")),
            Method("exact-tf", item_index("exact", "tensorflow")), Method("numpy", numpy_build),
            Method("faiss-flat", faiss_flat), Method("faiss-ivf", item_index("faiss-ivf"))]


def warm_up():
    """Run every method once on small data, so TensorFlow's and faiss's one-off start-up
    allocations are not charged to the first method measured."""
    vectors, queries = simulate(4096, 64), simulate(64, 64, seed=1)
    for method in methods([str(i) for i in range(len(vectors))]):
        method.build(vectors)(queries)


def run_config(n, dim, n_queries, repeats):
    vectors = simulate(n, dim)
    queries = simulate(n_queries, dim, seed=1)
    raw = vectors.nbytes / 2**20
    ids = [str(i) for i in range(n)]
    rows = {}
    results = []
    for method in methods(ids):
        gc.collect()
        base = rss_mib()
        reset_peak()
        started = time.perf_counter()
        search = method.build(vectors)
        build = time.perf_counter() - started
        search(queries[:64])  # warm-up (traces the TF functions)
        # numpy, the slow baseline, is timed once on a million items (a minute per search).
        runs = 1 if method.name == "numpy" and n >= 1_000_000 else repeats
        seconds, found = timed(lambda: search(queries), repeats=runs, warmup=0)
        added = peak_mib() - base
        rows[method.name] = found
        results.append({"method": method.name, "items": n, "dim": dim, "build_s": build,
                        "search_s": seconds, "queries_per_s": n_queries / seconds,
                        "memory_mib": added, "memory_ratio": added / raw})
        del search
    exact = rows["exact"]
    for r in results:
        hits = [len(set(a) & set(e)) / K for a, e in zip(rows[r["method"]], exact)]
        r["recall_at_10"] = float(np.mean(hits))
        r["vs_exact"] = r["search_s"] / results[0]["search_s"]
    return results, raw


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[100_000, 1_000_000])
    parser.add_argument("--dims", nargs="+", type=int, default=[256, 768])
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    warm_up()
    results = []
    for n in args.sizes:
        for dim in args.dims:
            runs, raw = run_config(n, dim, args.queries, args.repeats)
            print(f"\n{n:,} items x {dim} dims ({raw:,.0f} MiB of float32 vectors), "
                  f"{args.queries:,} queries, top-{K}")
            table(["method", "build s", "search s", "queries/s", "time vs exact",
                   "recall@10 vs exact", "added memory / raw"],
                  [[r["method"], r["build_s"], r["search_s"], r["queries_per_s"],
                    r["vs_exact"], r["recall_at_10"], r["memory_ratio"]] for r in runs])
            results.extend(runs)
    by = {(r["items"], r["dim"], r["method"]): r for r in results}
    configs = sorted({(r["items"], r["dim"]) for r in results})
    ratios = {f"{n}x{d}": by[n, d, "exact"]["search_s"] / by[n, d, "faiss-flat"]["search_s"]
              for n, d in configs}
    recalls = {f"{n}x{d}": by[n, d, "faiss-ivf"]["recall_at_10"] for n, d in configs}
    speedups = {f"{n}x{d}": by[n, d, "exact"]["search_s"] / by[n, d, "faiss-ivf"]["search_s"]
                for n, d in configs}
    memory = {f"{n}x{d}": by[n, d, "exact"]["memory_ratio"] for n, d in configs}
    print("\nexact / faiss-flat search time:", _fmt(ratios))
    print("faiss-ivf recall@10:", _fmt(recalls), " speed-up over exact:", _fmt(speedups))
    print("exact path memory / raw vector bytes:", _fmt(memory))
    # Headline figures: the worst configuration of each (largest time ratio, lowest recall).
    summary = {"retrieval_exact_vs_faiss_ratio": max(ratios.values()),
               "approx_recall_at_10": min(recalls.values())}
    write_result("retrieval", {"queries": args.queries, "k": K, "runs": results,
                               "exact_vs_faiss_flat": ratios, "ivf_recall_at_10": recalls,
                               "ivf_speedup_vs_exact": speedups,
                               "exact_memory_ratio": memory}, summary)
    return 0


def _fmt(values):
    return ", ".join(f"{key} {value:.3f}" for key, value in values.items())


if __name__ == "__main__":
    sys.exit(main())
