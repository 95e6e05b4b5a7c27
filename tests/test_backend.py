"""Each bert4keras compatibility fix in bert_rec.backend, with a test that fails without it."""

import os
import subprocess
import sys

import numpy as np
import pytest

from bert_rec import backend
from bert_rec.backend import build_transformer_model, keras, tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=32, hidden_act="gelu", max_position_embeddings=32)


def _run(code):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TF_USE_LEGACY_KERAS", None)
    env.pop("TF_KERAS", None)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("first", ["import keras", "import tensorflow as tf; tf.keras.layers",
                                   "pass"])
def test_import_works_whatever_was_imported_first(first):
    """Fix 1: bert4keras gets tf_keras even after Keras 3 / tf.keras; the user's keras stays."""
    code = f"""{first}
import sys
before = sys.modules.get("keras")
from bert_rec.backend import build_transformer_model, keras
m = build_transformer_model(vocab_size=40, hidden_size=16, num_hidden_layers=1,
    num_attention_heads=2, intermediate_size=32, hidden_act="gelu", max_position_embeddings=32)
import numpy as np
x = [np.array([[2, 5, 3]]), np.zeros((1, 3), np.int32)]
assert m.predict(x, verbose=0).shape == (1, 3, 16)
assert sys.modules.get("keras") is before, (sys.modules.get("keras"), before)
print("ok")
"""
    result = _run(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


def test_bert4keras_optimizer_trains():
    """Fix 2: bert4keras.optimizers.Adam (legacy-API subclass) can take a training step."""
    from bert4keras.optimizers import Adam
    x = np.ones((4, 3), np.float32)
    y = np.zeros((4, 1), np.float32)
    model = keras.Sequential([keras.layers.Dense(1, input_shape=(3,))])
    model.compile(optimizer=Adam(learning_rate=0.1), loss="mse")
    first = model.train_on_batch(x, y)
    for _ in range(5):
        last = model.train_on_batch(x, y)
    assert last < first


def test_attention_kernels_differ_and_init_is_reproducible():
    """Fix 3: Q/K/V/O kernels of one attention layer differ; same seed -> same weights."""
    def build(seed):
        tf.random.set_seed(seed)
        backend.reset_initializer_counter()
        return build_transformer_model(return_keras_model=False, **TINY)
    att = build(1).layers["Transformer-0-MultiHeadSelfAttention"].get_weights()
    q, k, v, o = att[0], att[2], att[4], att[6]
    assert not np.allclose(q, k) and not np.allclose(k, v) and not np.allclose(v, o)
    again = build(1).layers["Transformer-0-MultiHeadSelfAttention"].get_weights()
    other = build(2).layers["Transformer-0-MultiHeadSelfAttention"].get_weights()
    np.testing.assert_array_equal(att[0], again[0])
    assert not np.allclose(att[0], other[0])


def test_h5_round_trip(tmp_path):
    """Fix 4a: a bert4keras model saved as .h5 loads back (gelu stored by name)."""
    model = build_transformer_model(**TINY)
    path = str(tmp_path / "bert.h5")
    model.save(path)
    loaded = keras.models.load_model(path, custom_objects=backend.custom_objects)
    x = [np.array([[2, 5, 7, 3]]), np.zeros((1, 4), np.int32)]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=1e-6)


def test_checkpoint_writer_round_trip(tmp_path):
    """Fix 4b: write_bert_checkpoint -> build_transformer_model(ckpt) gives identical outputs."""
    tf.random.set_seed(3)
    source = build_transformer_model(return_keras_model=False, with_mlm=True, with_nsp=True,
                                     with_pool=True, **TINY)
    prefix = str(tmp_path / "bert_model.ckpt")
    names = backend.write_bert_checkpoint(source, prefix)
    assert "bert/encoder/layer_0/attention/self/query/kernel" in names
    assert "cls/predictions/output_bias" in names and "cls/seq_relationship/output_weights" in names
    stored = dict(tf.train.list_variables(prefix))
    assert stored["cls/seq_relationship/output_weights"] == [2, 16]  # Google's layout
    reloaded = build_transformer_model(checkpoint_path=prefix, with_mlm=True, with_nsp=True,
                                       with_pool=True, **TINY)
    x = [np.array([[2, 9, 11, 4, 3]]), np.zeros((1, 5), np.int32)]
    for a, b in zip(source.model.predict(x, verbose=0), reloaded.predict(x, verbose=0)):
        np.testing.assert_allclose(a, b, atol=1e-6)
