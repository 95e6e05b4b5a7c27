"""Masked-LM / NSP pretraining: masking statistics, vocabulary, training, checkpoint round trips."""

import argparse
import json
import os

import numpy as np
import pytest

from bert_rec.backend import tf
from bert_rec.checkpoint import (CheckpointError, create_random_checkpoint, find_checkpoint,
                                 load_bert)
from bert_rec.data import Behavior, Item
from bert_rec.cli import add_pretrain_parser as add_parser
from bert_rec.cli import main as cli_main
from bert_rec.pretraining import (SUMMARY_NAME, batch_stats, read_corpus,
                                  mask_whole_words, nsp_pairs, pair_example, pretrain,
                                  run_pretraining, single_examples)
from bert_rec.tokenization import SPECIAL_TOKENS, build_char_vocab, load_tokenizer

TINY = dict(hidden_size=32, num_layers=1, num_heads=2, max_len=32, batch_size=8)
PHRASES = [
    "今天 的 美食 视频 太 好看 了", "红烧肉 家常菜 做法", "篮球 比赛 精彩 瞬间",
    "小猫 小狗 萌宠 日常", "旅行 风景 摄影 山 水", "手机 数码 评测 iphone 15 pro",
    "搞笑 段子 喜剧", "美妆 口红 试色", "健身 运动 跑步", "汽车 驾驶 技巧",
]
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(5)
SPECIALS = list(range(5))


def _items(n=40):
    return [Item(f"i{k}", PHRASES[k % 10], PHRASES[(k + 1) % 10], category=f"类{k % 3}",
                 tags=(PHRASES[(k + 2) % 10].split()[0],)) for k in range(n)]


def _behaviors(n_users=6, per_user=8):
    events = []
    for u in range(n_users):
        for step in range(per_user):
            item = f"i{(u * 3 + step) % 40}"
            text = "这个 视频 太 好看 了 vlog" if step % 4 == 0 else ""
            events.append(Behavior(f"u{u}", item, "comment" if text else "view",
                                   1_700_000_000 + 60 * step, text=text))
    return events


def _mlm_probs(model, token_ids):
    out = model.predict([token_ids, np.zeros_like(token_ids)], verbose=0)
    return out[0] if isinstance(out, list) else out


# ------------------------------------------------------------------------ masking

def _random_sequence(rng, vocab_size):
    words = [[CLS_ID]]
    for _ in range(rng.integers(5, 40)):
        words.append(list(rng.integers(5, vocab_size, size=rng.integers(1, 4))))
    return words + [[SEP_ID]] + [[PAD_ID]] * int(rng.integers(0, 3))


def test_whole_word_masking_statistics():
    vocab_size = 500
    rng_data = np.random.default_rng(1)
    sequences = [_random_sequence(rng_data, vocab_size) for _ in range(1500)]
    rng = np.random.default_rng(0)
    eligible = chosen = masked = kept = replaced = 0
    for words in sequences:
        flat = np.array([t for w in words for t in w])
        ids, labels = mask_whole_words(words, rng, vocab_size, SPECIALS, mask_id=MASK_ID)
        assert ids.dtype == labels.dtype == np.int32 and ids.shape == labels.shape == flat.shape
        is_special = np.isin(flat, SPECIALS)
        assert not labels[is_special].any(), "a special token was chosen"
        np.testing.assert_array_equal(ids[labels == 0], flat[labels == 0])
        sel = labels > 0
        np.testing.assert_array_equal(labels[sel], flat[sel])
        start = 0
        for word in words:  # all pieces of a word chosen together
            span = sel[start:start + len(word)]
            assert span.all() or not span.any(), (words, labels)
            start += len(word)
        eligible += int((~is_special).sum())
        chosen += int(sel.sum())
        masked += int((ids[sel] == MASK_ID).sum())
        kept += int((ids[sel] == flat[sel]).sum())
        swapped = ids[sel][(ids[sel] != MASK_ID) & (ids[sel] != flat[sel])]
        assert not np.isin(swapped, SPECIALS).any() and (swapped < vocab_size).all()
        replaced += len(swapped)
    assert abs(chosen / eligible - 0.15) < 0.03, chosen / eligible
    assert 0.75 < masked / chosen < 0.85, masked / chosen
    assert 0.07 < kept / chosen < 0.13, kept / chosen
    assert 0.07 < replaced / chosen < 0.13, replaced / chosen


