"""On-disk cache of text-encoder vectors, kept between runs and safe to delete at any time.

Layout: one namespace directory per model, ``<root>/<fingerprint[:20]>/``, where the fingerprint
(:func:`model_fingerprint`) covers every byte of the checkpoint (config, vocab, weights) and the
pooling: a changed weight is a new namespace, so a stale vector is never served. A namespace
holds segments, one per :meth:`EncodeCache.store` call:

- ``seg-<unique>.npy``: float32 ``[n, H]`` (``np.save``, never pickled);
- ``seg-<unique>.keys``: ``n`` lines, the hex :func:`text_key` of each row, in row order.

Each file is written atomically (``bert_rec.atomic``), the keys file last: a segment without
its keys file (a writer killed between the two) is invisible. Segment names carry the writer's
pid, the time and random bits, so concurrent writers never write the same file. Vectors are
memory-mapped when a segment is first seen, so only the rows that hit are read from disk; the
keys are read whole (41 bytes per entry). Past :data:`MAX_SEGMENTS` segments, ``store`` merges
them into one (new segment first, then the old ones removed). No TensorFlow here.
"""

import contextlib
import glob
import hashlib
import io
import os
import re
import secrets
import sys
import time

import numpy as np

from . import atomic

ENV_VAR = "BERT_REC_CACHE"
# Part of every fingerprint: bump it when bert_rec's code from a cleaned text to its vector
# changes (tokenizer settings, truncation, pooling), which the checkpoint files can't reveal.
# 2: raw-text entries are stored with a marker for texts that clean to nothing (encoder.py);
# version 1 caches had none, so their raw entries can't say which texts give no unit.
CACHE_VERSION = 2
MAX_SEGMENTS = 64  # store() compacts a namespace holding more
NAMESPACE_CHARS = 20
READ_CHUNK = 1 << 20  # fingerprinting reads 1 MiB at a time
COPY_ROWS = 1 << 16  # compaction copies this many vectors at a time
KEY_BYTES = 40  # hex SHA-1
VECTOR_DTYPE = np.dtype("<f4")
_SEGMENT_RE = re.compile(r"seg-[0-9a-f]+-(\d+)-[0-9a-f]+")
_TMP_RE = re.compile(re.escape(atomic.TMP_PREFIX) + r"(seg-[0-9a-f]+-\d+-[0-9a-f]+\.(?:npy|keys))-")


def default_cache_dir():
    """``$BERT_REC_CACHE`` if set, else ``~/.cache/bert_rec/encodings``."""
    return os.environ.get(ENV_VAR) or os.path.join(os.path.expanduser("~"), ".cache",
                                                   "bert_rec", "encodings")


def model_fingerprint(files, pooling, precision="float32"):
    """Hex SHA-1 over a checkpoint's bytes (config, vocab, index, data files), the pooling and
    the compute precision (float32 keeps the fingerprint it always had).

    ``files`` is a ``checkpoint.CheckpointFiles`` (or anything with ``config_path``,
    ``vocab_path`` and ``ckpt_prefix``). Each file enters with its role and size, so moving bytes
    between files changes the result too. Costs one read of the checkpoint (~0.7 s for the 400 MB
    of BERT-base).
    """
    digest = hashlib.sha1(f"bert_rec encode cache v{CACHE_VERSION}\0pooling={pooling}\0".encode())
    if precision != "float32":
        digest.update(f"precision={precision}\0".encode())
    prefix = files.ckpt_prefix
    parts = [("bert_config.json", files.config_path), ("vocab.txt", files.vocab_path),
             (".index", prefix + ".index")]
    parts += [(path[len(prefix):], path) for path in sorted(glob.glob(glob.escape(prefix) +
                                                                      ".data-*"))]
    for role, path in parts:
        _digest_file(digest, role, path)
    return digest.hexdigest()


