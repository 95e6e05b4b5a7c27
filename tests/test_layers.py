"""Pooling and cosine layers against numpy references, and save/reload round trips."""

import numpy as np
import pytest

from bert_rec.backend import keras
from bert_rec.layers import (AttentionPooling, CosineSimilarity, InterestScore, ItemTower,
                             SequenceAttentionPooling, TokenPooling, WeightedPooling,
                             custom_objects)

RNG = np.random.default_rng(0)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_mean_pooling_ignores_padding():
    states = RNG.normal(size=(2, 5, 4)).astype(np.float32)  # [B, L, H]
    token_ids = np.array([[2, 7, 9, 3, 0], [2, 3, 0, 0, 0]], np.int32)
    got = TokenPooling("mean")([states, token_ids]).numpy()
    np.testing.assert_allclose(got[0], states[0, :4].mean(0), rtol=1e-6)
    np.testing.assert_allclose(got[1], states[1, :2].mean(0), rtol=1e-6)
    states[0, 4] += 100.0  # changing a padded position changes nothing
    np.testing.assert_allclose(TokenPooling("mean")([states, token_ids]).numpy(), got, rtol=1e-6)


def test_cls_pooling_takes_first_token():
    states = RNG.normal(size=(2, 3, 4)).astype(np.float32)
    got = TokenPooling("cls")([states, np.ones((2, 3), np.int32)]).numpy()
    np.testing.assert_array_equal(got, states[:, 0])
    with pytest.raises(ValueError, match="mean' or 'cls"):
        TokenPooling("max")


def test_weighted_pooling_matches_numpy_and_masks_zero_weights():
    vectors = RNG.normal(size=(2, 3, 4)).astype(np.float32)  # [B, N, H]
    weights = np.array([[1.0, 2.0, 0.0], [0.0, 0.0, 0.0]], np.float32)
    got = WeightedPooling()([vectors, weights]).numpy()  # [B, 2, H]
    expected = (_unit(vectors[0, :2]) * weights[0, :2, None]).sum(0) / 3.0
    np.testing.assert_allclose(got[0, 0], expected, rtol=1e-5)
    np.testing.assert_array_equal(got[0, 1], np.zeros(4))  # no dislikes
    np.testing.assert_array_equal(got[1], np.zeros((2, 4)))  # all padding -> zeros, no NaN
    raw = WeightedPooling(normalize_inputs=False)([vectors, weights]).numpy()
    np.testing.assert_allclose(raw[0, 0], (vectors[0, :2] * weights[0, :2, None]).sum(0) / 3.0,
                               rtol=1e-5)


def test_negative_weights_pool_into_the_dislike_row():
    vectors = RNG.normal(size=(1, 4, 4)).astype(np.float32)
    weights = np.array([[1.0, -2.0, 3.0, -1.0]], np.float32)
    profile, alpha = WeightedPooling()([vectors, weights], return_attention=True)
    np.testing.assert_allclose(alpha.numpy(), [[0.25, -2 / 3, 0.75, -1 / 3]], atol=1e-6)
    v = _unit(vectors[0])
    np.testing.assert_allclose(profile.numpy()[0, 0], 0.25 * v[0] + 0.75 * v[2], atol=1e-6)
    np.testing.assert_allclose(profile.numpy()[0, 1], 2 / 3 * v[1] + 1 / 3 * v[3], atol=1e-6)
    items = RNG.normal(size=(5, 4)).astype(np.float32)
    scorer = InterestScore(dislike_weight=0.7)
    got = scorer([profile, items]).numpy()
    cos = lambda a, b: _unit(a) @ _unit(b).T  # noqa: E731
    want = cos(profile.numpy()[0, :1], items) - 0.7 * cos(profile.numpy()[0, 1:], items)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # the query vector gives the same scores by inner product with unit items
    np.testing.assert_allclose(scorer.query(profile).numpy() @ _unit(items).T, got, atol=1e-5)


