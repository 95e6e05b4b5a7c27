"""Top-k retrieval: the one top-k with exclusions, and the item index for large catalogues.

:func:`best_k` picks the k best of scored candidates, skipping excluded rows, ties by row
(catalogue order); recommending, evaluation and both index backends select with it.

``ItemIndex``: item ids + vectors, L2-normalised on the way in, so inner product = cosine, the
score bert_rec ranks by.

- ``exact``: brute force over every item. With faiss installed (it is a dependency) the
  search is faiss's own exact inner-product kernel (``faiss.knn``, the code behind
  ``IndexFlatIP.search``: BLAS matmul over blocks + a heap per query) run directly on the
  index's vectors, so the vectors are held once (``IndexFlatIP.add`` would copy them). faiss is
  Meta's well-kept library and its kernel is faster than anything we would hand-write. Without
  faiss (or with ``engine="tensorflow"``), a TensorFlow path: one traced function per block does
  the ``[b, D] x [D, c]`` matmul and a two-stage top-k (the maximum of each group of 32 scores,
  top-k groups, then top-k within them: exact, and far cheaper than ``tf.math.top_k`` over every
  score); the score block is sized from the catalogue (about 1/16 of the vector bytes, 8 to 32
  MiB). ``bench/retrieval.py`` compares both with numpy and faiss ``IndexFlatIP``.
- ``faiss-flat``: faiss ``IndexFlatIP``, also exact. ``faiss-ivf`` (``IndexIVFFlat``, ``nlist``
  lists, default sqrt(M), ``nprobe`` searched) and ``faiss-hnsw`` (``IndexHNSWFlat``) are approximate; report their
  recall with ``recall_at_k`` against ``exact``. faiss (faiss-cpu) is maintained by Meta and is
  far faster than anything we would write for approximate search; it is optional: only these
  backends import it.

An index directory holds ``ids.txt``, ``vectors.npy`` (normalised, float32) and ``index.json``;
it is written to a staging folder and renamed. ``add`` appends new items (or replaces the
vectors of ids already present) without touching the others.
"""

import functools
import itertools
import json
import os

import numpy as np

from .utils.atomic import staged_dir

BACKENDS = ("exact", "faiss-flat", "faiss-ivf", "faiss-hnsw")
EXACT_ENGINES = ("auto", "faiss", "tensorflow")  # who runs the exact backend (auto: faiss if installed)
META_NAME = "index.json"


