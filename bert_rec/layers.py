"""Custom Keras layers: mask-aware token pooling, weighted interest pooling, cosine scoring.

Every layer mirrors its ``__init__`` kwargs in ``get_config`` and is registered, so models that
use them save and reload (tests/test_layers.py round-trips each one).
"""

from .backend import keras, tf

POOLINGS = ("mean", "cls", "pooler")


@keras.utils.register_keras_serializable(package="bert_rec")
class TokenPooling(keras.layers.Layer):
    """[B, L, H] token states + [B, L] token ids -> [B, H] text vector.

    ``mean`` averages the non-padding tokens (id != 0, [CLS]/[SEP] included, as in
    Sentence-BERT); ``cls`` takes position 0.
    """

    def __init__(self, mode="mean", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("mean", "cls"):
            raise ValueError(f"TokenPooling mode must be 'mean' or 'cls', got {mode!r}")
        self.mode = mode

    def call(self, inputs):
        states, token_ids = inputs
        if self.mode == "cls":
            return states[:, 0]  # [B, H]
        mask = tf.cast(tf.not_equal(token_ids, 0), states.dtype)[:, :, None]  # [B, L, 1]
        total = tf.reduce_sum(states * mask, axis=1)  # [B, H]
        count = tf.maximum(tf.reduce_sum(mask, axis=1), 1.0)  # [B, 1]
        return total / count  # [B, H]

    def compute_output_shape(self, input_shape):
        states_shape = input_shape[0]
        return (states_shape[0], states_shape[-1])

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.utils.register_keras_serializable(package="bert_rec")
class WeightedPooling(keras.layers.Layer):
    """[B, N, H] behaviour vectors + [B, N] weights -> [B, H] user interest vector.

    Each behaviour vector is L2-normalised first (so a long review doesn't outweigh a click by
    its norm), then averaged with the weights; weight 0 marks padding and is ignored. A user with
    all-zero weights gets the zero vector.
    """

    def __init__(self, normalize_inputs=True, **kwargs):
        super().__init__(**kwargs)
        self.normalize_inputs = normalize_inputs

    def call(self, inputs):
        vectors, weights = inputs
        if self.normalize_inputs:
            vectors = tf.math.l2_normalize(vectors, axis=-1)  # [B, N, H]
        weights = tf.cast(weights, vectors.dtype)  # [B, N]
        total = tf.reduce_sum(vectors * weights[:, :, None], axis=1)  # [B, H]
        norm = tf.reduce_sum(weights, axis=1, keepdims=True)  # [B, 1]
        return tf.math.divide_no_nan(total, norm)  # [B, H]

    def compute_output_shape(self, input_shape):
        vectors_shape = input_shape[0]
        return (vectors_shape[0], vectors_shape[-1])

    def get_config(self):
        return {**super().get_config(), "normalize_inputs": self.normalize_inputs}


@keras.utils.register_keras_serializable(package="bert_rec")
class CosineSimilarity(keras.layers.Layer):
    """Cosine similarity: L2-normalise, then dot.

    ``[B, H]`` queries with ``[M, H]`` candidates -> ``[B, M]`` (every query against every
    candidate), or ``[B, H]`` with ``[B, M, H]`` -> ``[B, M]`` (each query against its own
    candidates). Optional ``temperature`` divides the scores (for softmax training).
    """

    def __init__(self, temperature=1.0, **kwargs):
        super().__init__(**kwargs)
        self.temperature = float(temperature)

    def call(self, inputs):
        queries, candidates = inputs
        queries = tf.math.l2_normalize(queries, axis=-1)  # [B, H]
        candidates = tf.math.l2_normalize(candidates, axis=-1)  # [M, H] or [B, M, H]
        if candidates.shape.rank == 2:
            scores = tf.matmul(queries, candidates, transpose_b=True)  # [B, M]
        else:
            scores = tf.einsum("bh,bmh->bm", queries, candidates)  # [B, M]
        return scores / self.temperature

    def compute_output_shape(self, input_shape):
        queries_shape, candidates_shape = input_shape
        return (queries_shape[0], candidates_shape[-2])

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


custom_objects = {
    "TokenPooling": TokenPooling,
    "WeightedPooling": WeightedPooling,
    "CosineSimilarity": CosineSimilarity,
}
