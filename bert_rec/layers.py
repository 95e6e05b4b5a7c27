"""Custom Keras layers: mask-aware token pooling, the interest layers of the user tower, the item
tower, cosine scoring.

The interest layers (``WeightedPooling``, ``AttentionPooling``, ``SequenceAttentionPooling``)
map a user's unit vectors ``[B, N, D]`` and signed unit weights ``[B, N]`` to a profile
``[B, 2, D]`` (interest, dislikes); called with ``return_attention=True`` they also return the
signed pooling weights ``[B, N]`` the explanations use. ``InterestScore`` scores items against a
profile with the cosine layer. Every layer mirrors its ``__init__`` kwargs in ``get_config`` and is registered, so models that
use them save and reload (tests/test_layers.py round-trips each one).
"""

from .backend import keras, tf


@keras.utils.register_keras_serializable(package="bert_rec")
class PaddingMask(keras.layers.Layer):
    """[B, L, H] token states + [B, L] token ids -> the states, carrying the Keras mask
    ``token_ids != 0`` (what bert4keras's token embedding gives the layers above it), so that
    transformer layers can be run on stored states (models.split_text_encoder)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs):
        return inputs[0]

    def compute_mask(self, inputs, mask=None):
        return tf.not_equal(inputs[1], 0)

    def compute_output_shape(self, input_shape):
        return input_shape[0]


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


def _pool(weights, logits=None):
    """[B, N] pooling weights over the units with weight > 0, each row summing to 1 (0 where
    no weight is positive): w / sum(w), or softmax(logits + log w) with learned logits."""
    valid = weights > 0
    if logits is None:
        positive = tf.where(valid, weights, 0.0)
        return tf.math.divide_no_nan(positive, tf.reduce_sum(positive, axis=-1, keepdims=True))
    logits = tf.where(valid, logits + tf.math.log(tf.where(valid, weights, 1.0)), -1e9)
    alpha = tf.nn.softmax(logits, axis=-1) * tf.cast(valid, logits.dtype)  # [B, N]
    return tf.math.divide_no_nan(alpha, tf.reduce_sum(alpha, axis=-1, keepdims=True))


class _InterestPooling(keras.layers.Layer):
    """The user tower's pooling: unit vectors [B, N, D] + signed unit weights [B, N]
    (+ unit features [B, N, F], used by the sequence tower) -> profile [B, 2, D].

    Row 0 of the profile is the interest, pooled over the units with weight > 0 (what the user
    liked or just used); row 1 the dislikes, pooled over the units with weight < 0; weight 0 is
    padding. Unit vectors are L2-normalised first. ``return_attention=True`` also returns the
    signed attention [B, N]: alpha_j > 0 on liked units (summing to 1), alpha_j < 0 on disliked
    ones (summing to -1), so each profile row is an exact weighted mean of unit vectors and the
    score splits exactly into one share per unit (explain.py). Subclasses learn ``logits``.
    """

    normalize_inputs = True

    def logits(self, unit_vectors, weights, features):
        """[B, N] learned scores added to log |w| (None: plain weighted mean)."""
        return None

    def attention(self, vectors, weights, features=None):
        """Signed attention [B, N] (see the class docstring)."""
        unit = tf.math.l2_normalize(vectors, axis=-1)  # [B, N, D]
        weights = tf.cast(weights, unit.dtype)  # [B, N]
        logits = self.logits(unit, weights, features)
        return _pool(weights, logits) - _pool(-weights, logits)

    def call(self, inputs, return_attention=False):
        vectors, weights = inputs[0], inputs[1]
        features = inputs[2] if len(inputs) > 2 else None
        alpha = self.attention(vectors, weights, features)  # [B, N]
        unit = tf.math.l2_normalize(vectors, axis=-1) if self.normalize_inputs else vectors
        liked = tf.einsum("bn,bnd->bd", tf.nn.relu(alpha), unit)  # [B, D]
        disliked = tf.einsum("bn,bnd->bd", tf.nn.relu(-alpha), unit)  # [B, D]
        profile = tf.stack([liked, disliked], axis=1)  # [B, 2, D]
        return (profile, alpha) if return_attention else profile

    def compute_output_shape(self, input_shape):
        vectors_shape = input_shape[0]
        return (vectors_shape[0], 2, vectors_shape[-1])


@keras.utils.register_keras_serializable(package="bert_rec")
class WeightedPooling(_InterestPooling):
    """The zero-shot user tower: the interest is the weighted mean of the liked units' unit
    vectors (w / sum w), the dislikes that of the disliked ones (|w| / sum |w|)."""

    def __init__(self, normalize_inputs=True, **kwargs):
        super().__init__(**kwargs)
        self.normalize_inputs = normalize_inputs  # False: pool the raw vectors

    def get_config(self):
        return {**super().get_config(), "normalize_inputs": self.normalize_inputs}


@keras.utils.register_keras_serializable(package="bert_rec")
class AttentionPooling(_InterestPooling):
    """Learnable attention over behaviours (the trained user tower).

    alpha_j = softmax_j(q . tanh(W v_j + b) + log |w_j|) over the liked units (w_j > 0), and
    the same over the disliked ones (w_j < 0). The prior weights (type x rating x recency x
    opinion) enter as log-priors; with q = 0, as initialised, this is exactly WeightedPooling.
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

    def logits(self, unit_vectors, weights, features):
        hidden = tf.tanh(tf.einsum("bnd,du->bnu", unit_vectors, self.kernel) + self.bias)
        return tf.einsum("bnu,u->bn", hidden, self.query)  # [B, N]

    def get_config(self):
        return {**super().get_config(), "units": self.units}


