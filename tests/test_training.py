"""Fine-tuning: the split, loss going down, resume, saved models, encoder fine-tuning."""

import json

import numpy as np
import pytest

from bert_rec.data import Behavior, Item
from bert_rec.recommend import Recommender
from bert_rec.training import (Trainer, batching_for, epoch_order, split_for_training, train,
                               training_batch, user_items)
from bert_rec.config import TrainConfig

TOPICS = {
    "food": ["红烧肉", "家常菜", "美食", "做法", "好吃"],
    "ball": ["篮球", "比赛", "精彩", "集锦", "球星"],
    "pets": ["小猫", "小狗", "萌宠", "日常", "可爱"],
    "tech": ["手机", "数码", "评测", "电脑", "相机"],
}


def _dataset(n_users=16, per_user=7, seed=0):
    """Items in four topics; each simulated user sticks to one topic (plus a little noise)."""
    rng = np.random.default_rng(seed)
    items = []
    for topic, words in TOPICS.items():
        for i in range(6):
            picked = rng.choice(words, 3, replace=False)
            items.append(Item(f"{topic}{i}", " ".join(picked), category=topic))
    histories = {}
    for u in range(n_users):
        topic = list(TOPICS)[u % 4]
        pool = [it.item_id for it in items if it.category == topic]
        order = rng.permutation(pool)[:per_user - 1].tolist()
        order.insert(3, items[rng.integers(len(items))].item_id)  # one off-topic item
        user = f"u{u}"
        histories[user] = [Behavior(user, item, "click" if j % 2 else "view", 1e9 + 3600 * j,
                                    text="好看" if j == 2 else "")
                           for j, item in enumerate(order)]
    return items, histories


def _b(user, item, t):
    return Behavior(user, item, "view", float(t))


def test_split_keeps_test_and_validation_targets_out_of_training():
    history = {"u": [_b("u", "a", 1), _b("u", "b", 2), _b("u", "a", 3), _b("u", "c", 4),
                     _b("u", "d", 5), _b("u", "c", 6)],
               "short": [_b("short", "a", 1), _b("short", "a", 2)]}
    examples, val, test, skipped = split_for_training(history)
    assert skipped == 1
    assert [(c.user_id, c.target) for c in test] == [("u", "d")]
    assert [(c.user_id, c.target) for c in val] == [("u", "c")]
    assert [(e.target, [b.item_id for b in e.history]) for e in examples] == [
        ("b", ["a"])]  # a's re-view at t=3 is not a new item; c and d are held out
    for e in examples:
        assert all(b.item_id not in ("c", "d") for b in e.history)


@pytest.fixture(scope="module")
def data():
    return _dataset()


def _config(**kw):
    return TrainConfig(**{"epochs": 3, "batch_size": 16, "extra_negatives": 8, "patience": 10,
                          "learning_rate": 1e-2, "k": 5, **kw})


def test_training_lowers_the_loss_and_saves_a_loadable_model(tiny_ckpt, data, tmp_path):
    items, histories = data
    out = str(tmp_path / "model")
    history, rec = train(tiny_ckpt, items, histories, out, _config(epochs=4))
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["loss"] < history[0]["loss"]
    saved = json.load(open(f"{out}/training/history.json", encoding="utf-8"))
    assert saved == history
    loaded = Recommender.load(out).index_items(items)
    assert loaded.trained and len(loaded.id_vocab) == len(items)
    users = [histories[u] for u in sorted(histories)[:5]]
    np.testing.assert_allclose(loaded.score(users), rec.score(users), atol=1e-5)
    # the zero-shot form of the same directory ignores the trained head
    zero = Recommender.load(out, zero_shot=True).index_items(items)
    assert not zero.trained