class ItemIndex:
    """Item ids + unit vectors [M, D] with top-k search excluding given items per query."""

    def __init__(self, dim, backend="exact", nlist=None, nprobe=16, hnsw_m=32, ef_search=128,
                 engine="auto"):
        if backend not in BACKENDS:
            raise ValueError(f"index backend must be one of {', '.join(BACKENDS)}, got "
                             f"{backend!r}")
        if engine not in EXACT_ENGINES:
            raise ValueError(f"exact engine must be one of {', '.join(EXACT_ENGINES)}, got "
                             f"{engine!r}")
        self.engine = engine
        self.dim, self.backend = int(dim), backend
        self.nlist, self.nprobe, self.hnsw_m, self.ef_search = nlist, nprobe, hnsw_m, ef_search
        self.ids = []
        self._rows = {}  # id -> row; None until needed after a bulk add (saves ~70 B per item)
        self.vectors = np.zeros((0, self.dim), np.float32)  # [M, D], unit rows
        self._faiss = None

    def __len__(self):
        return len(self.ids)

    @property
    def rows(self):
        """{item id: row}, built on first use."""
        if self._rows is None:
            self._rows = {item_id: row for row, item_id in enumerate(self.ids)}
        return self._rows

    def add(self, ids, vectors):
        """Add items (new ids appended, known ids' vectors replaced); only they are touched.

        The normalised copy of ``vectors`` becomes the index's storage when every id is new, so
        a bulk add holds the vectors once (plus the caller's own array).
        """
        vectors = _normalise(np.asarray(vectors, np.float32))  # a new array [N, D]
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(f"expected {len(ids)} vectors of dimension {self.dim}, got "
                             f"{vectors.shape}")
        old = len(self.ids)
        if old == 0 and len(set(ids)) == len(ids):  # bulk load: no id map until one is needed
            self.ids, self.vectors, self._rows, self._faiss = list(ids), vectors, None, None
            return self
        appended = []  # positions in ``vectors`` of the new ids, in order of first appearance
        for pos, item_id in enumerate(ids):
            row = self.rows.get(item_id)
            if row is None:
                self.rows[item_id] = old + len(appended)
                self.ids.append(item_id)
                appended.append(pos)
            elif row < old:
                self.vectors[row] = vectors[pos]
            else:  # the same new id twice in one call: the last vector wins
                appended[row - old] = pos
        if appended:
            # Every position appended once and in order: the whole normalised array, no copy.
            new = vectors if len(appended) == len(vectors) else vectors[appended]
            self.vectors = new if old == 0 else np.concatenate([self.vectors, new])
        self._faiss = None  # rebuilt lazily from the vectors
        return self

    def search(self, queries, k=10, exclude=None):
        """Top-k (rows [B, k], scores [B, k]) by cosine; ``exclude[b]`` = rows to skip.

        Rows of fewer than k results (everything excluded) are padded with row -1, score -inf.
        """
        queries = _normalise(np.asarray(queries, np.float32))  # [B, D]
        exclude = exclude or [()] * len(queries)
        if self.backend != "exact":
            return self._search_faiss(queries, k, exclude)
        if self.exact_engine == "faiss":
            return self._search_knn(queries, k, exclude)
        return self._search_tensorflow(queries, k, exclude)

    @property
    def exact_engine(self):
        """``faiss`` or ``tensorflow``: what runs the exact backend's search."""
        if self.engine == "auto":
            return "faiss" if _faiss_available() else "tensorflow"
        return self.engine

    def _search_knn(self, queries, k, exclude):
        """faiss's exact inner-product kernel on the stored vectors (no copy of them)."""
        import faiss  # noqa: PLC0415
        rows = np.full((len(queries), k), -1, np.int64)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        if not len(self) or not len(queries):
            return rows, scores
        want = min(k + max((len(s) for s in exclude), default=0), len(self))
        self.vectors = np.ascontiguousarray(self.vectors)  # a no-op for the index's own arrays
        found_scores, found_rows = faiss.knn(np.ascontiguousarray(queries), self.vectors, want,
                                             metric=faiss.METRIC_INNER_PRODUCT)
        return _pick(found_rows, found_scores, k, exclude, rows, scores)

    def _search_tensorflow(self, queries, k, exclude):
        """Blocked matmul + grouped top-k over item chunks, merged per query (see module doc)."""
        import tensorflow as tf  # noqa: PLC0415  (TensorFlow only for this backend)
        rows = np.full((len(queries), k), -1, np.int64)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        if not len(self) or not len(queries):
            return rows, scores
        # Enough candidates per query that k remain after dropping its excluded rows.
        want = min(k + max((len(s) for s in exclude), default=0), len(self))
        item_rows, query_rows = _block_sizes(len(self), self.dim, len(queries))
        blocks = [tf.constant(queries[start:start + query_rows])  # [b, D] each
                  for start in range(0, len(queries), query_rows)]
        found = [([], []) for _ in blocks]  # per query block: scores and rows of each chunk
        grouped_top_k, plain_top_k = _top_k_functions()
        # Items outer, queries inner: each chunk is copied into TensorFlow once per search.
        for first, last, grouped in _item_chunks(len(self), item_rows):
            chunk = tf.constant(self.vectors[first:last])  # [c, D]
            top_k = grouped_top_k if grouped else plain_top_k
            for q, (block_scores, block_rows) in zip(blocks, found):
                values, indices = top_k(q, chunk, want)
                block_scores.append(values.numpy())
                block_rows.append(indices.numpy() + first)
        for n, (block_scores, block_rows) in enumerate(found):
            start = n * query_rows
            cand_scores = np.concatenate(block_scores, axis=1)  # [b, chunks * want]
            cand_rows = np.concatenate(block_rows, axis=1)
            for b, skip in enumerate(exclude[start:start + len(cand_rows)]):
                best_rows, best_scores = best_k(cand_rows[b], cand_scores[b], k, skip)
                rows[start + b, :len(best_rows)] = best_rows
                scores[start + b, :len(best_rows)] = best_scores
        return rows, scores

    def _search_faiss(self, queries, k, exclude):
        index = self._faiss_index()
        extra = max((len(s) for s in exclude), default=0)
        want = min(k + extra, len(self))
        found_scores, found_rows = index.search(queries, want)  # [B, k + extra]
        rows = np.full((len(queries), k), -1, np.int64)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        return _pick(found_rows, found_scores, k, exclude, rows, scores)

    def _faiss_index(self):
        """Build (once per change) the faiss index over the vectors."""
        if self._faiss is not None:
            return self._faiss
        import faiss  # noqa: PLC0415
        if self.backend == "faiss-flat":
            index = faiss.IndexFlatIP(self.dim)
        elif self.backend == "faiss-hnsw":
            index = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efSearch = self.ef_search
        else:
            # sqrt(M) lists, trained on at most 64 vectors per list (a seeded sample): k-means
            # on all of a million 768-d vectors would take longer than the search saves.
            nlist = self.nlist or max(1, int(np.sqrt(len(self))))
            quantizer = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            self._quantizer = quantizer  # the IVF index needs it alive
            sample = self.vectors
            if len(sample) > 64 * nlist:
                rng = np.random.default_rng(0)
                sample = sample[np.sort(rng.choice(len(sample), 64 * nlist, replace=False))]
            index.train(sample)
            index.nprobe = min(self.nprobe, nlist)
        index.add(self.vectors)
        self._faiss = index
        return index

    # -- files ----------------------------------------------------------------------------
    def save(self, path):
        """Write the index directory atomically (staging folder + rename)."""
        with staged_dir(path) as tmp:
            with open(os.path.join(tmp, "ids.txt"), "w", encoding="utf-8") as f:
                f.writelines(i + "\n" for i in self.ids)
            with open(os.path.join(tmp, "vectors.npy"), "wb") as f:
                np.save(f, self.vectors, allow_pickle=False)
            meta = {"dim": self.dim, "backend": self.backend, "engine": self.engine,
                    "nlist": self.nlist,
                    "nprobe": self.nprobe, "hnsw_m": self.hnsw_m, "ef_search": self.ef_search,
                    "size": len(self)}
            with open(os.path.join(tmp, META_NAME), "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=2)
        return os.path.abspath(path)

    @classmethod
    def load(cls, path):
        """Read an index directory written by ``save``."""
        with open(os.path.join(path, META_NAME), encoding="utf-8") as f:
            meta = json.load(f)
        size = meta.pop("size")
        index = cls(**meta)
        with open(os.path.join(path, "ids.txt"), encoding="utf-8") as f:
            ids = [line.rstrip("\n") for line in f]
        vectors = np.load(os.path.join(path, "vectors.npy"), allow_pickle=False)
        if len(ids) != size or vectors.shape != (size, index.dim):
            raise ValueError(f"{path}: ids.txt, vectors.npy and {META_NAME} disagree on the "
                             f"size; the index is damaged: write it again")
        index.ids, index.vectors = ids, vectors
        index._rows = None  # built on first use
        return index


def _pick(found_rows, found_scores, k, exclude, rows, scores):
    """Fill ``rows``/``scores`` [B, k] with each query's k best found candidates [B, want]
    (faiss pads missing results with row -1), skipping its excluded rows: what :func:`best_k`
    does per query, for the whole block at once (a Python loop over queries cost a fifth of a
    warm ``recommend``)."""
    found_rows = np.asarray(found_rows, np.int64)
    found_scores = np.array(found_scores, np.float32)  # a copy: dropped entries become -inf
    drop = (found_rows < 0) | ~np.isfinite(found_scores)  # [B, want]
    counts = [len(skip) for skip in exclude]
    if sum(counts):
        skipped = np.fromiter(itertools.chain.from_iterable(exclude), np.int64, sum(counts))
        size = int(max(found_rows.max(), skipped.max())) + 1  # (query, row) -> one int64 key
        owner = np.repeat(np.arange(len(exclude), dtype=np.int64), counts)
        query = np.arange(len(found_rows), dtype=np.int64)[:, None]
        drop |= np.isin(query * size + found_rows, owner * size + skipped)
    found_scores[drop] = -np.inf
    take = min(k, found_rows.shape[1])
    order = np.lexsort((found_rows, -found_scores), axis=-1)[:, :take]  # score down, then row
    best_rows = np.take_along_axis(found_rows, order, axis=1)
    best_scores = np.take_along_axis(found_scores, order, axis=1)
    kept = np.isfinite(best_scores)
    rows[:, :take] = np.where(kept, best_rows, -1)
    scores[:, :take] = np.where(kept, best_scores, -np.inf)
    return rows, scores


@functools.cache
def _faiss_available():
    try:
        import faiss  # noqa: F401, PLC0415
    except ImportError:
        return False
    return True


def best_k(rows, scores, k, exclude=()):
    """The k best (rows, scores) of candidates ``rows`` [n] scored ``scores`` [n].

    Rows in ``exclude`` and ``-inf``/NaN scores are skipped; highest score first, ties by row
    (catalogue order); fewer than k when fewer candidates remain.
    """
    rows, scores = np.asarray(rows), np.asarray(scores)
    keep = np.isfinite(scores)
    if len(exclude):
        keep &= ~np.isin(rows, np.fromiter(exclude, np.int64, len(exclude)))
    rows, scores = rows[keep], scores[keep]
    if len(scores) > k:  # only the rows at or above the k-th score can be chosen (ties kept)
        kth = np.partition(scores, len(scores) - k)[len(scores) - k]
        top = scores >= kth
        rows, scores = rows[top], scores[top]
    order = np.lexsort((rows, -scores))[:k]
    return rows[order], scores[order]


def recall_at_k(approx_rows, exact_rows):
    """Mean fraction of the exact top-k rows that the approximate search also returned."""
    hits = [len(set(a[a >= 0]) & set(e[e >= 0])) / max((e >= 0).sum(), 1)
            for a, e in zip(approx_rows, exact_rows)]
    return float(np.mean(hits)) if hits else 0.0


GROUP = 32  # scores per group in the two-stage top-k (fastest of 8-128 measured)


def _block_sizes(n_items, dim, n_queries, query_cap=1024):
    """(item rows per chunk, queries per block): the [queries, items] score block and the item
    chunk are each about 1/16 of the catalogue's vector bytes, between 8 and 32 MiB (large
    blocks keep the matmul near the machine's speed; bench/retrieval.py measures time and
    memory)."""
    budget = min(max(n_items * dim * 4 // 16, 8 * 2**20), 32 * 2**20)
    query_rows = max(1, min(query_cap, n_queries))
    # Both the score block [queries, items] and the chunk copied into TensorFlow [items, D]
    # stay within the budget, whatever the number of queries.
    item_rows = max(GROUP, budget // (4 * max(query_rows, dim)) // GROUP * GROUP)
    return item_rows, query_rows


def _item_chunks(n_items, item_rows):
    """(first, last, grouped) item ranges: full groups of GROUP rows go through the grouped
    top-k; a tail shorter than a group goes through the plain one."""
    for first in range(0, n_items, item_rows):
        last = min(first + item_rows, n_items)
        whole = first + (last - first) // GROUP * GROUP
        if whole > first:
            yield first, whole, True
        if whole < last:
            yield whole, last, False


@functools.cache
def _top_k_functions():
    """(grouped, plain) traced top-k functions, built once on first use (TensorFlow is imported
    lazily)."""
    import tensorflow as tf  # noqa: PLC0415
    spec = [tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([None, None], tf.float32),
            tf.TensorSpec([], tf.int32)]

    @tf.function(input_signature=spec)
    def grouped(queries, items, k):
        """Exact top-k of queries [b, D] x items [c, D] (c a multiple of GROUP)."""
        scores = tf.matmul(queries, items, transpose_b=True)  # [b, c]
        b = tf.shape(scores)[0]
        groups = tf.reshape(scores, [b, -1, GROUP])  # [b, G, GROUP]
        # The k best scores lie in the (at most k) groups whose maxima are the k largest.
        kg = tf.minimum(k, tf.shape(groups)[1])
        _, best_groups = tf.math.top_k(tf.reduce_max(groups, axis=2), kg)  # [b, kg]
        candidates = tf.reshape(tf.gather(groups, best_groups, batch_dims=1), [b, -1])
        offsets = best_groups[:, :, None] * GROUP + tf.range(GROUP)[None, None, :]
        values, picked = tf.math.top_k(candidates, tf.minimum(k, tf.shape(candidates)[1]))
        return values, tf.gather(tf.reshape(offsets, [b, -1]), picked, batch_dims=1)

    @tf.function(input_signature=spec)
    def plain(queries, items, k):
        scores = tf.matmul(queries, items, transpose_b=True)  # [b, c]
        return tf.math.top_k(scores, tf.minimum(k, tf.shape(scores)[1]))

    return grouped, plain


def _normalise(vectors):
    """L2-normalise rows (zero rows stay zero)."""
    norms = np.sqrt(np.einsum("...d,...d->...", vectors, vectors))[..., None]  # no [N, D] temp
    return vectors / np.maximum(norms, 1e-12)
