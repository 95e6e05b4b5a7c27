"""Texts -> vectors with one BERT (``TextEncoder``).

Raw texts are cleaned (text.py), tokenised (tokenization.py), cut into length-bucketed,
dynamically padded batches and run through the text encoder model (models.py: BERT + pooling)
in one traced ``tf.function``, giving ``[N, H]`` float32 vectors. Each distinct text is encoded
once per call, and with an encode cache (utils/encode_cache.py) once across runs.
"""

import contextlib

import numpy as np

from .backend import keras, tf
from .checkpoint import find_checkpoint, load_bert
from .config import PRECISIONS
from .fast_bert import FastBert, enabled as fast_bert_enabled
from .models import build_text_encoder
from .text import TextPipeline
from .tokenization import encode_texts, load_tokenizer, pad_batch
from .utils.progress import progress_bar


# The encode-cache key prefix of the marker saying a raw text cleans to nothing (encode_units).
EMPTY_MARK = "\0empty"

# config.PRECISIONS. float32: exact. bfloat16: Keras's ``mixed_bfloat16`` policy (weights kept
# in float32, matmuls and activations in bfloat16); vectors come out as float32 either way.
# A bfloat16 encoder is never saved: ``as_float32`` gives the float32 twin of its live weights
# (training.py trains in bfloat16, then saves and tests that twin).


def cpu_has_bf16():
    """True when /proc/cpuinfo lists a bfloat16 matmul instruction set (avx512_bf16, amx_bf16).
    Elsewhere bfloat16 is emulated and slower than float32."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def default_batch_size(hidden_size):
    """Texts per encoder batch: 32 for BERT-base-wide models (hidden >= 512), else 64. Measured
    on 2 CPU cores with a BERT-base-size model, batches interleaved in one process: 32 texts per
    batch encoded 256 captions 13% faster than 64 (medians 16.6 s and 19.1 s; 16 per batch:
    15.9 s), the activations of a smaller batch staying in cache; small models keep 64."""
    return 32 if hidden_size >= 512 else 64


@contextlib.contextmanager
def precision_policy(precision):
    """Keras layers built inside use ``precision``'s dtype policy; the previous one returns."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "float32":
        yield
        return
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