@keras.utils.register_keras_serializable(package="bert_rec")
class SequenceAttentionPooling(_InterestPooling):
    """A sequence-aware user tower: attention whose scores come from a small transformer over
    the user's units in time order.

    Each unit's state is W v_j + kind embedding + age embedding (days before the user's
    latest behaviour, log buckets) + gap embedding (time since the previous behaviour) +
    position; one self-attention block (masked to the user's units) lets every unit see the
    others in order; alpha_j = softmax(q . tanh(W_a h_j + b) + log |w_j|), as in
    AttentionPooling. The interest is still a weighted mean of the unit vectors, so the
    explanations stay exact; the sequence decides the weights. ``features`` [B, N, 3] int:
    kind, age bucket, gap bucket (units.py; 0 = padding).
    """

    def __init__(self, units=64, heads=2, kinds=8, buckets=16, max_units=512, **kwargs):
        super().__init__(**kwargs)
        if units % heads:
            raise ValueError(f"units {units} must be a multiple of heads {heads}")
        self.units, self.heads, self.kinds, self.buckets = units, heads, kinds, buckets
        self.max_units = max_units

    def build(self, input_shape):
        u, dim = self.units, input_shape[0][-1]
        dense = {"project": (dim, u), "q": (u, u), "k": (u, u), "v": (u, u), "o": (u, u),
                 "ffn1": (u, 2 * u), "ffn2": (2 * u, u)}
        self.dense = {}
        for name, (fan_in, fan_out) in dense.items():  # built here: saved models restore them
            layer = keras.layers.Dense(fan_out, activation="gelu" if name == "ffn1" else None,
                                       name=name)
            with tf.name_scope(name):  # weight names "<layer>/<name>/kernel", unique in .h5
                layer.build((None, None, fan_in))
            self.dense[name] = layer
        sizes = {"kinds": self.kinds, "ages": self.buckets, "gaps": self.buckets,
                 "positions": self.max_units}
        self.embeddings = {}
        for name, size in sizes.items():
            layer = keras.layers.Embedding(size, u, name=name)
            with tf.name_scope(name):
                layer.build((None, None))
            self.embeddings[name] = layer
        self.norms = []
        for name in ("norm1", "norm2"):
            layer = keras.layers.LayerNormalization(name=name)
            with tf.name_scope(name):
                layer.build((None, None, u))
            self.norms.append(layer)
        self.kernel = self.add_weight("kernel", (u, u), initializer="glorot_uniform")
        self.bias = self.add_weight("bias", (u,), initializer="zeros")
        self.query = self.add_weight("query", (u,), initializer="zeros")
        super().build(input_shape)

    def _self_attention(self, h, present):
        """Multi-head self-attention over a user's units [B, N, U] (padding masked)."""
        heads, b, n = self.heads, tf.shape(h)[0], tf.shape(h)[1]

        def split(x):  # [B, N, U] -> [B, heads, N, U / heads]
            return tf.transpose(tf.reshape(x, [b, n, heads, self.units // heads]), [0, 2, 1, 3])
        q, k, v = (split(self.dense[name](h)) for name in ("q", "k", "v"))
        logits = tf.einsum("bhnd,bhmd->bhnm", q, k) / (self.units // heads) ** 0.5
        mask = present[:, None, None, :]  # [B, 1, 1, N]: attend to the user's own units
        weights = tf.nn.softmax(tf.where(mask, logits, -1e9), axis=-1)  # [B, heads, N, N]
        out = tf.transpose(tf.einsum("bhnm,bhmd->bhnd", weights, v), [0, 2, 1, 3])
        return self.dense["o"](tf.reshape(out, [b, n, self.units]))  # [B, N, U]

    def logits(self, unit_vectors, weights, features):
        features = tf.cast(features, tf.int32)  # [B, N, 3]
        n = tf.shape(unit_vectors)[1]
        positions = tf.minimum(tf.range(n), self.max_units - 1)[None, :]  # [1, N]
        emb = self.embeddings
        h = (self.dense["project"](unit_vectors) + emb["kinds"](features[..., 0])
             + emb["ages"](features[..., 1]) + emb["gaps"](features[..., 2])
             + emb["positions"](positions))  # [B, N, U]
        present = tf.not_equal(weights, 0.0)  # [B, N]
        h = self.norms[0](h + self._self_attention(h, present))
        h = self.norms[1](h + self.dense["ffn2"](self.dense["ffn1"](h)))  # [B, N, U]
        hidden = tf.tanh(tf.einsum("bnu,uv->bnv", h, self.kernel) + self.bias)
        return tf.einsum("bnu,u->bn", hidden, self.query)  # [B, N]

    def get_config(self):
        return {**super().get_config(), "units": self.units, "heads": self.heads,
                "kinds": self.kinds, "buckets": self.buckets, "max_units": self.max_units}


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


@keras.utils.register_keras_serializable(package="bert_rec")
class InterestScore(keras.layers.Layer):
    """Profile [B, 2, D] (interest, dislikes) + candidates [M, D] or [B, M, D] -> [B, M] scores:

        s(x) = cos(interest, x) - dislike_weight * cos(dislikes, x)

    Both cosines come from one ``CosineSimilarity`` layer. A user without dislikes (a zero
    dislike row) gets the plain cosine. ``dislike_weight`` (>= 0) is configured zero-shot and
    learned in training. Since cos(u, x) = û·x̂, s(x) = x̂ · q with the query
    q = û - dislike_weight d̂ (:meth:`query`), so an inner-product index can retrieve by it.
    """

    def __init__(self, dislike_weight=0.5, **kwargs):
        super().__init__(**kwargs)
        self.initial_dislike_weight = float(dislike_weight)
        self.cosine = CosineSimilarity(name="cosine")

    def build(self, input_shape):
        self.dislike_weight = self.add_weight(
            "dislike_weight", (), initializer=keras.initializers.Constant(
                self.initial_dislike_weight), constraint=keras.constraints.NonNeg())
        super().build(input_shape)

    def query(self, profile):
        """[B, 2, D] -> [B, D]: the unnormalised query q (see the class docstring)."""
        return (tf.math.l2_normalize(profile[:, 0], axis=-1)
                - self.dislike_weight * tf.math.l2_normalize(profile[:, 1], axis=-1))

    def call(self, inputs):
        profile, candidates = inputs
        liked = self.cosine([profile[:, 0], candidates])  # [B, M]
        disliked = self.cosine([profile[:, 1], candidates])  # [B, M]
        return liked - self.dislike_weight * disliked

    def compute_output_shape(self, input_shape):
        profile_shape, candidates_shape = input_shape
        return (profile_shape[0], candidates_shape[-2])

    def get_config(self):
        return {**super().get_config(), "dislike_weight": self.initial_dislike_weight}


custom_objects = {
    "TokenPooling": TokenPooling,
    "WeightedPooling": WeightedPooling,
    "AttentionPooling": AttentionPooling,
    "SequenceAttentionPooling": SequenceAttentionPooling,
    "InterestScore": InterestScore,
    "ItemTower": ItemTower,
    "CosineSimilarity": CosineSimilarity,
}