def test_resume_continues_and_ends_where_an_uninterrupted_run_ends(tiny_ckpt, data, tmp_path):
    items, histories = data
    full, _ = train(tiny_ckpt, items, histories, str(tmp_path / "full"), _config(epochs=4))
    out = str(tmp_path / "resumed")
    first, _ = train(tiny_ckpt, items, histories, out, _config(epochs=2))
    with pytest.raises(ValueError, match="pass --resume"):
        train(tiny_ckpt, items, histories, out, _config(epochs=4))
    resumed, _ = train(tiny_ckpt, items, histories, out, _config(epochs=4), resume=True)
    assert [h["epoch"] for h in resumed] == [1, 2, 3, 4]
    assert resumed[:2] == first
    for a, b in zip(full, resumed):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["val_ndcg"] == pytest.approx(b["val_ndcg"], abs=1e-6)
    with pytest.raises(ValueError, match="no training state to resume"):
        train(tiny_ckpt, items, histories, str(tmp_path / "new"), _config(), resume=True)


def test_click_objective_and_top_layer_fine_tuning(tiny_ckpt, data, tmp_path):
    items, histories = data
    base = Recommender.load(tiny_ckpt, zero_shot=True)
    before = [w.copy() for w in base.encoder.transformer.model.get_weights()]
    trainer = Trainer(base, items, histories, _config(objective="both", train_layers=1))
    history = trainer.fit(str(tmp_path / "ft"))
    assert all(np.isfinite(h["loss"]) for h in history)
    after = base.encoder.transformer.model.get_weights()
    changed = [not np.array_equal(a, b) for a, b in zip(before, after)]
    assert any(changed) and not all(changed)  # top layer trained, embeddings frozen
    layer0 = base.encoder.transformer.layers["Transformer-0-FeedForward"].get_weights()[0]
    layer1 = base.encoder.transformer.layers["Transformer-1-FeedForward"].get_weights()[0]
    reloaded = Recommender.load(tiny_ckpt, zero_shot=True).encoder.transformer
    np.testing.assert_array_equal(layer0, reloaded.layers["Transformer-0-FeedForward"]
                                  .get_weights()[0])
    assert not np.array_equal(layer1, reloaded.layers["Transformer-1-FeedForward"]
                              .get_weights()[0])


def _count_encodes(monkeypatch, encoder):
    calls = []
    original = encoder.encode

    def counting(texts, **kwargs):
        calls.append(len(list(texts)))
        return original(texts, **kwargs)
    monkeypatch.setattr(encoder, "encode", counting)
    return calls


def test_validation_encodes_each_text_once_per_epoch(tiny_ckpt, data, monkeypatch):
    """Defect: with trained layers, validation encoded the behaviour texts twice and threw one
    result away."""
    items, histories = data
    base = Recommender.load(tiny_ckpt, zero_shot=True)
    trainer = Trainer(base, items, histories, _config(train_layers=1))
    calls = _count_encodes(monkeypatch, base.encoder)
    trainer.validate(trainer.val_cases)
    assert calls == [len(items), len(trainer.data.distinct_texts)]


def test_training_does_not_encode_the_catalogue_again(tiny_ckpt, data, tmp_path, monkeypatch):
    """Defect: train() re-encoded the whole catalogue although the raw table held it."""
    items, histories = data
    counted = []
    original_init = Trainer.__init__

    def init(self, rec, *args, **kwargs):
        original_init(self, rec, *args, **kwargs)
        counted.append(_count_encodes(monkeypatch, rec.encoder))  # after the trainer's own
    monkeypatch.setattr(Trainer, "__init__", init)
    monkeypatch.setattr(Trainer, "fit", lambda self, out, resume=False: [
        {"epoch": 1, "val_ndcg": 0.0, "val_hr": 0.0}])
    train(tiny_ckpt, items, histories, str(tmp_path / "m"), _config(epochs=1))
    assert counted == [[]]  # the frozen encoder's item vectors came from the raw table


def test_user_batching_keeps_each_users_examples_together(data):
    items, histories = data
    examples = split_for_training(histories)[0]
    users = [ex.user_id for ex in examples]
    for seed, epoch in ((0, 0), (0, 1), (3, 0)):
        order = epoch_order(examples, seed, epoch, "user")
        assert sorted(order.tolist()) == list(range(len(examples)))  # a permutation
        runs = [users[i] for i in order]
        # each user's examples form one run: the user changes once per user
        changes = sum(a != b for a, b in zip(runs, runs[1:]))
        assert changes == len(set(users)) - 1
        np.testing.assert_array_equal(order, epoch_order(examples, seed, epoch, "user"))
    assert not np.array_equal(epoch_order(examples, 0, 0, "user"),
                              epoch_order(examples, 0, 1, "user"))
    shuffled = [users[i] for i in epoch_order(examples, 0, 0, "random")]
    assert sum(a != b for a, b in zip(shuffled, shuffled[1:])) > len(set(users))
    # random batching is the order training used before the option existed
    np.testing.assert_array_equal(epoch_order(examples, 5, 2, "random"),
                                  np.random.default_rng([5, 2]).permutation(len(examples)))