class TextEncoder:
    """Raw texts -> L2-comparable vectors with one BERT; encodes each distinct text once."""

    def __init__(self, files, pooling="mean", text_config=None, batch_size=None, cache=None,
                 precision="float32"):
        self.files = find_checkpoint(files) if isinstance(files, str) else files
        self.pooling = pooling
        self.batch_size = batch_size or default_batch_size(self.files.config["hidden_size"])
        self.precision = precision
        with precision_policy(precision):
            self.transformer = load_bert(self.files, with_pool=(pooling == "pooler"),
                                         return_keras_model=False)
            self.model = build_text_encoder(self.transformer.model, pooling)
        self.tokenizer = load_tokenizer(self.files.vocab_path)
        self.pipeline = TextPipeline(text_config) if text_config is not None else TextPipeline()
        self.max_position = self.files.max_position
        self.cache = cache  # an encode_cache.EncodeCache, or None: encode every text
        self._keras_batch = tf.function(
            lambda token_ids, segment_ids: tf.cast(
                self.model([token_ids, segment_ids], training=False), tf.float32),
            input_signature=[tf.TensorSpec([None, None], tf.int32, name="token_ids"),
                             tf.TensorSpec([None, None], tf.int32, name="segment_ids")])
        # float32 inference through fast_bert.py (same maths, fused kernels), where it can
        self.fast = None
        if precision == "float32" and fast_bert_enabled() \
                and not FastBert.unsupported(self.transformer, pooling):
            self.fast = FastBert(self.transformer, pooling)
        self._fast_weights = None  # FastBert.snapshot() of the encode call under way

    @property
    def dim(self):
        return int(self.model.output_shape[-1])

    def as_float32(self):
        """This encoder computing in float32 with the same live weights (itself if it does):
        the model to save, test and export after training in bfloat16. Shares the tokenizer
        files and the text pipeline; no cache (trained weights are not the files')."""
        if self.precision == "float32":
            return self
        twin = TextEncoder(self.files, pooling=self.pooling, batch_size=self.batch_size)
        twin.pipeline = self.pipeline
        # mixed_bfloat16 keeps float32 variables, created in the same order: a plain copy
        twin.transformer.model.set_weights(self.transformer.model.get_weights())
        return twin

    def enable_cache(self, root):
        """Keep vectors between runs in an ``encode_cache.EncodeCache`` under ``root``.

        Its namespace is the fingerprint of the checkpoint *files* and the pooling, so call this
        only while the live weights are the files' (set ``cache = None`` before training them).
        Returns the cache.
        """
        from .utils.encode_cache import EncodeCache, model_fingerprint  # noqa: PLC0415
        self.cache = EncodeCache(root, model_fingerprint(self.files, self.pooling,
                                                         self.precision), dim=self.dim)
        return self.cache

    def encode(self, texts, max_len=64, desc="encoding texts", clean=True):
        """Texts -> ``[N, H]`` float32. Distinct cleaned texts are encoded once, shortest first.

        With a ``cache``, the distinct texts it holds for this ``max_len`` are read from it; only
        the others are encoded (and then stored in it). Raw texts (``clean=True``) are looked up
        by their raw form and the pipeline's fingerprint *before* cleaning, so a warm run does
        not clean them again (cleaning, jieba above all, was half of a warm run's time).
        """
        texts = list(texts)
        max_len = min(max_len, self.max_position)
        if clean and self.cache is not None and all(isinstance(t, str) for t in texts):
            return self._encode_raw_cached(texts, max_len, desc)
        cleaned = self.pipeline.clean_many(texts) if clean else texts
        slot = {}
        for text in cleaned:
            slot.setdefault(text, len(slot))
        vectors = self._encode_cleaned(list(slot), max_len, desc, store=True)  # [U, H]
        return vectors[[slot[t] for t in cleaned]]  # [N, H]

    def encode_units(self, texts, max_len=64, desc="encoding texts"):
        """Distinct raw texts -> (vectors ``[K, H]`` of the K that clean to something, their
        positions ``[K]`` in ``texts``): a behaviour log's text units, which exist only for
        texts with words left after cleaning.

        With a cache a warm run reads both the vectors and which texts clean to nothing from it,
        so it cleans nothing again (cleaning the behaviour texts was a sixth of a warm
        ``recommend``).
        """
        texts = list(texts)
        max_len = min(max_len, self.max_position)
        if self.cache is not None and all(isinstance(t, str) for t in texts):
            vectors, empty = self._raw_cached(texts, max_len, desc)
            kept = np.flatnonzero(~empty)
            return vectors[kept], kept
        cleaned = self.pipeline.clean_many(texts)
        kept = np.array([i for i, c in enumerate(cleaned) if c], np.int64)
        return self.encode([cleaned[i] for i in kept], max_len, desc, clean=False), kept

    def _encode_raw_cached(self, texts, max_len, desc):
        """``encode`` of raw texts with a cache: raw-text keys first, cleaning only the misses."""
        slot = {}
        for text in texts:
            slot.setdefault(text, len(slot))
        vectors, _ = self._raw_cached(list(slot), max_len, desc)  # [U, H]
        return vectors[[slot[t] for t in texts]]  # [N, H]

    def _raw_cached(self, unique, max_len, desc):
        """Distinct raw texts -> (vectors ``[U, H]``, cleans to nothing ``[U]`` bool) through
        the cache, keyed by the raw text and the pipeline's fingerprint: only misses are cleaned.

        A miss is stored as one segment holding its vector and, for a text that cleans to
        nothing, a marker entry (a zero vector under the key with ``EMPTY_MARK``), so a reader
        never sees the one without the other.
        """
        prefix = f"\0raw\0{self.pipeline.fingerprint}\0"  # cleaned texts hold no NUL
        raw_keys = [prefix + t for t in unique]
        vectors = np.zeros((len(unique), self.dim), dtype=np.float32)  # [U, H]
        _, hit = self.cache.lookup(raw_keys, max_len, out=vectors)
        _, empty = self.cache.lookup([EMPTY_MARK + k for k in raw_keys], max_len)
        todo = np.flatnonzero(~hit)
        if len(todo):
            cleaned = self.pipeline.clean_many([unique[i] for i in todo])
            distinct = {}
            for text in cleaned:
                distinct.setdefault(text, len(distinct))
            if hit.any():
                desc = f"{desc} ({int(hit.sum())} cached)"
            # Vectors cleaned texts already have (from behaviour texts) are reused, not stored
            # again: the new entries are keyed by the raw texts only.
            fresh = self._encode_cleaned(list(distinct), max_len, desc, store=False)
            vectors[todo] = fresh[[distinct[t] for t in cleaned]]
            blank = todo[[not c for c in cleaned]]
            empty[blank] = True
            keys = [raw_keys[i] for i in todo] + [EMPTY_MARK + raw_keys[i] for i in blank]
            marks = np.zeros((len(blank), self.dim), np.float32)
            self.cache.store(keys, max_len, np.concatenate([vectors[todo], marks]))
        return vectors, empty

    def _encode_cleaned(self, unique, max_len, desc, store):
        """Distinct cleaned texts -> ``[U, H]``: cache hits read, the rest encoded (and stored
        in the cache when ``store``)."""
        vectors = np.zeros((len(unique), self.dim), dtype=np.float32)  # [U, H]
        hit = np.zeros(len(unique), bool)  # [U]
        if self.cache is not None:
            _, hit = self.cache.lookup(unique, max_len, out=vectors)
        todo = np.flatnonzero(~hit)
        if len(todo):
            missing = [unique[i] for i in todo]
            if hit.any():
                desc = f"{desc} ({int(hit.sum())} cached)"
            fresh = self._encode_distinct(missing, max_len, desc)  # [m, H]
            if len(todo) == len(unique):
                vectors = fresh
            else:
                vectors[todo] = fresh
            if store and self.cache is not None:
                self.cache.store(missing, max_len, fresh)
        return vectors

    def _encode_distinct(self, texts, max_len, desc):
        """Distinct cleaned texts -> ``[U, H]`` float32, in length-bucketed batches."""
        sequences = encode_texts(self.tokenizer, texts, max_len)
        vectors = np.zeros((len(texts), self.dim), dtype=np.float32)  # [U, H]
        # The policy stays on while the function traces: bert4keras builds some layers
        # (attention dropout) inside ``call``, and they must take the same dtype policy.
        # the live weights, read once for this call (trained weights included)
        self._fast_weights = self.fast.snapshot() if self.fast is not None else None
        try:
            with precision_policy(self.precision), \
                    progress_bar(total=len(texts), desc=desc, unit="text") as bar:
                for rows in plan_batches([len(s) for s in sequences], self.batch_size):
                    token_ids, segment_ids = pad_batch([sequences[i] for i in rows])  # [b, L]
                    vectors[rows] = self._encode_batch(tf.constant(token_ids),
                                                       tf.constant(segment_ids)).numpy()
                    bar.update(len(rows))
        finally:
            self._fast_weights = None
        return vectors

    def _encode_batch(self, token_ids, segment_ids):
        """One batch ``[b, L]`` -> ``[b, H]`` float32: the fast pass with this encode call's
        weights, else the Keras model."""
        if self._fast_weights is not None:
            return self.fast.run(token_ids, segment_ids, self._fast_weights)
        return self._keras_batch(token_ids, segment_ids)


def plan_batches(lengths, batch_size):
    """Row indices of each encoder batch: texts sorted by token length, cut every ``batch_size``.

    Neighbours in length share a batch, so each batch pads to a length close to all of its rows
    (the benchmark reports the padding fraction this leaves).
    """
    order = np.argsort(np.asarray(lengths), kind="stable")
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
