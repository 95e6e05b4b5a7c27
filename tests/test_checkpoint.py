"""Google-format checkpoint directories: validation messages, write -> load -> same outputs."""

import os
import shutil

import numpy as np
import pytest

from bert_rec.backend import tf
from bert_rec.checkpoint import (CheckpointError, create_random_checkpoint, find_checkpoint,
                                 load_bert)


def _copy(src, tmp_path):
    dst = str(tmp_path / "copy")
    shutil.copytree(src, dst)
    return dst


def test_checkpoint_has_google_names_and_reloads_identically(tiny_ckpt, tiny_vocab, tmp_path):
    files = find_checkpoint(tiny_ckpt)
    names = dict(tf.train.list_variables(files.ckpt_prefix))
    for name in ("bert/embeddings/word_embeddings", "bert/pooler/dense/kernel",
                 "bert/encoder/layer_1/attention/self/query/kernel",
                 "bert/encoder/layer_0/output/LayerNorm/gamma",
                 "cls/predictions/transform/dense/kernel", "cls/seq_relationship/output_bias"):
        assert name in names, name
    assert names["bert/embeddings/word_embeddings"] == [len(tiny_vocab), 32]
    # The same seed writes the same weights; loading them gives identical outputs.
    again = create_random_checkpoint(str(tmp_path / "again"), tiny_vocab, seed=7, hidden_size=32,
                                     num_hidden_layers=2, num_attention_heads=2,
                                     max_position_embeddings=64)
    x = [np.array([[2, 10, 11, 12, 3]]), np.zeros((1, 5), np.int32)]
    a = load_bert(files).predict(x, verbose=0)
    b = load_bert(find_checkpoint(again)).predict(x, verbose=0)
    np.testing.assert_array_equal(a, b)
    mlm = load_bert(files, with_mlm=True).predict(x, verbose=0)
    assert mlm.shape == (1, 5, len(tiny_vocab))
    np.testing.assert_allclose(mlm.sum(-1), 1.0, rtol=1e-5)


def test_missing_directory_and_files(tiny_ckpt, tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        find_checkpoint(str(tmp_path / "nope"))
    for name in ("vocab.txt", "bert_config.json"):
        path = _copy(tiny_ckpt, tmp_path / name)
        os.remove(os.path.join(path, name))
        with pytest.raises(CheckpointError, match=f"missing {name}"):
            find_checkpoint(path)
    path = _copy(tiny_ckpt, tmp_path / "data")
    for f in os.listdir(path):
        if ".data-" in f:
            os.remove(os.path.join(path, f))
    with pytest.raises(CheckpointError, match="no bert_model.ckpt.data"):
        find_checkpoint(path)


def test_vocab_size_mismatch_says_what_to_do(tiny_ckpt, tmp_path):
    path = _copy(tiny_ckpt, tmp_path)
    with open(os.path.join(path, "vocab.txt"), "a", encoding="utf-8") as f:
        f.write("extra\n")
    with pytest.raises(CheckpointError, match=r"has \d+ lines but bert_config.json says "
                                              r"vocab_size \d+: pass the vocab"):
        find_checkpoint(path)


def test_truncated_data_file_is_reported(tiny_ckpt, tmp_path):
    path = _copy(tiny_ckpt, tmp_path)
    data = [f for f in os.listdir(path) if ".data-" in f][0]
    with open(os.path.join(path, data), "r+b") as f:
        f.truncate(100)
    with pytest.raises(CheckpointError, match="truncated"):
        find_checkpoint(path)


def test_non_bert_checkpoint_is_rejected(tmp_path):
    path = tmp_path / "other"
    path.mkdir()
    (path / "bert_config.json").write_text('{"vocab_size": 3, "hidden_size": 2, '
                                           '"num_hidden_layers": 1, "num_attention_heads": 1, '
                                           '"intermediate_size": 4}')
    (path / "vocab.txt").write_text("a\nb\nc\n")
    ckpt = tf.train.Checkpoint(w=tf.Variable(np.zeros(3, np.float32)))
    ckpt.write(str(path / "bert_model.ckpt"))
    with pytest.raises(CheckpointError, match="not a BERT checkpoint"):
        find_checkpoint(str(path))
    (path / "bert_config.json").write_text('{"model_type": "gpt"}')
    with pytest.raises(CheckpointError, match="missing vocab_size"):
        find_checkpoint(str(path))


def test_mlm_needs_heads(tiny_vocab, tmp_path):
    path = create_random_checkpoint(str(tmp_path / "bare"), tiny_vocab, seed=1, with_heads=False,
                                    hidden_size=16, num_hidden_layers=1, num_attention_heads=2)
    files = find_checkpoint(path)
    with pytest.raises(CheckpointError, match="no masked-LM head"):
        load_bert(files, with_mlm=True)


SHIPPED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "checkpoints")


@pytest.mark.parametrize("name", ["small-bert-zh", "tiny-bert-zh"])
def test_shipped_checkpoints_load_with_their_heads(name):
    """The shipped checkpoints validate, hold their MLM head, and are what pretraining.json
    says they are (the README's table is read off these files)."""
    import json
    from bert_rec.checkpoint import has_variable
    files = find_checkpoint(os.path.join(SHIPPED, name))
    with open(os.path.join(SHIPPED, name, "pretraining.json"), encoding="utf-8") as f:
        summary = json.load(f)
    assert summary["config"] == files.config
    assert has_variable(files.ckpt_prefix, "cls/predictions/output_bias")
    model = load_bert(files, with_mlm=True)
    token_ids = np.array([[2, 5, 6, 3]], np.int32)
    probs = model.predict([token_ids, np.zeros_like(token_ids)], verbose=0)
    assert probs.shape == (1, 4, files.config["vocab_size"])
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-4)