def test_a_users_own_items_are_never_their_negatives(tiny_ckpt, data):
    """The softmax masks, per example, its history's items and the targets of the same user's
    other examples (which a batch of one user's examples holds), never its own target."""
    items, histories = data
    trainer = Trainer(Recommender.load(tiny_ckpt, zero_shot=True), items, histories,
                      _config(batch_size=8))
    rows, examples = trainer.data.item_rows, trainer.examples
    own = user_items(examples, rows)
    for ex, masked in zip(examples, own):
        later = {rows[e.target] for e in examples if e.user_id == ex.user_id} - {rows[ex.target]}
        assert set(masked.tolist()) == {rows[b.item_id] for b in ex.history} | later
    order = epoch_order(examples, 0, 0, "user")
    indices = order[:8]
    batch = training_batch(trainer.data, indices, np.random.default_rng(0), len(items), 8)
    cand, pos, mask = batch[3], batch[4], batch[5]
    for b, i in enumerate(indices):
        assert cand[pos[b]] == rows[examples[i].target] and not mask[b, pos[b]]
        np.testing.assert_array_equal(mask[b], np.isin(cand, own[i]))
        same_user = [cand[pos[c]] for c, j in enumerate(indices)
                     if examples[j].user_id == examples[i].user_id and c != b
                     and examples[j].target != examples[i].target]
        assert all(mask[b, np.searchsorted(cand, t)] for t in same_user)


def test_auto_batching_groups_users_only_when_encoder_layers_train(tiny_ckpt, data,
                                                                    monkeypatch):
    items, histories = data
    assert TrainConfig().batching == "auto"
    assert batching_for(_config(batching="user"), False) == "user"
    assert batching_for(_config(batching="random"), True) == "random"
    from bert_rec import training  # noqa: PLC0415
    used = []
    original = training.epoch_order
    monkeypatch.setattr(training, "epoch_order", lambda examples, seed, epoch, batching: (
        used.append(batching) or original(examples, seed, epoch, batching)))
    rec = Recommender.load(tiny_ckpt, zero_shot=True)
    for layers in (0, 1):  # what an epoch of the trainer orders its examples by
        Trainer(rec, items, histories, _config(train_layers=layers))._epoch(0)  # noqa: SLF001
    assert used == ["random", "user"]


def test_config_is_validated():
    with pytest.raises(ValueError, match="batching"):
        TrainConfig(batching="by-user")
    with pytest.raises(ValueError, match="objective"):
        TrainConfig(objective="regression")
    with pytest.raises(ValueError, match="epochs"):
        TrainConfig(epochs=0)


@pytest.mark.parametrize("dtype, atol", [("float32", 1e-5), ("float16", 2e-2)])
def test_stored_frozen_states_give_the_full_encoder_and_its_gradients(tiny_ckpt, data, dtype,
                                                                      atol):
    """--train-layers N below the depth runs only the trained layers, on the frozen layers'
    stored token states: the vectors and the encoder gradients are those of the full encoder
    (float16 storage within its rounding)."""
    items, histories = data
    import tensorflow as tf

    def run(frozen_states):
        base = Recommender.load(tiny_ckpt, zero_shot=True)
        trainer = Trainer(base, items, histories,
                          _config(train_layers=1, frozen_states=frozen_states))
        rows = tf.constant(np.arange(len(trainer.data.lengths), dtype=np.int32)[::-1].copy())
        with tf.GradientTape() as tape:
            vectors = trainer._raw(rows, training=False)
            loss = tf.reduce_sum(tf.square(vectors))
        grads = tape.gradient(loss, trainer.encoder_variables)
        few = trainer._raw(tf.constant([3, 1, 3], tf.int32), training=False)  # < 4 buckets
        np.testing.assert_allclose(few.numpy(), vectors.numpy()[::-1][[3, 1, 3]], atol=1e-5)
        return trainer, vectors.numpy(), [g.numpy() for g in grads if g is not None]

    full_trainer, full, full_grads = run("off")
    stored_trainer, stored, stored_grads = run(dtype)
    assert full_trainer.stored is None and stored_trainer.stored is not None
    assert stored_trainer.stored.states.dtype == dtype
    assert len(stored_grads) == len(full_grads) > 0
    np.testing.assert_allclose(stored, full, atol=atol)
    for a, b in zip(stored_grads, full_grads):
        np.testing.assert_allclose(a, b, atol=atol * max(1.0, float(np.abs(b).max())))