def test_masking_is_deterministic_for_a_seed():
    words = _random_sequence(np.random.default_rng(3), 100)
    a = [mask_whole_words(words, np.random.default_rng(7), 100, SPECIALS, mask_id=MASK_ID)
         for _ in range(2)]
    np.testing.assert_array_equal(a[0][0], a[1][0])
    np.testing.assert_array_equal(a[0][1], a[1][1])
    others = [mask_whole_words(words, np.random.default_rng(s), 100, SPECIALS, mask_id=MASK_ID)[1]
              for s in range(8, 12)]
    assert any(not np.array_equal(o, a[0][1]) for o in others)


def test_specials_only_sequence_masks_nothing():
    ids, labels = mask_whole_words([[CLS_ID], [SEP_ID], [PAD_ID]], np.random.default_rng(0), 50,
                                   SPECIALS, mask_id=MASK_ID)
    assert ids.tolist() == [CLS_ID, SEP_ID, PAD_ID] and not labels.any()


# ------------------------------------------------------------------------ vocabulary / examples

def test_vocab_has_specials_first_and_frequent_ascii_words():
    texts = ["iphone 评测 vlog", "iphone 15 pro 手机", "vlog 日常 iphone", "mcn 一次"]
    vocab = build_char_vocab(texts, min_count=2, word_pieces=True)
    assert vocab[:5] == list(SPECIAL_TOKENS) and vocab.index("[PAD]") == 0
    assert "iphone" in vocab and "vlog" in vocab and "mcn" not in vocab  # mcn seen once
    assert "评" not in vocab and "手" not in vocab and len(vocab) == len(set(vocab))
    # without word_pieces: the old character vocabulary, unchanged
    plain = build_char_vocab(texts, min_count=2)
    assert "iphone" not in plain and plain[:5] == list(SPECIAL_TOKENS)
    assert set(plain) <= set(vocab)


def test_ascii_word_tokens_stay_whole(tmp_path):
    vocab = build_char_vocab(["iphone vlog"] * 2, word_pieces=True)
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = load_tokenizer(str(path))
    assert tokenizer.tokenize("iphone vlogs") == ["[CLS]", "iphone", "vlog", "##s", "[SEP]"]


def test_examples_and_pairs_have_the_bert_layout():
    a, b = [[10, 11], [12]], [[20], [21, 22], [23, 24]]
    example = pair_example(a, b, 1, 8, CLS_ID, SEP_ID)  # 3 + 5 + 3 specials > 8: the longer
    flat = [t for w in example.words for t in w]         # side (B) loses its last tokens
    assert flat == [CLS_ID, 10, 11, 12, SEP_ID, 20, 21, SEP_ID]
    assert example.words[-3:] == [[20], [21], [SEP_ID]] and example.nsp_label == 1
    assert example.segments == [0] * 5 + [1] * 3
    singles = single_examples([[[5]] * 20], 8, CLS_ID, SEP_ID)  # 20 words -> 4 chunks of <= 6
    assert [e.length for e in singles] == [8, 8, 8, 4]
    assert all(e.words[0] == [CLS_ID] and e.words[-1] == [SEP_ID] for e in singles)

    rng = np.random.default_rng(0)
    pairs = nsp_pairs([f"i{k}" for k in range(40)], _behaviors(n_users=30), rng)
    positives = [(x, y) for x, y, label in pairs if label == 1]
    assert 0.35 < len(positives) / len(pairs) < 0.65
    follows = set()
    events = _behaviors(n_users=30)
    for u in range(30):
        seq = [e.item_id for e in events if e.user_id == f"u{u}"]
        follows |= set(zip(seq, seq[1:]))
    assert positives and all(p in follows for p in positives)
    assert all(x != y for x, y, _ in pairs)


