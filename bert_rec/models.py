"""The Keras models of bert_rec, built in one place.

- :func:`build_text_encoder`: ``token_ids, segment_ids -> text vector [B, H]`` (BERT + pooling).
- :func:`build_towers` -> :class:`Towers`: the item tower (``ItemTower``: encoder vector + item
  id -> scoring vector), the user tower (an interest layer over the user's unit vectors) and
  the cosine scorer, and the functional models made of them. Recommending
  (``recommend.Recommender``), training (``training.Trainer``), the ``.h5`` files and the
  TF Serving export all call these same models, so a change to the pooling or the item tower
  is made here once (``tests/test_models.py`` checks that the four agree).
- :func:`user_tower`: the trained user towers, ``attention`` or ``sequence``.
- :func:`fit_whitening` / :func:`whitened_tower`: the zero-shot item tower (BERT-whitening).
"""

import numpy as np

from .backend import keras, tf
from .config import USER_TOWERS
from .layers import (AttentionPooling, InterestScore, ItemTower, PaddingMask,
                     SequenceAttentionPooling, TokenPooling, WeightedPooling)
from .units import BUCKETS, FEATURES, TEXT_KIND

KIND_IDS = TEXT_KIND + 2  # kind ids 0..TEXT_KIND (+1 spare) for the kind embedding


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


def split_text_encoder(transformer, pooling, n):
    """The text encoder cut below its top ``n`` transformer layers (0 < n < depth):

    - ``lower``: ``token_ids, segment_ids [B, L] -> states [B, L, H]`` (embeddings and the
      frozen layers);
    - ``upper``: ``states [B, L, H], token_ids [B, L] -> vector [B, H]`` (the top ``n`` layers,
      the final layers and the pooling).

    Both share the layer objects (and so the weights) of ``transformer`` (a bert4keras BERT):
    ``upper(lower(t, s), t)`` is the full encoder, and training ``upper`` trains its layers.
    bert4keras's ``apply`` re-uses a layer it already holds by name, so rebuilding the top
    layers on a new input creates no new weights.
    """
    total = transformer.num_hidden_layers
    if not 0 < n < total:
        raise ValueError(f"split_text_encoder needs 0 < n < {total}, got {n}")
    bert = transformer.model
    cut = bert.get_layer(f"Transformer-{total - n - 1}-FeedForward-Norm").output
    lower = keras.Model(bert.inputs, cut, name="text_encoder_lower")
    states = keras.Input((None, transformer.hidden_size), name="states")
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    x = PaddingMask(name="padding_mask")([states, token_ids])
    for index in range(total - n, total):
        x = transformer.apply_main_layers(x, index)
    x = transformer.apply_final_layers(x)
    if pooling != "pooler":
        x = TokenPooling(mode=pooling, name=f"{pooling}_pooling")([x, token_ids])
    upper = keras.Model([states, token_ids], x, name="text_encoder_upper")
    return lower, upper


class Towers:
    """Item tower, user tower and scorer of one model, and the models built from them.

    Models (all functional Keras models sharing these layers):

    - ``item_projector``: ``encoder vectors [B, H], id_rows [B] -> item vectors [B, D]``;
    - ``item_encoder``: ``token_ids [B, L], segment_ids [B, L], id_rows [B] -> [B, D]`` (the
      text encoder + the item tower; only with a ``text_encoder``);
    - ``user_encoder``: ``unit_vectors [B, N, D], unit_weights [B, N] (signed),
      unit_features [B, N, 3] -> profile [B, 2, D] (interest, dislikes), attention [B, N]``
      (the signed pooling weights the explanations split the score by);
    - ``user_scorer``: ``unit_vectors, unit_weights, unit_features, candidates [B, C, D] ->
      scores [B, C]`` (``InterestScore``: cos(interest, x) - dislike_weight cos(dislikes, x)).

    ``id_rows``: the item's row in the id vocabulary, or ``num_ids`` for an item without an id
    embedding (a new item, a behaviour text).
    """

    def __init__(self, item_tower, interest, text_encoder=None, dislike_weight=0.5):
        self.item_tower = item_tower
        self.interest = interest
        self.scorer = InterestScore(dislike_weight, name="interest_score")
        dim = item_tower.output_dim
        raw = keras.Input((None,), name="encoder_vectors")
        id_rows = keras.Input((), dtype="int32", name="id_rows")
        self.item_projector = keras.Model([raw, id_rows], item_tower([raw, id_rows]),
                                          name="item_projector")
        self.item_encoder = None
        if text_encoder is not None:
            token_ids = keras.Input((None,), dtype="int32", name="token_ids")
            segment_ids = keras.Input((None,), dtype="int32", name="segment_ids")
            vector = item_tower([text_encoder([token_ids, segment_ids]), id_rows])  # [B, D]
            self.item_encoder = keras.Model([token_ids, segment_ids, id_rows], vector,
                                            name="item_encoder")
        units = [keras.Input((None, dim), name="unit_vectors"),
                 keras.Input((None,), name="unit_weights"),
                 keras.Input((None, FEATURES), dtype="int32", name="unit_features")]
        self.user_encoder = keras.Model(units, interest(units, return_attention=True),
                                        name="user_encoder")
        candidates = keras.Input((None, dim), name="candidates")
        scores = self.scorer([interest(units), candidates])  # [B, C]
        self.user_scorer = keras.Model(units + [candidates], scores, name="user_scorer")

    @property
    def num_ids(self):
        return self.item_tower.num_ids

    @property
    def dim(self):
        return self.item_tower.output_dim

    @property
    def trained(self):
        """Whether the user tower is learned (a trained model), not a weighted mean."""
        return not isinstance(self.interest, WeightedPooling)

    @property
    def dislike_weight(self):
        return float(self.scorer.dislike_weight.numpy())

    def project(self, raw, id_rows=None):
        """Encoder vectors [N, H] (numpy) -> item vectors [N, D] (id rows: None = no item id)."""
        if id_rows is None:
            id_rows = np.full(len(raw), self.num_ids, np.int32)
        return self.item_projector([tf.constant(raw, tf.float32),
                                    tf.constant(np.asarray(id_rows, np.int32))]).numpy()

    def score_units(self, table, rows, weights, features, items=None):
        """Users' units as rows [B, N] of ``table`` [T, D], signed weights [B, N] and features
        [B, N, 3] -> (attention [B, N], profile [B, 2, D], scores against ``items`` [M, D] ->
        [B, M] or None)."""
        profile, alpha = self.user_encoder([tf.constant(table[rows]), tf.constant(weights),
                                            tf.constant(features)])
        scores = None
        if items is not None:
            scores = self.scorer([profile, tf.constant(items)]).numpy()  # [B, M]
        return alpha.numpy(), profile.numpy(), scores

    def query(self, profile):
        """Profiles [B, 2, D] -> queries [B, D] with score(x) = x̂ · q (for an index)."""
        return self.scorer.query(tf.constant(profile)).numpy()


