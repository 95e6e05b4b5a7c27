"""The on-disk encode cache: hits equal fresh encodes, stale or broken entries are never served."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from bert_rec.utils import atomic
from bert_rec.cli import build_parser, main
from bert_rec.utils.encode_cache import (MAX_SEGMENTS, EncodeCache, default_cache_dir,
                                   model_fingerprint, text_key)

from conftest import TINY_TEXTS

FINGERPRINT = "0123456789abcdef" * 2 + "01234567"


@pytest.fixture(scope="module")
def encoder(tiny_ckpt):
    from bert_rec.encoder import TextEncoder
    return TextEncoder(tiny_ckpt, batch_size=4)


def _spy(encoder, monkeypatch):
    """Token-id rows (padding stripped) of every text the BERT is run on, in call order."""
    seen = []
    original = encoder._encode_batch

    def counting(token_ids, segment_ids):
        seen.extend(tuple(int(t) for t in row if t) for row in token_ids.numpy())
        return original(token_ids, segment_ids)

    monkeypatch.setattr(encoder, "_encode_batch", counting)
    return seen


def _use_cache(encoder, root, monkeypatch):
    cache = EncodeCache(str(root), model_fingerprint(encoder.files, encoder.pooling),
                        dim=encoder.dim)
    monkeypatch.setattr(encoder, "cache", cache)
    return cache


def _files(root):
    """Every file under ``root`` (relative paths), sorted."""
    return sorted(os.path.relpath(os.path.join(d, f), root)
                  for d, _, names in os.walk(root) for f in names)


def _segments(directory):
    return sorted(n for n in os.listdir(directory) if n.endswith(".keys"))


def _tokens(encoder, texts, max_len=64):
    from bert_rec.tokenization import encode_texts
    return [tuple(s) for s in encode_texts(encoder.tokenizer, texts, max_len)]


# -- the encoder with a cache ---------------------------------------------------------------------

def test_hits_equal_a_fresh_encode_and_do_not_run_the_encoder(encoder, tmp_path, monkeypatch):
    texts = TINY_TEXTS + TINY_TEXTS[:3] + ["  " + TINY_TEXTS[5].upper()]  # repeats
    distinct = set(encoder.pipeline.clean_many(texts))
    plain = encoder.encode(texts)  # no cache: the reference
    seen = _spy(encoder, monkeypatch)
    cache = _use_cache(encoder, tmp_path, monkeypatch)
    first = encoder.encode(texts)
    assert sorted(seen) == sorted(_tokens(encoder, distinct))  # each distinct text once
    np.testing.assert_allclose(first, plain, atol=1e-5)
    seen.clear()
    second = encoder.encode(texts)
    assert seen == []  # every text was a hit
    np.testing.assert_allclose(second, plain, atol=1e-5)
    # a later run (a new cache object on the same directory) hits as well
    monkeypatch.setattr(encoder, "cache", EncodeCache(str(tmp_path), cache.fingerprint))
    np.testing.assert_array_equal(encoder.encode(texts), second)
    assert seen == []
    assert len(_segments(cache.directory)) == 1  # hits store nothing


def test_only_misses_are_encoded_and_stored(encoder, tmp_path, monkeypatch):
    texts = encoder.pipeline.clean_many(TINY_TEXTS)
    plain = encoder.encode(texts, clean=False)
    seen = _spy(encoder, monkeypatch)
    cache = _use_cache(encoder, tmp_path, monkeypatch)
    encoder.encode(texts[:4], clean=False)
    seen.clear()
    mixed = encoder.encode(texts[::-1], clean=False)
    assert sorted(seen) == sorted(_tokens(encoder, texts[4:]))  # the misses, nothing else
    np.testing.assert_allclose(mixed, plain[::-1], atol=1e-5)
    assert len(_segments(cache.directory)) == 2  # one segment per store
    _, hit = cache.lookup(texts, 64)
    assert hit.all()
    # the truncation is part of the key: another max_len is another entry
    seen.clear()
    short = encoder.encode(texts[:2], max_len=4, clean=False)
    assert sorted(seen) == sorted(_tokens(encoder, texts[:2], max_len=4))
    assert not np.allclose(short, plain[:2], atol=1e-3)
    assert cache.lookup(texts[:2], 4)[1].all() and not cache.lookup(texts[:2], 5)[1].any()


def test_a_changed_weight_is_a_new_fingerprint_so_no_stale_hits(encoder, tiny_ckpt, tmp_path):
    from bert_rec.checkpoint import find_checkpoint, write_checkpoint_files
    from bert_rec.encoder import TextEncoder
    fingerprint = model_fingerprint(encoder.files, "mean")
    copy = str(shutil.copytree(tiny_ckpt, tmp_path / "copy"))
    assert model_fingerprint(find_checkpoint(copy), "mean") == fingerprint  # same bytes
    assert model_fingerprint(encoder.files, "cls") != fingerprint  # pooling is part of it
    changed = TextEncoder(copy)
    layer = changed.transformer.layers["Embedding-Token"]
    weights = layer.get_weights()
    weights[0][7, 3] += 0.5  # one weight
    layer.set_weights(weights)
    with open(changed.files.vocab_path, encoding="utf-8") as f:
        vocab = [line.rstrip("\n") for line in f]
    write_checkpoint_files(changed.transformer, changed.files.config, vocab, copy)
    assert model_fingerprint(find_checkpoint(copy), "mean") != fingerprint
    # a change every text feels (not a constant: LayerNorm removes that), to show that a stale
    # hit would be wrong
    weights[0] += np.random.default_rng(0).normal(0, 0.5, weights[0].shape).astype(np.float32)
    layer.set_weights(weights)
    write_checkpoint_files(changed.transformer, changed.files.config, vocab, copy)
    root = str(tmp_path / "cache")
    old = encoder.enable_cache(root)
    try:
        before = encoder.encode(TINY_TEXTS)
    finally:
        encoder.cache = None
    reloaded = TextEncoder(copy)
    new = reloaded.enable_cache(root)
    assert new.directory != old.directory
    assert not new.lookup(encoder.pipeline.clean_many(TINY_TEXTS), 64)[1].any()
    after = reloaded.encode(TINY_TEXTS)
    assert not np.allclose(after, before, atol=1e-3)


def test_training_the_encoder_turns_the_cache_off(tiny_ckpt, tmp_path):
    sys.path.insert(0, os.path.dirname(__file__))
    from test_training import _config, _dataset

    from bert_rec.recommend import Recommender
    from bert_rec.training import Trainer
    items, histories = _dataset()
    for layers, kept in ((0, True), (1, False)):
        rec = Recommender.load(tiny_ckpt, zero_shot=True, cache_dir=str(tmp_path))
        Trainer(rec, items, histories, _config(train_layers=layers))
        assert (rec.encoder.cache is not None) == kept


# -- the files ------------------------------------------------------------------------------------

def _vectors(n, dim=4, seed=0):
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def _write_segment(directory, name, keys, array, allow_pickle=False):
    os.makedirs(directory, exist_ok=True)
    np.save(os.path.join(directory, name + ".npy"), array, allow_pickle=allow_pickle)
    with open(os.path.join(directory, name + ".keys"), "w", encoding="ascii") as f:
        f.writelines(k + "\n" for k in keys)


def test_a_segment_whose_keys_and_vectors_disagree_is_ignored_with_a_warning(tmp_path, capsys):
    cache = EncodeCache(str(tmp_path), FINGERPRINT, dim=4)
    good = _vectors(2)
    cache.store(["a", "b"], 8, good)
    keys = {t: text_key(t, 8) for t in "cdefg"}
    bad = {"seg-1-1-aa": ([keys["c"], keys["d"], keys["e"]], _vectors(2)),  # 3 keys, 2 vectors
           "seg-2-1-bb": ([keys["f"]], _vectors(1, dim=5)),  # another dimension
           "seg-3-1-cc": ([keys["g"]], np.array([{"x": 1}], dtype=object)),  # pickled
           "seg-4-1-dd": (["not a key"], _vectors(1))}
    for name, (segment_keys, array) in bad.items():
        _write_segment(cache.directory, name, segment_keys, array, allow_pickle=True)
    reader = EncodeCache(str(tmp_path), FINGERPRINT, dim=4)
    vectors, hit = reader.lookup(list("abcdefg"), 8)
    assert hit.tolist() == [True, True, False, False, False, False, False]
    np.testing.assert_array_equal(vectors[:2], good)
    assert not vectors[2:].any()
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == len(bad)
    for name in bad:
        line = next(line for line in lines if name in line)
        assert line.startswith("bert-rec: warning: ") and "delete" in line
    assert "3 keys but 2 vectors" in "".join(lines)
    reader.lookup(list("cdefg"), 8)
    assert capsys.readouterr().err == ""  # warned once
    reader.store(["c"], 8, _vectors(1, seed=1))  # the cache still works beside them
    assert EncodeCache(str(tmp_path), FINGERPRINT, dim=4).lookup(["c"], 8)[1].all()


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", ""])
    proc.wait()
    return proc.pid


def test_a_segment_without_keys_is_invisible_and_compaction_keeps_every_entry(tmp_path, capsys):
    cache = EncodeCache(str(tmp_path), FINGERPRINT, dim=3)
    expected = {}
    for i in range(MAX_SEGMENTS):
        vectors = _vectors(2, dim=3, seed=i)
        cache.store([f"t{i}", "shared"], 16, vectors)  # "shared": a key two writers both stored
        expected[f"t{i}"] = vectors[0]
        expected.setdefault("shared", vectors[1])
    # a writer killed between its .npy and its .keys, and one killed mid-write
    crashed = f"seg-1-{_dead_pid()}-ee"
    atomic.write_bytes(os.path.join(cache.directory, crashed + ".npy"), b"\x93NUMPY garbage")
    stale_tmp = os.path.join(cache.directory, f".tmp-seg-2-3-ff.npy-{_dead_pid()}-abc123")
    with open(stale_tmp, "wb") as f:
        f.write(b"half")
    early = EncodeCache(str(tmp_path), FINGERPRINT)  # a reader that saw the old segments
    assert early.lookup(list(expected), 16)[1].all()
    assert len(_segments(cache.directory)) == MAX_SEGMENTS
    vectors = _vectors(1, dim=3, seed=99)
    cache.store(["last"], 16, vectors)  # one past the limit: compacts
    expected["last"] = vectors[0]
    assert _files(cache.directory) == sorted(n for s in _segments(cache.directory)
                                             for n in (s, s[:-5] + ".npy"))
    assert len(_segments(cache.directory)) == 1  # leftovers of dead writers are gone too
    for reader in (cache, early, EncodeCache(str(tmp_path), FINGERPRINT)):
        got, hit = reader.lookup(list(expected) + ["never stored"], 16)
        assert hit.tolist() == [True] * len(expected) + [False]
        np.testing.assert_array_equal(got[:-1], np.array(list(expected.values())))
    assert capsys.readouterr().err == ""  # nothing above deserved a warning


def test_an_unwritable_cache_warns_once_and_is_read_only(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cache = EncodeCache(str(blocker), FINGERPRINT, dim=2)
    assert cache.store(["a"], 8, _vectors(1, dim=2)) is None
    assert cache.store(["b"], 8, _vectors(1, dim=2)) is None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write the encode cache" in err[0] and "--no-cache" in err[0]
    assert not cache.lookup(["a"], 8)[1].any()


def test_default_cache_dir(monkeypatch):
    monkeypatch.setenv("BERT_REC_CACHE", "/somewhere/cache")
    assert default_cache_dir() == "/somewhere/cache"
    monkeypatch.delenv("BERT_REC_CACHE")
    assert default_cache_dir() == os.path.join(os.path.expanduser("~"), ".cache", "bert_rec",
                                               "encodings")


# -- the command line -----------------------------------------------------------------------------

def _write_data(tmp_path):
    items = [{"item_id": f"v{i}", "title": text} for i, text in enumerate(TINY_TEXTS)]
    rows = [{"user_id": f"u{u}", "item_id": f"v{(u + j) % len(items)}",
             "behavior": "comment" if j == 1 else "view", "timestamp": 1709287200 + 60 * j,
             **({"text": TINY_TEXTS[(u + 5) % len(items)]} if j == 1 else {})}
            for u in range(4) for j in range(3)]
    paths = []
    for name, data in (("items.jsonl", items), ("behaviors.jsonl", rows)):
        path = tmp_path / name
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data),
                        encoding="utf-8")
        paths.append(str(path))
    return ["--items", paths[0], "--behaviors", paths[1]]


def test_recommend_twice_gives_the_same_output_and_writes_nothing_new(tiny_ckpt, tmp_path,
                                                                      capsys):
    cache = tmp_path / "cache"
    args = ["recommend", "--model", tiny_ckpt, *_write_data(tmp_path), "-k", "3",
            "--format", "json", "--cache-dir", str(cache)]
    assert main(args) == 0
    first = capsys.readouterr().out
    written = _files(cache)
    assert [f for f in written if f.endswith(".keys")]  # items and behaviour texts stored
    assert main(args) == 0
    second = capsys.readouterr().out
    assert second == first
    assert _files(cache) == written  # every text was a hit: no new segment
    assert main([*args[:-2], "--no-cache"]) == 0  # the same as without any cache
    without = capsys.readouterr().out
    for a, b in zip(map(json.loads, first.splitlines()), map(json.loads, without.splitlines())):
        assert [i["item_id"] for i in a["items"]] == [i["item_id"] for i in b["items"]]
        np.testing.assert_allclose([i["score"] for i in a["items"]],
                                   [i["score"] for i in b["items"]], atol=1e-5)


def test_no_cache_writes_nothing_and_the_default_is_the_environment_s(tiny_ckpt, tmp_path,
                                                                      monkeypatch, capsys):
    env_cache = tmp_path / "env-cache"
    monkeypatch.setenv("BERT_REC_CACHE", str(env_cache))
    args = ["recommend", "--model", tiny_ckpt, *_write_data(tmp_path), "-k", "2"]
    assert main([*args, "--no-cache"]) == 0
    assert not env_cache.exists()
    assert main(args) == 0
    assert [f for f in _files(env_cache) if f.endswith(".keys")]
    capsys.readouterr()
    with pytest.raises(SystemExit):
        build_parser().parse_args([*args, "--no-cache", "--cache-dir", str(tmp_path)])
    for command in ("recommend", "train", "evaluate"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "safe to delete" in capsys.readouterr().out


def test_warm_raw_texts_skip_cleaning_and_other_settings_miss(encoder, tmp_path, monkeypatch):
    """Raw texts are keyed by their raw form + the pipeline's fingerprint, checked before
    cleaning: a warm call cleans nothing; a pipeline with other settings does not hit them."""
    from bert_rec.text import TextConfig, TextPipeline
    texts = TINY_TEXTS + ["  " + TINY_TEXTS[5].upper(), "我不喜欢这个"]
    plain = encoder.encode(texts)
    _use_cache(encoder, tmp_path, monkeypatch)
    np.testing.assert_allclose(encoder.encode(texts), plain, atol=1e-5)
    cleaned = []
    original = encoder.pipeline.clean_many

    def counting(batch):
        batch = list(batch)
        cleaned.extend(batch)
        return original(batch)

    monkeypatch.setattr(encoder.pipeline, "clean_many", counting)
    np.testing.assert_array_equal(encoder.encode(texts), encoder.encode(texts[::-1])[::-1])
    assert cleaned == []  # every raw text was a hit
    np.testing.assert_allclose(encoder.encode(texts), plain, atol=1e-5)
    strict = TextPipeline(TextConfig(keep_meaning_words=False))
    assert strict.fingerprint != encoder.pipeline.fingerprint
    monkeypatch.setattr(encoder, "pipeline", strict)
    monkeypatch.setattr(strict, "clean_many", lambda batch: cleaned.extend(
        batch) or TextPipeline.clean_many(strict, batch))
    seen = _spy(encoder, monkeypatch)
    vector = encoder.encode(["我不喜欢这个"])
    assert cleaned == ["我不喜欢这个"]  # another pipeline: a miss, cleaned its way
    assert seen == _tokens(encoder, ["喜欢"])  # the strict list drops 不
    assert not np.allclose(vector, plain[-1:], atol=1e-4)


def test_encode_units_drops_texts_that_clean_to_nothing_and_a_warm_call_cleans_nothing(
        encoder, tmp_path, monkeypatch):
    """Behaviour-text units: only texts with words left give a vector; with a cache the second
    call knows both the vectors and the empty texts without cleaning anything."""
    texts = ["这个视频不好看", "。。。！", "的了", "太无聊了", "https://example.com"]
    words = encoder.pipeline.clean_many(texts)
    assert [bool(w) for w in words] == [True, False, False, True, False]
    plain, kept = encoder.encode_units(texts)  # no cache: cleaned here
    assert kept.tolist() == [0, 3]
    np.testing.assert_allclose(plain, encoder.encode([words[0], words[3]], clean=False),
                               atol=1e-6)
    _use_cache(encoder, tmp_path, monkeypatch)
    cold, cold_kept = encoder.encode_units(texts)
    assert cold_kept.tolist() == [0, 3]
    np.testing.assert_allclose(cold, plain, atol=1e-5)
    monkeypatch.setattr(encoder.pipeline, "clean_many", lambda batch: pytest.fail(
        f"a warm call cleaned {list(batch)}"))
    seen = _spy(encoder, monkeypatch)
    warm, warm_kept = encoder.encode_units(texts)
    assert warm_kept.tolist() == [0, 3] and seen == []
    np.testing.assert_array_equal(warm, cold)
    assert encoder.encode_units([])[0].shape == (0, encoder.dim)


def test_bfloat16_encoder_is_close_restores_the_policy_and_has_its_own_cache(tiny_ckpt, tmp_path):
    """``precision="bfloat16"``: float32 vectors within bfloat16 rounding of the float32
    encoder's, the global Keras policy unchanged afterwards, another cache namespace."""
    from bert_rec.backend import keras
    from bert_rec.encoder import TextEncoder
    exact = TextEncoder(tiny_ckpt, batch_size=4)
    fast = TextEncoder(tiny_ckpt, batch_size=4, precision="bfloat16")
    assert keras.mixed_precision.global_policy().name == "float32"
    a, b = exact.encode(TINY_TEXTS), fast.encode(TINY_TEXTS)
    assert b.dtype == np.float32 and b.shape == a.shape
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() > 0.999
    assert np.abs(a - b).max() > 0  # bfloat16 did run: the results are not bit-identical
    assert exact.enable_cache(tmp_path).directory != fast.enable_cache(tmp_path).directory
    with pytest.raises(ValueError, match="precision"):
        TextEncoder(tiny_ckpt, precision="int4")