# ------------------------------------------------------------------------ training

@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain") / "scratch"
    result = run_pretraining(_items(), _behaviors(), str(out), epochs=8, learning_rate=3e-3,
                             seed=1, min_count=1, **TINY)
    return result, str(out)


def test_training_lowers_the_masked_lm_loss(scratch):
    result, _ = scratch
    history = result.summary["history"]
    assert len(history) == 8
    assert history[-1]["mlm_loss"] < history[0]["mlm_loss"] - 0.5, history
    assert history[-1]["mlm_accuracy"] > history[0]["mlm_accuracy"]
    # batches of many lengths, one trace: the step's input signature is [None, None]
    assert result.trainer.train_step.experimental_get_tracing_count() == 1


def test_scratch_checkpoint_reloads_with_the_same_mlm_outputs(scratch):
    result, out = scratch
    files = find_checkpoint(out)
    with open(files.vocab_path, encoding="utf-8") as f:
        vocab = f.read().splitlines()
    assert vocab == result.vocab_tokens and vocab[0] == "[PAD]" and "iphone" in vocab
    names = dict(tf.train.list_variables(files.ckpt_prefix))
    assert "cls/predictions/output_bias" in names and "bert/pooler/dense/kernel" in names
    assert not any(n.startswith("cls/seq_relationship") for n in names)
    token_ids = np.array([[CLS_ID, 10, 11, MASK_ID, 13, SEP_ID],
                          [CLS_ID, 20, MASK_ID, SEP_ID, 0, 0]])
    reloaded = _mlm_probs(load_bert(files, with_mlm=True), token_ids)
    in_memory = _mlm_probs(result.model, token_ids)
    assert reloaded.shape == (2, 6, len(vocab))
    np.testing.assert_allclose(reloaded, in_memory, rtol=1e-5, atol=1e-6)

    # training applies the MLM head to the masked positions only: same loss as the full head
    labels = np.zeros_like(token_ids)
    labels[0, 3], labels[1, 2] = 12, 21
    trainer = result.trainer
    hidden = trainer.model([token_ids, np.zeros_like(token_ids)], training=False)
    loss = float(batch_stats(trainer.head, [hidden], tf.constant(labels, tf.int32), None,
                             False)[0])
    assert loss == pytest.approx(-np.log(in_memory[labels > 0, labels[labels > 0]]).mean(),
                                 rel=1e-5)

    with open(os.path.join(out, SUMMARY_NAME), encoding="utf-8") as f:
        summary = json.load(f)
    assert summary["steps"] == result.summary["steps"] > 0 and summary["seed"] == 1
    assert summary["corpus"]["item_texts"] == 40 and summary["corpus"]["behavior_texts"] == 12
    assert summary["final"]["mlm_loss"] == result.summary["history"][-1]["mlm_loss"]
    assert summary["config"]["max_position_embeddings"] == TINY["max_len"]


def test_nsp_pretraining_writes_and_reloads_the_nsp_head(tmp_path):
    out = str(tmp_path / "nsp")
    result = run_pretraining(_items(), _behaviors(), out, epochs=2, nsp=True, seed=2,
                             min_count=1, **TINY)
    assert result.summary["corpus"]["nsp_source"] == "behaviour sequences"
    assert "nsp_loss" in result.summary["final"]
    files = find_checkpoint(out)
    names = dict(tf.train.list_variables(files.ckpt_prefix))
    assert {"cls/seq_relationship/output_weights", "cls/seq_relationship/output_bias",
            "cls/predictions/output_bias"} <= set(names)
    reloaded = load_bert(files, with_mlm=True, with_nsp=True)
    x = [np.array([[CLS_ID, 10, SEP_ID, 11, 12, SEP_ID]]), np.array([[0, 0, 0, 1, 1, 1]])]
    got, want = reloaded.predict(x, verbose=0), result.model.predict(x, verbose=0)
    # bert4keras orders the outputs [NSP, MLM]; the training model [MLM, NSP]
    np.testing.assert_allclose(got[0], want[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], want[0], rtol=1e-5, atol=1e-6)


