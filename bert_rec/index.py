"""Item index for retrieval at catalogue scale: exact top-k in TensorFlow, or faiss.

Vectors are L2-normalised on the way in, so inner product = cosine, the score bert_rec ranks by.

- ``exact``: brute force ``[B, D] x [D, M]`` matmul + ``tf.math.top_k`` in query blocks; memory
  is the vectors plus one ``[B, M]`` score block.
- ``faiss-flat``: faiss ``IndexFlatIP``, also exact. ``faiss-ivf`` (``IndexIVFFlat``, ``nlist``
  lists, ``nprobe`` searched) and ``faiss-hnsw`` (``IndexHNSWFlat``) are approximate; report their
  recall with ``recall_at_k`` against ``exact``. faiss (faiss-cpu) is maintained by Meta and is
  far faster than anything we would write for approximate search; it is optional: only these
  backends import it.

An index directory holds ``ids.txt``, ``vectors.npy`` (normalised, float32) and ``index.json``;
it is written to a staging folder and renamed. ``add`` appends new items (or replaces the
vectors of ids already present) without touching the others.
"""

import json
import os
import shutil

import numpy as np

from .atomic import replace_dir, staging_dir

BACKENDS = ("exact", "faiss-flat", "faiss-ivf", "faiss-hnsw")
META_NAME = "index.json"


class ItemIndex:
    """Item ids + unit vectors [M, D] with top-k search excluding given items per query."""

    def __init__(self, dim, backend="exact", nlist=None, nprobe=16, hnsw_m=32, ef_search=128):
        if backend not in BACKENDS:
            raise ValueError(f"index backend must be one of {', '.join(BACKENDS)}, got "
                             f"{backend!r}")
        self.dim, self.backend = int(dim), backend
        self.nlist, self.nprobe, self.hnsw_m, self.ef_search = nlist, nprobe, hnsw_m, ef_search
        self.ids = []
        self.rows = {}
        self.vectors = np.zeros((0, self.dim), np.float32)  # [M, D], unit rows
        self._faiss = None

    def __len__(self):
        return len(self.ids)

    def add(self, ids, vectors):
        """Add items (new ids appended, known ids' vectors replaced); only they are touched."""
        vectors = _normalise(np.asarray(vectors, np.float32))
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(f"expected {len(ids)} vectors of dimension {self.dim}, got "
                             f"{vectors.shape}")
        old = len(self.ids)
        new_ids, new_vectors = [], []
        for item_id, vector in zip(ids, vectors):
            row = self.rows.get(item_id)
            if row is None:
                self.rows[item_id] = old + len(new_ids)
                new_ids.append(item_id)
                new_vectors.append(vector)
            elif row < old:
                self.vectors[row] = vector
            else:  # the same new id twice in one call: the last vector wins
                new_vectors[row - old] = vector
        self.ids.extend(new_ids)
        if new_vectors:
            self.vectors = np.concatenate([self.vectors, np.stack(new_vectors)])
        self._faiss = None  # rebuilt lazily from the vectors
        return self

    def search(self, queries, k=10, exclude=None, block=1024):
        """Top-k (rows [B, k], scores [B, k]) by cosine; ``exclude[b]`` = rows to skip.

        Rows of fewer than k results (everything excluded) are padded with row -1, score -inf.
        """
        queries = _normalise(np.asarray(queries, np.float32))  # [B, D]
        exclude = exclude or [()] * len(queries)
        if self.backend == "exact":
            return self._search_exact(queries, k, exclude, block)
        return self._search_faiss(queries, k, exclude)

    def _search_exact(self, queries, k, exclude, block):
        import tensorflow as tf  # noqa: PLC0415  (TensorFlow only for this backend)
        rows = np.full((len(queries), k), -1, np.int64)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        table = tf.constant(self.vectors)  # [M, D]
        kk = min(k, len(self))
        for start in range(0, len(queries), block):
            q = queries[start:start + block]
            s = tf.matmul(q, table, transpose_b=True).numpy()  # [b, M]
            for b, skip in enumerate(exclude[start:start + block]):
                s[b, list(skip)] = -np.inf
            top = tf.math.top_k(s, k=kk)
            rows[start:start + len(q), :kk] = top.indices.numpy()
            scores[start:start + len(q), :kk] = top.values.numpy()
        rows[~np.isfinite(scores)] = -1
        return rows, scores

    def _search_faiss(self, queries, k, exclude):
        index = self._faiss_index()
        extra = max((len(s) for s in exclude), default=0)
        want = min(k + extra, len(self))
        found_scores, found_rows = index.search(queries, want)  # [B, k + extra]
        rows = np.full((len(queries), k), -1, np.int64)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        for b, skip in enumerate(exclude):
            skip = set(skip)
            keep = [(r, s) for r, s in zip(found_rows[b], found_scores[b])
                    if r >= 0 and r not in skip][:k]
            for j, (r, s) in enumerate(keep):
                rows[b, j], scores[b, j] = r, s
        return rows, scores

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
            nlist = self.nlist or max(1, int(4 * np.sqrt(len(self))))
            quantizer = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            self._quantizer = quantizer  # the IVF index needs it alive
            index.train(self.vectors)
            index.nprobe = min(self.nprobe, nlist)
        index.add(self.vectors)
        self._faiss = index
        return index

    # -- files ----------------------------------------------------------------------------
    def save(self, path):
        """Write the index directory atomically (staging folder + rename)."""
        tmp = staging_dir(path)
        try:
            with open(os.path.join(tmp, "ids.txt"), "w", encoding="utf-8") as f:
                f.writelines(i + "\n" for i in self.ids)
            with open(os.path.join(tmp, "vectors.npy"), "wb") as f:
                np.save(f, self.vectors, allow_pickle=False)
            meta = {"dim": self.dim, "backend": self.backend, "nlist": self.nlist,
                    "nprobe": self.nprobe, "hnsw_m": self.hnsw_m, "ef_search": self.ef_search,
                    "size": len(self)}
            with open(os.path.join(tmp, META_NAME), "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=2)
            return replace_dir(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

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
        index.rows = {item_id: row for row, item_id in enumerate(ids)}
        return index


def recall_at_k(approx_rows, exact_rows):
    """Mean fraction of the exact top-k rows that the approximate search also returned."""
    hits = [len(set(a[a >= 0]) & set(e[e >= 0])) / max((e >= 0).sum(), 1)
            for a, e in zip(approx_rows, exact_rows)]
    return float(np.mean(hits)) if hits else 0.0


def _normalise(vectors):
    """L2-normalise rows (zero rows stay zero)."""
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)
