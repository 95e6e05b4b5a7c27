"""The text encoder: a bert4keras BERT + mask-aware pooling, as a functional Keras model.

``TextEncoder`` wraps it for raw texts: clean (text.py) -> tokenize -> length-bucketed,
dynamically padded batches -> one traced ``tf.function`` -> ``[N, H]`` float32 vectors.
"""

import numpy as np

from .backend import keras, tf
from .checkpoint import find_checkpoint, load_bert
from .layers import TokenPooling
from .text import TextPipeline
from .tokenization import encode_texts, load_tokenizer, pad_batch
from .progress import progress_bar


def build_text_encoder(bert, pooling="mean"):
    """Functional model ``token_ids [B, L], segment_ids [B, L] -> vector [B, H]``.

    ``bert`` is the bert4keras Keras model (built ``with_pool=True`` for ``pooling='pooler'``);
    it is nested as one layer, so its own layer names (the checkpoint mapping) stay untouched.
    """
    token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    segment_ids = keras.Input(shape=(None,), dtype="int32", name="segment_ids")
    outputs = bert([token_ids, segment_ids])
    if pooling == "pooler":
        vector = outputs  # [B, H], tanh(W h_cls) from the checkpoint's pooler
    elif pooling in ("mean", "cls"):
        vector = TokenPooling(mode=pooling, name=f"{pooling}_pooling")([outputs, token_ids])
    else:
        raise ValueError(f"pooling must be mean, cls or pooler, got {pooling!r}")
    return keras.Model([token_ids, segment_ids], vector, name="text_encoder")


class TextEncoder:
    """Raw texts -> L2-comparable vectors with one BERT; encodes each distinct text once."""

    def __init__(self, files, pooling="mean", text_config=None, batch_size=64):
        self.files = find_checkpoint(files) if isinstance(files, str) else files
        self.pooling = pooling
        self.batch_size = batch_size
        self.transformer = load_bert(self.files, with_pool=(pooling == "pooler"),
                                     return_keras_model=False)
        self.model = build_text_encoder(self.transformer.model, pooling)
        self.tokenizer = load_tokenizer(self.files.vocab_path)
        self.pipeline = TextPipeline(text_config) if text_config is not None else TextPipeline()
        self.max_position = self.files.max_position
        self._encode_batch = tf.function(
            lambda token_ids, segment_ids: self.model([token_ids, segment_ids], training=False),
            input_signature=[tf.TensorSpec([None, None], tf.int32, name="token_ids"),
                             tf.TensorSpec([None, None], tf.int32, name="segment_ids")])

    @property
    def dim(self):
        return int(self.model.output_shape[-1])

    def encode(self, texts, max_len=64, desc="encoding texts", clean=True):
        """Texts -> ``[N, H]`` float32. Distinct cleaned texts are encoded once, shortest first."""
        texts = list(texts)
        cleaned = self.pipeline.clean_many(texts) if clean else texts
        slot = {}
        for text in cleaned:
            slot.setdefault(text, len(slot))
        unique = list(slot)
        max_len = min(max_len, self.max_position)
        sequences = encode_texts(self.tokenizer, unique, max_len)
        order = np.argsort([len(s) for s in sequences], kind="stable")  # length buckets
        vectors = np.zeros((len(unique), self.dim), dtype=np.float32)  # [U, H]
        starts = range(0, len(order), self.batch_size)
        with progress_bar(total=len(unique), desc=desc, unit="text") as bar:
            for start in starts:
                rows = order[start:start + self.batch_size]
                token_ids, segment_ids = pad_batch([sequences[i] for i in rows])  # [b, L]
                vectors[rows] = self._encode_batch(tf.constant(token_ids),
                                                   tf.constant(segment_ids)).numpy()
                bar.update(len(rows))
        return vectors[[slot[t] for t in cleaned]]  # [N, H]