def test_bfloat16_pretraining_computes_in_bfloat16_and_writes_a_float32_checkpoint(tmp_path):
    """precision="bfloat16": matmuls in bfloat16 (also the attention-dropout layer bert4keras
    makes inside call()), losses and variables in float32; it learns like float32 and the
    checkpoint reloads in float32 with the in-memory model's outputs up to bfloat16 rounding."""
    from bert_rec.backend import keras
    from bert_rec.encoder import precision_policy
    out = str(tmp_path / "bf16")
    result = run_pretraining(_items(), _behaviors(), out, epochs=8, learning_rate=3e-3, nsp=True,
                             seed=1, min_count=1, precision="bfloat16", **TINY)
    assert keras.mixed_precision.global_policy().name == "float32"  # restored
    layers = result.transformer.model.layers
    assert {layer.compute_dtype for layer in layers
            if layer.name.startswith("Transformer-0-")} == {"bfloat16"}
    assert {v.dtype for v in result.trainer.variables} == {tf.float32}
    history = result.summary["history"]
    assert history[-1]["mlm_loss"] < history[0]["mlm_loss"] - 0.5, history
    assert result.summary["settings"]["precision"] == "bfloat16"

    files = find_checkpoint(out)
    reader = tf.train.load_checkpoint(files.ckpt_prefix)
    assert reader.get_variable_to_dtype_map()["bert/encoder/layer_0/output/dense/kernel"] \
        == tf.float32
    token_ids = np.array([[CLS_ID, 10, 11, MASK_ID, 13, SEP_ID]])
    x = [token_ids, np.zeros_like(token_ids)]
    reloaded = load_bert(files, with_mlm=True, with_nsp=True).predict(x, verbose=0)
    with precision_policy("bfloat16"):  # bert4keras makes a layer at call time
        in_memory = result.model.predict(x, verbose=0)
    assert reloaded[1].dtype == np.float32  # a float32 model: the policy did not leak
    np.testing.assert_allclose(reloaded[1], np.asarray(in_memory[0], np.float32), atol=0.02)
    assert np.abs(reloaded[1] - np.asarray(in_memory[0], np.float32)).max() > 0  # bf16 ran


def test_nsp_without_behaviors_pairs_title_and_text(tmp_path):
    summary = pretrain(_items(12), (), str(tmp_path / "nsp2"), epochs=1, nsp=True, min_count=1,
                       **TINY)
    assert summary["corpus"]["nsp_source"] == "title / rest of text"
    assert summary["corpus"]["nsp_pairs"] == 12


def test_continuing_a_checkpoint_keeps_its_vocab_and_changes_its_weights(tiny_ckpt, tmp_path):
    out = str(tmp_path / "continued")
    before = find_checkpoint(tiny_ckpt)
    summary = pretrain(_items(), _behaviors(), out, init_checkpoint=tiny_ckpt, epochs=6,
                       batch_size=8, learning_rate=3e-3, max_len=32, seed=3)
    after = find_checkpoint(out)
    with open(before.vocab_path, encoding="utf-8") as f1, \
            open(after.vocab_path, encoding="utf-8") as f2:
        assert f1.read() == f2.read()
    assert after.config == before.config and summary["vocab_size"] == before.config["vocab_size"]
    old = tf.train.load_checkpoint(before.ckpt_prefix)
    new = tf.train.load_checkpoint(after.ckpt_prefix)
    assert set(new.get_variable_to_shape_map()) == set(old.get_variable_to_shape_map())  # all heads
    for name in ("bert/embeddings/word_embeddings", "bert/encoder/layer_1/output/dense/kernel",
                 "cls/predictions/transform/dense/kernel"):
        assert not np.allclose(old.get_tensor(name), new.get_tensor(name)), name

    # eval mode, same masked batch: the continued model predicts the masked tokens better
    tokenizer = load_tokenizer(before.vocab_path)
    token_ids, labels = [], []
    for text in PHRASES:
        ids = tokenizer.encode(text.replace(" ", ""))[0]
        masked = list(ids)
        masked[2] = MASK_ID
        token_ids.append(masked)
        labels.append(ids[2])
    length = max(map(len, token_ids))
    token_ids = np.array([t + [0] * (length - len(t)) for t in token_ids])

    def loss(files):
        probs = _mlm_probs(load_bert(files, with_mlm=True), token_ids)[:, 2]  # [B, V]
        return -np.mean(np.log(probs[np.arange(len(labels)), labels]))

    assert loss(after) < loss(before) - 0.3