def build_towers(item_tower, interest=None, text_encoder=None, dislike_weight=0.5):
    """:class:`Towers` around an ``ItemTower`` and an interest layer (default: the zero-shot
    ``WeightedPooling``); ``text_encoder`` (``build_text_encoder``) adds ``item_encoder``."""
    if interest is None:
        interest = WeightedPooling(name="interest_pooling")
    return Towers(item_tower, interest, text_encoder, dislike_weight)


def user_tower(kind, dim, units=64, heads=2):
    """A built trained user tower: ``attention`` (AttentionPooling) or ``sequence``
    (SequenceAttentionPooling), for unit vectors of size ``dim``."""
    if kind == "attention":
        layer = AttentionPooling(units, name="interest_attention")
    elif kind == "sequence":
        layer = SequenceAttentionPooling(units, heads, kinds=KIND_IDS, buckets=BUCKETS,
                                         name="interest_sequence")
    else:
        raise ValueError(f"user tower must be one of {', '.join(USER_TOWERS)}, got {kind!r}")
    layer([np.zeros((1, 1, dim), np.float32), np.ones((1, 1), np.float32),
           np.zeros((1, 1, FEATURES), np.int32)])
    return layer


def train_top_layers(transformer, n):
    """Make only the top ``n`` transformer layers of a bert4keras Transformer trainable (all of
    them for ``n < 0`` or ``n >=`` the depth; none for 0); returns the number made trainable."""
    total = transformer.num_hidden_layers
    n = total if n < 0 else min(n, total)
    for layer in transformer.model.layers:
        name = layer.name
        layer.trainable = (n > 0 and name.startswith("Transformer-")
                           and int(name.split("-")[1]) >= total - n)
    return n


def attention_layer(units, dim):
    """A built ``AttentionPooling`` (the trained user tower) for unit vectors of size ``dim``."""
    return user_tower("attention", dim, units)


def fit_whitening(vectors, mode="whiten", dim=None):
    """(mean [H], kernel [H, D]) so that ``(x - mean) @ kernel`` is centred (and whitened).

    Whitening needs a well-conditioned covariance: with fewer than 2·H vectors it falls back to
    centring only.
    """
    vectors = np.asarray(vectors, np.float64)  # [M, H]
    mean = vectors.mean(axis=0) if len(vectors) else np.zeros(vectors.shape[1])
    hidden = vectors.shape[1]
    if mode == "none":
        return np.zeros(hidden, np.float32), np.eye(hidden, dtype=np.float32)
    if mode == "center" or len(vectors) < 2 * hidden:
        return mean.astype(np.float32), np.eye(hidden, dtype=np.float32)
    cov = np.cov((vectors - mean).T)  # [H, H]
    u, s, _ = np.linalg.svd(cov)
    kernel = u / np.sqrt(s + 1e-6 * s.max())  # [H, H]
    return mean.astype(np.float32), kernel[:, :dim].astype(np.float32)


def item_tower(hidden, output_dim, num_ids=0):
    """A built ``ItemTower`` for encoder vectors of size ``hidden``."""
    tower = ItemTower(output_dim, num_ids=num_ids, name="item_tower")
    tower([np.zeros((1, hidden), np.float32), np.zeros(1, np.int32)])  # build
    return tower


def whitened_tower(raw_items, config, num_ids=0):
    """An ItemTower whose text part is BERT-whitening fitted on items' encoder vectors [M, H]."""
    mean, kernel = fit_whitening(raw_items, config.whitening, config.whitening_dim)
    tower = item_tower(kernel.shape[0], kernel.shape[1], num_ids)
    tower.set_affine(mean, kernel)
    return tower
