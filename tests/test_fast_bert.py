"""fast_bert.FastBert: the float32 inference pass equals bert4keras's Keras model."""

import json
import shutil

import numpy as np
import pytest

from bert_rec.backend import tf
from bert_rec.checkpoint import find_checkpoint, load_bert
from bert_rec.encoder import TextEncoder
from bert_rec.fast_bert import ENV_SWITCH, FastBert

from conftest import TINY_TEXTS


def _batch(seed=0, rows=5, length=12, vocab=60):
    """Token ids with ragged padding ([CLS] first, zeros after each row's end) and both
    segments."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(5, vocab, (rows, length)).astype(np.int32)
    segments = np.zeros_like(tokens)
    for row in range(rows):
        end = int(rng.integers(3, length + 1))
        tokens[row, end:] = 0
        segments[row, end // 2:end] = 1
    tokens[:, 0] = 2
    return tf.constant(tokens), tf.constant(segments)


@pytest.mark.parametrize("pooling", ["mean", "cls", "pooler"])
def test_same_vectors_as_the_keras_model(tiny_ckpt, pooling):
    encoder = TextEncoder(tiny_ckpt, pooling=pooling)
    assert isinstance(encoder.fast, FastBert)
    tokens, segments = _batch()
    keras_out = encoder._keras_batch(tokens, segments).numpy()  # noqa: SLF001
    fast_out = encoder.fast(tokens, segments).numpy()
    assert fast_out.shape == keras_out.shape == (5, 32)
    np.testing.assert_allclose(fast_out, keras_out, atol=1e-5)
    # and through encode: the same vectors as with the fast pass off
    keras_only = TextEncoder(tiny_ckpt, pooling=pooling)
    keras_only.fast = None
    np.testing.assert_allclose(encoder.encode(TINY_TEXTS), keras_only.encode(TINY_TEXTS),
                               atol=1e-5)


def test_reads_the_live_weights(tiny_ckpt):
    """Weights changed after the encoder was built (training) are the ones encode uses."""
    encoder = TextEncoder(tiny_ckpt)
    before = encoder.encode(TINY_TEXTS[:3])
    layer = encoder.transformer.model.get_layer("Transformer-1-FeedForward")
    kernel = layer.o_dense.kernel  # (a uniform bias shift would vanish in the layer norm)
    kernel.assign(kernel + tf.random.stateless_normal(kernel.shape, [1, 2]))
    after = encoder.encode(TINY_TEXTS[:3])
    assert np.abs(after - before).max() > 1e-3
    tokens, segments = _batch()
    np.testing.assert_allclose(encoder.fast(tokens, segments).numpy(),
                               encoder._keras_batch(tokens, segments).numpy(),  # noqa: SLF001
                               atol=1e-5)


def test_falls_back_to_keras_where_it_cannot_reproduce_the_model(tiny_ckpt, tmp_path,
                                                                 monkeypatch):
    assert TextEncoder(tiny_ckpt, precision="bfloat16").fast is None
    relu = tmp_path / "relu"
    shutil.copytree(tiny_ckpt, relu)
    config = json.loads((relu / "bert_config.json").read_text(encoding="utf-8"))
    (relu / "bert_config.json").write_text(json.dumps({**config, "hidden_act": "relu"}),
                                           encoding="utf-8")
    transformer = load_bert(find_checkpoint(str(relu)), return_keras_model=False)
    assert "hidden_act" in FastBert.unsupported(transformer, "mean")
    with pytest.raises(ValueError, match="hidden_act"):
        FastBert(transformer, "mean")
    encoder = TextEncoder(str(relu))
    assert encoder.fast is None and encoder.encode(["好看"]).shape == (1, 32)
    plain = load_bert(find_checkpoint(tiny_ckpt), return_keras_model=False)
    assert "pooler" in FastBert.unsupported(plain, "pooler")  # built without the pooler
    monkeypatch.setenv(ENV_SWITCH, "0")
    assert TextEncoder(tiny_ckpt).fast is None