def test_checkpoint_without_mlm_head_is_a_clear_error(tmp_path, tiny_vocab):
    bare = create_random_checkpoint(str(tmp_path / "bare"), tiny_vocab, with_heads=False,
                                    hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                    max_position_embeddings=32)
    with pytest.raises(CheckpointError, match="no masked-LM head"):
        pretrain(_items(4), (), str(tmp_path / "out"), init_checkpoint=bare, epochs=1)
    assert not os.path.exists(tmp_path / "out")


def main(argv):
    return cli_main(["pretrain", *argv])


def test_command_line(tmp_path, capsys):
    items = tmp_path / "items.jsonl"
    with open(items, "w", encoding="utf-8") as f:
        for item in _items(16):
            f.write(json.dumps({"item_id": item.item_id, "title": item.title, "text": item.text},
                               ensure_ascii=False) + "\n")
    out = tmp_path / "cli"
    assert main(["--items", str(items), "--out", str(out), "--epochs", "1", "--hidden-size", "16",
                 "--layers", "1", "--max-len", "16", "--min-count", "1", "--seed", "5"]) == 0
    err = capsys.readouterr().err
    assert "epoch 1/1" in err and "masked-token accuracy" in err
    summary = json.loads((out / SUMMARY_NAME).read_text(encoding="utf-8"))
    assert summary["command"]["seed"] == 5 and summary["command"]["items"] == str(items)
    assert find_checkpoint(str(out)).config["hidden_size"] == 16
    assert main(["--items", str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 2
    assert "error" in capsys.readouterr().err


def test_add_parser_registers_pretrain():
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["pretrain", "--items", "a.jsonl", "--behaviors", "b.jsonl", "--out",
                              "o", "--init", "c", "--nsp", "--on-error", "skip", "--heads", "4"])
    assert args.func.__name__ == "cmd_pretrain"
    assert args.nsp and args.init == "c" and args.heads == 4


def test_corpus_lines_train_and_a_holdout_measures_masked_lm(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt.gz"
    import gzip
    lines = [f"{PHRASES[i % len(PHRASES)]} 第{i}句" for i in range(60)]
    with gzip.open(corpus, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines[:30]) + "\n\n" + "\n".join(lines[30:]) + "\n")
    assert read_corpus([str(corpus)]) == lines  # blank lines skipped
    out = tmp_path / "corpus-model"
    assert main(["--corpus", str(corpus), "--out", str(out), "--epochs", "2", "--hidden-size",
                 "16", "--layers", "1", "--max-len", "16", "--max-position", "32",
                 "--min-count", "1", "--holdout", "10"]) == 0
    err = capsys.readouterr().err
    assert "held out: masked-LM loss" in err
    summary = json.loads((out / SUMMARY_NAME).read_text(encoding="utf-8"))
    assert summary["corpus"]["corpus_texts"] == 60 and summary["corpus"]["holdout_texts"] == 10
    assert summary["corpus"]["items"] == 0
    assert 0 <= summary["final"]["heldout_mlm_accuracy"] <= 1
    assert summary["final"]["heldout_masked_tokens"] > 0
    assert summary["config"]["max_position_embeddings"] == 32
    assert main(["--out", str(out)]) == 2  # no --items and no --corpus
    assert "needs text" in capsys.readouterr().err
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9\n".encode("latin-1"))
    assert main(["--corpus", str(bad), "--out", str(tmp_path / "x")]) == 2
    assert "latin1.txt line 1: not UTF-8" in capsys.readouterr().err
