"""models.build_towers: the one builder whose models recommend, train, the .h5 files and the
SavedModel export all call, and a check that the four agree."""

import os
import sys

import numpy as np
import pytest

from bert_rec.backend import keras, tf
from bert_rec.config import TrainConfig
from bert_rec.data import Behavior
from bert_rec.export import ServingModule
from bert_rec.model_dir import custom_objects, load_keras_models, save_keras_models
from bert_rec.models import Towers, attention_layer, build_towers, item_tower
from bert_rec.recommend import Recommender
from bert_rec.training import Trainer
from bert_rec.units import pad_units

sys.path.insert(0, os.path.dirname(__file__))
from test_training import _dataset  # noqa: E402


def test_towers_models_share_their_layers():
    towers = build_towers(item_tower(8, 8, num_ids=3), attention_layer(4, 8))
    assert isinstance(towers, Towers) and towers.trained and towers.num_ids == 3
    assert towers.item_encoder is None  # no text encoder given
    rng = np.random.default_rng(0)
    towers.item_tower.set_weights([rng.normal(size=(8, 8)), rng.normal(size=8),
                                   rng.normal(size=(3, 8))])
    raw = rng.normal(size=(5, 8)).astype(np.float32)
    projected = towers.project(raw, [0, 1, 2, 3, 3])  # rows 3, 4: no id embedding
    direct = raw @ towers.item_tower.kernel.numpy() + towers.item_tower.bias.numpy()
    np.testing.assert_allclose(projected[3:], direct[3:], atol=1e-5)
    np.testing.assert_allclose(projected[:3], direct[:3] + towers.item_tower.id_embeddings
                               .numpy(), atol=1e-5)
    units = rng.normal(size=(2, 4, 8)).astype(np.float32)
    weights = np.array([[1, 2, 0, 0], [1, 1, -1, 3]], np.float32)
    features = np.ones((2, 4, 3), np.int32)
    profile, alpha = towers.user_encoder([units, weights, features])
    alpha = alpha.numpy()
    np.testing.assert_allclose(alpha[0].sum(), 1, atol=1e-6)
    np.testing.assert_allclose(alpha[1][alpha[1] > 0].sum(), 1, atol=1e-6)
    np.testing.assert_allclose(alpha[1, 2], -1, atol=1e-6)  # the one disliked unit
    assert (alpha[0, 2:] == 0).all()  # padding gets no attention
    candidates = np.broadcast_to(projected, (2,) + projected.shape)
    scores = towers.user_scorer([units, weights, features, candidates]).numpy()
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
    profile = profile.numpy()
    want = unit(profile[:, 0]) @ unit(projected).T
    disliked = np.nan_to_num(unit(profile[:, 1])) @ unit(projected).T
    np.testing.assert_allclose(scores, want - towers.dislike_weight * disliked, atol=1e-5)
    np.testing.assert_allclose(disliked[0], 0)  # no dislikes, plain cosine


@pytest.fixture(scope="module", params=["attention", "sequence"])
def trainer(tiny_ckpt, request):
    items, histories = _dataset()
    for n, user in enumerate(sorted(histories)):  # every other user rated the off-topic item 1
        if n % 2 == 0:
            off = histories[user][3]
            rated = Behavior(user, off.item_id, "rate", off.timestamp + 1, rating=1.0)
            histories[user] = histories[user][:4] + [rated] + histories[user][4:]
    base = Recommender.load(tiny_ckpt, zero_shot=True)
    trainer = Trainer(base, items, histories, TrainConfig(epochs=1, batch_size=8,
                                                          extra_negatives=4, k=5,
                                                          user_tower=request.param))
    rng = np.random.default_rng(1)  # a learned-looking attention and id embeddings
    attention = trainer.towers.interest
    attention.query.assign(rng.normal(size=attention.query.shape).astype(np.float32))
    ids = trainer.towers.item_tower.id_embeddings
    ids.assign(0.3 * rng.normal(size=ids.shape).astype(np.float32))
    return trainer, items, histories


def test_recommend_train_h5_and_savedmodel_score_alike(trainer, tmp_path):
    trainer, items, histories = trainer
    rec = trainer.recommender().index_items(items, raw=trainer.encode_rows(items_only=True))
    examples = trainer.examples[:6]
    want = rec.score([ex.history for ex in examples])  # [6, M], through Recommender
    assert any((u.weights < 0).any() for u in trainer.data.units[:6])  # dislikes included

    # 1. the training step's path: unit-table rows -> item tower -> user tower -> cosine
    rows, weights, features = pad_units([trainer.data.units[i] for i in range(6)])
    units = trainer._vectors(tf.constant(rows), False)
    profile, _ = trainer.towers.user_encoder([units, tf.constant(weights), features])
    all_items = trainer._vectors(tf.range(len(items)), False)
    np.testing.assert_allclose(trainer.towers.scorer([profile, all_items]).numpy(), want,
                               atol=1e-5)

    # 2. the .h5 files, reloaded with plain tf_keras
    save_keras_models(trainer.towers, str(tmp_path))
    item_encoder, user_scorer = load_keras_models(str(tmp_path))
    table = trainer.towers.project(trainer.encode_rows(), trainer.data.id_rows)
    candidates = np.broadcast_to(table[:len(items)], (6, len(items), table.shape[1]))
    np.testing.assert_allclose(user_scorer.predict([table[rows], weights, features, candidates],
                                                   verbose=0), want, atol=1e-5)
    tokens = trainer.data.tokens[:4, :trainer.data.lengths[:4].max()]
    got = item_encoder.predict([tokens, np.zeros_like(tokens), trainer.data.id_rows[:4]],
                               verbose=0)
    np.testing.assert_allclose(got, rec.catalogue.vectors[:4], atol=1e-5)

    # 3. the SavedModel's score signature (units given by item id; texts encoded in the graph)
    module = ServingModule(rec.towers, [i.item_id for i in items], rec.catalogue.vectors)
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures=module.signatures())
    served = tf.saved_model.load(str(tmp_path / "sm")).signatures["score"]
    ids = np.full(rows.shape, "", dtype=object)
    token_ids = np.zeros(rows.shape + (trainer.data.tokens.shape[1],), np.int32)
    for (b, n), row in np.ndenumerate(rows):
        if weights[b, n] != 0:
            if row < len(items):
                ids[b, n] = items[row].item_id
            token_ids[b, n] = trainer.data.tokens[row]
    out = served(behavior_token_ids=tf.constant(token_ids),
                 behavior_item_ids=tf.constant(ids.astype(bytes)),
                 behavior_weights=tf.constant(weights),
                 behavior_features=tf.constant(features),
                 candidate_item_ids=tf.constant(np.array([[i.item_id for i in items]] * 6,
                                                         dtype=bytes)))
    np.testing.assert_allclose(out["scores"].numpy(), want, atol=1e-5)


def test_keras_models_load_with_the_custom_objects(trainer, tmp_path):
    trainer, _, _ = trainer
    save_keras_models(trainer.towers, str(tmp_path))
    model = keras.models.load_model(str(tmp_path / "user_scorer.h5"),
                                    custom_objects=custom_objects, compile=False)
    kind = type(trainer.towers.interest).__name__
    assert [layer.__class__.__name__ for layer in model.layers].count(kind) == 1
    with pytest.raises(ValueError, match="missing"):
        load_keras_models(str(tmp_path / "nowhere"))
