"""Custom Keras layers: mask-aware token pooling, the interest layers of the user tower, the item
tower, cosine scoring.

The interest layers (``WeightedPooling``, ``AttentionPooling``) map a user's unit vectors
``[B, N, D]`` and unit weights ``[B, N]`` to the interest ``[B, D]``; called with
``return_attention=True`` they also return the pooling weights ``[B, N]`` the explanations use.
Every layer mirrors its ``__init__`` kwargs in ``get_config`` and is registered, so models that
use them save and reload (tests/test_layers.py round-trips each one).
"""

from .backend import keras, tf


class _Pooling(keras.layers.Layer):
    """A layer pooling [B, N, H] (+ side inputs) into [B, H]."""

    def compute_output_shape(self, input_shape):
        vectors_shape = input_shape[0]
        return (vectors_shape[0], vectors_shape[-1])


@keras.utils.register_keras_serializable(package="bert_rec")
class TokenPooling(_Pooling):
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

    def get_config(self):
        return {**super().get_config(), "mode": self.mode}


@keras.utils.register_keras_serializable(package="bert_rec")
class WeightedPooling(_Pooling):
    """[B, N, H] behaviour vectors + [B, N] weights -> [B, H] user interest vector.

    Each behaviour vector is L2-normalised first (so a long review doesn't outweigh a click by
    its norm), then averaged with the weights; weight 0 marks padding and is ignored. A user with
    all-zero weights gets the zero vector.
    """

    def __init__(self, normalize_inputs=True, **kwargs):
        super().__init__(**kwargs)
        self.normalize_inputs = normalize_inputs

    def attention(self, vectors, weights):
        """[B, N] pooling weights: w / sum(w) (0 for padding)."""
        weights = tf.cast(weights, vectors.dtype)
        return tf.math.divide_no_nan(weights, tf.reduce_sum(weights, axis=1, keepdims=True))

    def call(self, inputs, return_attention=False):
        vectors, weights = inputs
        if self.normalize_inputs:
            vectors = tf.math.l2_normalize(vectors, axis=-1)  # [B, N, H]
        weights = tf.cast(weights, vectors.dtype)  # [B, N]
        total = tf.reduce_sum(vectors * weights[:, :, None], axis=1)  # [B, H]
        norm = tf.reduce_sum(weights, axis=1, keepdims=True)  # [B, 1]
        interest = tf.math.divide_no_nan(total, norm)  # [B, H]
        if return_attention:
            return interest, self.attention(vectors, weights)
        return interest

    def get_config(self):
        return {**super().get_config(), "normalize_inputs": self.normalize_inputs}


@keras.utils.register_keras_serializable(package="bert_rec")
class AttentionPooling(_Pooling):
    """Learnable attention over behaviours: [B, N, D] vectors + [B, N] prior weights -> [B, D].

    alpha_j = softmax_j(q . tanh(W v_j + b) + log w_j) over the behaviours with w_j > 0, then
    the interest is sum_j alpha_j v_j (unit v_j). The prior weights (type x rating x recency)
    enter as log-priors; with q = 0, as initialised, this is exactly WeightedPooling.
    """

    def __init__(self, units=64, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        dim = input_shape[0][-1]
        self.kernel = self.add_weight("kernel", (dim, self.units), initializer="glorot_uniform")
        self.bias = self.add_weight("bias", (self.units,), initializer="zeros")
        self.query = self.add_weight("query", (self.units,), initializer="zeros")
        super().build(input_shape)

    def attention(self, vectors, weights):
        """[B, N] attention weights (rows sum to 1 where any weight > 0, padding gets 0)."""
        vectors = tf.math.l2_normalize(vectors, axis=-1)  # [B, N, D]
        weights = tf.cast(weights, vectors.dtype)  # [B, N]
        hidden = tf.tanh(tf.einsum("bnd,du->bnu", vectors, self.kernel) + self.bias)  # [B, N, U]
        logits = tf.einsum("bnu,u->bn", hidden, self.query)  # [B, N]
        valid = weights > 0
        logits = tf.where(valid, logits + tf.math.log(tf.where(valid, weights, 1.0)), -1e9)
        alpha = tf.nn.softmax(logits, axis=-1) * tf.cast(valid, vectors.dtype)  # [B, N]
        return tf.math.divide_no_nan(alpha, tf.reduce_sum(alpha, axis=-1, keepdims=True))

    def call(self, inputs, return_attention=False):
        vectors, weights = inputs
        alpha = self.attention(vectors, weights)  # [B, N]
        interest = tf.einsum("bn,bnd->bd", alpha, tf.math.l2_normalize(vectors, axis=-1))
        return (interest, alpha) if return_attention else interest  # [B, D] (, [B, N])

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.utils.register_keras_serializable(package="bert_rec")
class ItemTower(keras.layers.Layer):
    """Encoder vectors [U, H] + id rows [U] -> scoring vectors [U, D].

    An affine map of the text vector (initialised to BERT-whitening, so training starts from
    the zero-shot model) plus a learned item-id embedding: co-clicks shape a warm item's vector,
    while an item without an id (row ``num_ids``: new items, behaviour texts) keeps its text
    vector alone.
    """

    def __init__(self, output_dim, num_ids=0, **kwargs):
        super().__init__(**kwargs)
        self.output_dim = output_dim
        self.num_ids = num_ids

    def build(self, input_shape):
        dim = input_shape[0][-1]
        self.kernel = self.add_weight("kernel", (dim, self.output_dim), initializer="identity"
                                      if dim == self.output_dim else "glorot_uniform")
        self.bias = self.add_weight("bias", (self.output_dim,), initializer="zeros")
        self.id_embeddings = self.add_weight("id_embeddings", (self.num_ids, self.output_dim),
                                             initializer="zeros")
        super().build(input_shape)

    def set_affine(self, mean, kernel):
        """Make the text part ``(x - mean) @ kernel`` (BERT-whitening)."""
        self.kernel.assign(kernel)
        self.bias.assign(-mean @ kernel)

    def call(self, inputs):
        raw, id_rows = inputs
        text = tf.matmul(raw, self.kernel) + self.bias  # [U, D]
        if not self.num_ids:
            return text
        known = id_rows < self.num_ids  # [U]
        ids = tf.gather(self.id_embeddings, tf.where(known, id_rows, 0))  # [U, D]
        return text + ids * tf.cast(known, text.dtype)[..., None]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:-1]) + (self.output_dim,)

    def get_config(self):
        return {**super().get_config(), "output_dim": self.output_dim, "num_ids": self.num_ids}


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
    "AttentionPooling": AttentionPooling,
    "ItemTower": ItemTower,
    "CosineSimilarity": CosineSimilarity,
}