def test_cosine_similarity_matches_numpy_both_shapes():
    queries = RNG.normal(size=(3, 4)).astype(np.float32)
    items = RNG.normal(size=(5, 4)).astype(np.float32)
    got = CosineSimilarity()([queries, items]).numpy()
    np.testing.assert_allclose(got, _unit(queries) @ _unit(items).T, rtol=1e-5, atol=1e-6)
    per_user = RNG.normal(size=(3, 2, 4)).astype(np.float32)
    got = CosineSimilarity(temperature=0.1)([queries, per_user]).numpy()
    expected = np.einsum("bh,bmh->bm", _unit(queries), _unit(per_user)) / 0.1
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", ["h5", "tf"])
def test_layers_round_trip_through_saved_models(tmp_path, fmt):
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    states = keras.layers.Embedding(20, 4, name="emb")(token_ids)  # [B, L, H]
    vector = TokenPooling("mean", name="pool")([states, token_ids])  # [B, H]
    weights = keras.Input((3,), name="weights")
    features = keras.Input((3, 3), dtype="int32", name="features")
    behaviors = keras.Input((3, 4), name="behaviors")
    interest = WeightedPooling(name="interest")([behaviors, weights])
    sequence = SequenceAttentionPooling(8, 2, name="sequence")([behaviors, weights, features])
    candidates = keras.layers.Reshape((1, 4))(vector)
    score = CosineSimilarity(temperature=0.5, name="cos")([interest[:, 0], candidates])
    signed = InterestScore(0.3, name="signed")([sequence, candidates])
    model = keras.Model([token_ids, behaviors, weights, features], [score, signed])
    model.get_layer("sequence").query.assign(RNG.normal(size=8).astype(np.float32))
    x = [np.array([[2, 5, 3, 0]], np.int32), RNG.normal(size=(1, 3, 4)).astype(np.float32),
         np.array([[1.0, -0.5, 2.0]], np.float32), np.array([[[1, 2, 3], [2, 1, 1], [4, 1, 1]]])]
    path = str(tmp_path / ("m.h5" if fmt == "h5" else "m"))
    model.save(path, save_format=fmt)
    loaded = keras.models.load_model(path, custom_objects=custom_objects)
    for got, want in zip(loaded.predict(x, verbose=0), model.predict(x, verbose=0)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    for layer in ("pool", "interest", "cos", "sequence", "signed"):
        assert loaded.get_layer(layer).get_config() == model.get_layer(layer).get_config()


def test_attention_pooling_starts_as_weighted_pooling_and_matches_numpy():
    vectors = RNG.normal(size=(2, 4, 6)).astype(np.float32)
    weights = np.array([[1.0, 2.0, 0.5, 0.0], [3.0, 0.0, 0.0, 0.0]], np.float32)
    layer = AttentionPooling(units=5)
    np.testing.assert_allclose(layer([vectors, weights]).numpy(),
                               WeightedPooling()([vectors, weights]).numpy(), atol=1e-6)
    sequence = SequenceAttentionPooling(units=8)
    features = np.ones((2, 4, 3), np.int32)
    np.testing.assert_allclose(sequence([vectors, weights, features]).numpy(),
                               WeightedPooling()([vectors, weights]).numpy(), atol=1e-6)
    layer.query.assign(RNG.normal(size=5).astype(np.float32))
    v = _unit(vectors)
    logits = np.tanh(v @ layer.kernel.numpy() + layer.bias.numpy()) @ layer.query.numpy()
    logits = np.where(weights > 0, logits + np.log(np.where(weights > 0, weights, 1)), -np.inf)
    alpha = np.exp(logits - logits.max(1, keepdims=True))
    alpha /= alpha.sum(1, keepdims=True)
    np.testing.assert_allclose(layer.attention(vectors, weights).numpy(), alpha, atol=1e-6)
    np.testing.assert_allclose(layer([vectors, weights]).numpy()[:, 0],
                               np.einsum("bn,bnd->bd", alpha, v), atol=1e-6)


def test_sequence_tower_sees_the_order():
    """The same units in another order (or at other ages) get other attention weights."""
    layer = SequenceAttentionPooling(units=8, heads=2)
    vectors = RNG.normal(size=(1, 4, 6)).astype(np.float32)
    weights = np.ones((1, 4), np.float32)
    features = np.array([[[1, 5, 1], [2, 4, 3], [4, 2, 2], [1, 1, 1]]], np.int32)
    layer([vectors, weights, features])
    layer.query.assign(RNG.normal(size=8).astype(np.float32))
    alpha = layer.attention(vectors, weights, features).numpy()
    reversed_order = layer.attention(vectors[:, ::-1], weights, features[:, ::-1]).numpy()
    assert not np.allclose(alpha[0], reversed_order[0, ::-1], atol=1e-4)
    older = features.copy()
    older[..., 1] += 3
    assert not np.allclose(alpha, layer.attention(vectors, weights, older).numpy(), atol=1e-4)
    np.testing.assert_allclose(alpha.sum(), 1.0, atol=1e-6)


def test_item_tower_adds_id_embeddings_only_for_known_ids():
    raw = RNG.normal(size=(3, 4)).astype(np.float32)
    tower = ItemTower(2, num_ids=2)
    tower([raw, np.array([0, 1, 2], np.int32)])
    kernel = RNG.normal(size=(4, 2)).astype(np.float32)
    mean = raw.mean(0)
    tower.set_affine(mean, kernel)
    tower.id_embeddings.assign(np.array([[1.0, 0.0], [0.0, 1.0]], np.float32))
    got = tower([raw, np.array([0, 1, 2], np.int32)]).numpy()
    text = (raw - mean) @ kernel
    np.testing.assert_allclose(got, text + np.array([[1, 0], [0, 1], [0, 0]]), atol=1e-5)
    config = tower.get_config()
    assert ItemTower.from_config(config).get_config() == config
    config = AttentionPooling(units=3).get_config()
    assert AttentionPooling.from_config(config).get_config() == config