def test_frozen_states_are_skipped_when_every_layer_trains(tiny_ckpt, data):
    items, histories = data
    trainer = Trainer(Recommender.load(tiny_ckpt, zero_shot=True), items, histories,
                      _config(train_layers=2))  # the tiny checkpoint's depth
    assert trainer.stored is None and trainer.encoder_variables


def _cosines(a, b):
    a, b = np.reshape(a, (len(a), -1)), np.reshape(b, (len(b), -1))
    return np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_bfloat16_training_steps_in_bfloat16_and_saves_the_trained_float32_twin(
        tiny_ckpt, data, tmp_path):
    """--precision bfloat16: the trained layers compute in bfloat16 on the stored states, with
    vectors and encoder gradients those of float32 up to bfloat16 rounding; the saved model is
    float32 and holds exactly the trained weights (it reloads to the returned model's scores)."""
    items, histories = data
    import tensorflow as tf

    def run(precision):
        base = Recommender.load(tiny_ckpt, zero_shot=True, precision=precision)
        trainer = Trainer(base, items, histories, _config(train_layers=1, precision=precision))
        rows = tf.constant(np.arange(len(trainer.data.lengths), dtype=np.int32))
        with tf.GradientTape() as tape:
            vectors = trainer._raw(rows, training=False)
            loss = tf.reduce_sum(tf.square(vectors))
        grads = tape.gradient(loss, trainer.encoder_variables)
        return trainer, vectors, [g.numpy() for g in grads]

    _, full, full_grads = run("float32")
    low_trainer, low, low_grads = run("bfloat16")
    assert low.dtype == tf.float32 and low_trainer.stored is not None
    assert {layer.compute_dtype for layer in low_trainer.stored.upper.layers
            if layer.name.startswith("Transformer-1-")} == {"bfloat16"}
    assert _cosines(low.numpy(), full.numpy()).min() > 0.999
    assert len(low_grads) == len(full_grads) > 0
    assert all(g.dtype == np.float32 for g in low_grads)  # float32 master weights
    largest = max(np.linalg.norm(g) for g in full_grads)
    for a, b in zip(low_grads, full_grads):
        if np.linalg.norm(b) > 1e-6 * largest:
            assert _cosines(a.reshape(1, -1), b.reshape(1, -1))[0] > 0.999
        else:  # a gradient that is 0 in exact arithmetic (the key bias): rounding noise only
            assert np.linalg.norm(a) < 1e-5 * largest

    out = str(tmp_path / "bf16")
    _, rec = train(tiny_ckpt, items, histories, out,
                   _config(epochs=2, train_layers=1, precision="bfloat16"))
    assert rec.encoder.precision == "float32"
    loaded = Recommender.load(out).index_items(items)
    users = [histories[u] for u in sorted(histories)[:5]]
    np.testing.assert_allclose(loaded.score(users), rec.score(users), atol=1e-5)
    pretrained = Recommender.load(tiny_ckpt).encoder.transformer.layers
    saved = loaded.encoder.transformer.layers
    for name, moved in (("Transformer-0-FeedForward", False), ("Transformer-1-FeedForward", True)):
        same = np.array_equal(saved[name].get_weights()[0], pretrained[name].get_weights()[0])
        assert same != moved, name