def head_fingerprint(kind, base, paths):
    """Hex SHA-1 of a head that runs on a fingerprinted encoder: ``kind`` (its cache's name),
    ``base`` (the encoder's :func:`model_fingerprint`) and the bytes of its own files
    ``paths`` (a missing one enters as absent). A sentiment head's cached probabilities live in
    this namespace, next to the vectors' (sentiment.py)."""
    digest = hashlib.sha1(f"bert_rec {kind} cache v{CACHE_VERSION}\0{base}\0".encode())
    for path in paths:
        if os.path.isfile(path):
            _digest_file(digest, os.path.basename(path), path)
        else:
            digest.update(f"{os.path.basename(path)}\0absent\0".encode("utf-8"))
    return digest.hexdigest()


def _digest_file(digest, role, path):
    """Feed a file's role, size and bytes into ``digest``, 1 MiB at a time."""
    with open(path, "rb") as f:
        digest.update(f"{role}\0{os.fstat(f.fileno()).st_size}\0".encode("utf-8"))
        for chunk in iter(lambda: f.read(READ_CHUNK), b""):
            digest.update(chunk)


def text_key(text, max_len):
    """Hex SHA-1 of ``f"{max_len}\\0{text}"``: the cleaned text encoded and its truncation."""
    return hashlib.sha1(f"{max_len}\0{text}".encode("utf-8", "surrogatepass")).hexdigest()


def _remove(path):
    """Delete a file if possible: one already gone (or not removable) is no error here."""
    with contextlib.suppress(OSError):
        os.unlink(path)


def _warn(message):
    print(f"bert-rec: warning: {message}", file=sys.stderr)


def _npy_header(rows, dim):
    """The ``.npy`` (format 1.0) header of a C-ordered little-endian float32 ``[rows, dim]``."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {
        "descr": np.lib.format.dtype_to_descr(VECTOR_DTYPE), "fortran_order": False,
        "shape": (int(rows), int(dim))})
    return buffer.getvalue()


def _npy_chunks(vectors):
    """A float32 ``[n, H]`` array as ``.npy`` bytes, a block of rows at a time (no full copy)."""
    yield _npy_header(*vectors.shape)
    for start in range(0, len(vectors), COPY_ROWS):
        yield np.ascontiguousarray(vectors[start:start + COPY_ROWS], VECTOR_DTYPE).tobytes()


def _parse_keys(data):
    """A keys file's bytes -> ``[n]`` array of ``S40`` hex keys, or None if malformed."""
    width = KEY_BYTES + 1
    if len(data) % width:
        return None
    raw = np.frombuffer(data, np.uint8).reshape(-1, width)  # [n, 41]
    hexes = raw[:, :KEY_BYTES]
    digit = (hexes >= ord("0")) & (hexes <= ord("9"))
    letter = (hexes >= ord("a")) & (hexes <= ord("f"))
    if not ((raw[:, KEY_BYTES] == ord("\n")).all() and (digit | letter).all()):
        return None
    return np.ascontiguousarray(hexes).view(f"S{KEY_BYTES}").ravel()


class _Segment:
    """One segment in memory: its keys (row order and sorted, for searchsorted) and vectors."""

    def __init__(self, name, keys, vectors):
        self.name = name
        self.keys = keys  # [n] S40, row order
        self.order = np.argsort(keys, kind="stable")  # [n]
        self.sorted_keys = keys[self.order]  # [n]
        self.vectors = vectors  # [n, H] float32, usually a read-only memory map

    def find(self, keys):
        """Rows of ``keys`` [q] in this segment, -1 where absent -> [q] int64."""
        if not len(self.keys):
            return np.full(len(keys), -1, np.int64)
        pos = np.minimum(np.searchsorted(self.sorted_keys, keys), len(self.keys) - 1)
        return np.where(self.sorted_keys[pos] == keys, self.order[pos], -1)


class EncodeCache:
    """Vectors of (cleaned text, max_len) pairs for one model, in ``root/<fingerprint[:20]>/``.

    ``dim`` (H) is checked against every segment; None takes it from the first one seen.
    Problems with the cache never stop a run: an unreadable segment is skipped with a warning,
    and a cache that can't be written is used read-only from then on.
    """

    def __init__(self, root, fingerprint, dim=None):
        self.root = os.path.abspath(root)
        self.fingerprint = fingerprint
        self.directory = os.path.join(self.root, fingerprint[:NAMESPACE_CHARS])
        self.dim = dim
        self._segments = {}  # name -> _Segment, in the order first seen
        self._ignored = set()  # segments warned about once: not read again
        self._writable = True

    def __repr__(self):
        return f"EncodeCache({self.directory!r})"

    def lookup(self, texts, max_len, out=None):
        """Cached vectors of ``texts`` encoded with ``max_len`` tokens.

        Returns (vectors ``[N, H]`` float32, zero rows where missed; hit ``[N]`` bool). H is 0
        when the cache knows no dimension yet (no ``dim`` given, nothing stored). With ``out``
        (``[N, H]``), hits are written into it and it is returned; its other rows are untouched.
        """
        keys = np.array([text_key(t, max_len) for t in texts], dtype=f"S{KEY_BYTES}")  # [N]
        self._refresh()
        vectors = np.zeros((len(keys), self.dim or 0), np.float32) if out is None else out
        hit = np.zeros(len(keys), bool)  # [N]
        for segment in list(self._segments.values()):
            todo = np.flatnonzero(~hit)
            if not len(todo):
                break
            rows = segment.find(keys[todo])
            found = rows >= 0
            if found.any():
                vectors[todo[found]] = segment.vectors[rows[found]]
                hit[todo[found]] = True
        return vectors, hit

    def store(self, texts, max_len, vectors):
        """Add the vectors ``[n, H]`` of ``texts`` (encoded with ``max_len``) as one new segment.

        Returns the name of the segment that holds them (the merged one after a compaction), or
        None when nothing was written (no texts, or a cache directory that can't be written:
        warned about once, then used read-only).
        """
        texts = list(texts)
        vectors = np.asarray(vectors, VECTOR_DTYPE)
        if vectors.ndim != 2 or len(vectors) != len(texts):
            raise ValueError(f"store: {len(texts)} texts but vectors of shape {vectors.shape}; "
                             f"pass one row per text")
        if self.dim is not None and vectors.shape[1] != self.dim:
            raise ValueError(f"store: vectors have {vectors.shape[1]} dimensions but {self} "
                             f"holds {self.dim}-dimensional ones")
        if not texts or not self._writable:
            return None
        keys = np.array([text_key(t, max_len) for t in texts], dtype=f"S{KEY_BYTES}")
        name = self._write_segment(keys, _npy_chunks(vectors))
        if name is None:
            return None
        self.dim = vectors.shape[1]
        self._refresh()  # maps the new segment (not kept in memory) and counts concurrent ones
        if len(self._segments) > MAX_SEGMENTS:
            return self.compact() or name  # the merged segment holds these vectors too
        return name

    def compact(self):
        """Merge every readable segment of the namespace into one; returns its name (or None).

        The merged segment is complete on disk before any old one is removed, so a reader (or
        a kill) at any moment sees each entry at least once. Duplicate keys (two processes that
        encoded the same text) are kept once.
        """
        self._refresh()
        segments = list(self._segments.values())
        if len(segments) < 2 or not self._writable:
            return None
        keys = np.concatenate([s.keys for s in segments])  # [n]
        keep = np.zeros(len(keys), bool)
        keep[np.unique(keys, return_index=True)[1]] = True  # first occurrence of each key
        bounds = np.cumsum([0] + [len(s.keys) for s in segments])
        rows = [np.flatnonzero(keep[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]

        def chunks():  # streamed: a large cache is never held in memory whole
            yield _npy_header(int(keep.sum()), self.dim)
            for segment, kept in zip(segments, rows):
                for start in range(0, len(kept), COPY_ROWS):
                    block = segment.vectors[kept[start:start + COPY_ROWS]]
                    yield np.ascontiguousarray(block, VECTOR_DTYPE).tobytes()

        name = self._write_segment(keys[keep], chunks())
        if name is None:
            return None
        for segment in segments:
            # keys first: from then on no reader picks the old segment up
            for suffix in (".keys", ".npy"):
                _remove(os.path.join(self.directory, segment.name + suffix))
        merged = self._open(name)
        self._segments = {name: merged} if merged is not None else {}
        self._remove_leftovers()
        return name

    # -- files ---------------------------------------------------------------------------------
    def _write_segment(self, keys, npy_chunks):
        """Write ``seg-<unique>.npy`` then ``.keys``; the name, or None if the disk refused."""
        name = f"seg-{time.time_ns():x}-{os.getpid()}-{secrets.token_hex(4)}"
        base = os.path.join(self.directory, name)
        try:
            # Owner-only directories: the vectors are of users' own texts (comments, queries).
            os.makedirs(self.root, mode=0o700, exist_ok=True)
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            atomic.write_bytes(base + ".npy", npy_chunks)
            atomic.write_text(base + ".keys", (k.decode("ascii") + "\n" for k in keys))
        except OSError as e:
            _remove(base + ".npy")
            self._writable = False
            _warn(f"cannot write the encode cache {self.directory} ({e.strerror or e}); "
                  f"continuing without storing vectors (pass --no-cache, or a writable "
                  f"--cache-dir)")
            return None
        return name

    def _refresh(self):
        """Pick up segments other processes wrote; forget those compacted away."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            names = []
        except OSError as e:
            if self.directory not in self._ignored:
                self._ignored.add(self.directory)
                _warn(f"cannot read the encode cache {self.directory} ({e.strerror or e}); "
                      f"encoding without it (pass --no-cache, or fix the permissions)")
            return
        on_disk = {n[:-len(".keys")] for n in names
                   if n.endswith(".keys") and _SEGMENT_RE.fullmatch(n[:-len(".keys")])}
        for name in list(self._segments):
            if name not in on_disk:
                del self._segments[name]  # compacted by another process into a newer segment
        for name in sorted(on_disk - set(self._segments) - self._ignored):
            segment = self._open(name)
            if segment is not None:
                self._segments[name] = segment

    def _open(self, name):
        """A segment from disk, or None: gone meanwhile (compacted), or broken (warned, ignored)."""
        base = os.path.join(self.directory, name)
        try:
            with open(base + ".keys", "rb") as f:
                keys = _parse_keys(f.read())
            vectors = np.load(base + ".npy", mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, EOFError) as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
            return self._ignore(name, f"unreadable ({reason})")
        if keys is None:
            return self._ignore(name, "its .keys file is not one hex key per line")
        if vectors.ndim != 2 or vectors.dtype != VECTOR_DTYPE:
            return self._ignore(name, f"holds a {vectors.dtype} array of shape {vectors.shape}, "
                                      f"not a float32 matrix")
        if len(vectors) != len(keys):
            return self._ignore(name, f"{len(keys)} keys but {len(vectors)} vectors")
        if self.dim is not None and vectors.shape[1] != self.dim:
            return self._ignore(name, f"{vectors.shape[1]}-dimensional vectors, but this model's "
                                      f"are {self.dim}-dimensional")
        self.dim = vectors.shape[1]
        return _Segment(name, keys, vectors)

    def _ignore(self, name, reason):
        """Warn once about a broken segment and skip it from now on; returns None."""
        self._ignored.add(name)
        base = os.path.join(self.directory, name)
        _warn(f"{base}.npy/.keys: {reason}; ignoring this encode-cache segment: delete both "
              f"files (or the whole cache directory {self.root}, which is rebuilt as needed)")
        return None

    def _remove_leftovers(self):
        """Remove what killed writers left: temporary files, and ``.npy`` files without keys."""
        try:
            names = os.listdir(self.directory)
        except OSError:
            return
        for target in {m[1] for m in map(_TMP_RE.match, names) if m}:
            atomic.remove_stale(os.path.join(self.directory, target))  # dead writers' only
        for n in names:
            match = _SEGMENT_RE.fullmatch(n[:-len(".npy")]) if n.endswith(".npy") else None
            if (match and n[:-len(".npy")] + ".keys" not in names
                    and not atomic._pid_alive(int(match[1]))):
                _remove(os.path.join(self.directory, n))
