"""Bad input through `bert-rec`: one clear line naming file, line, field and what to do, or, with
--on-error skip, counts by reason; odd texts never crash; broken models are one-line errors."""

import json
import os
import shutil
import time

import numpy as np
import pytest

from bert_rec.cli import main

ITEMS = [{"item_id": f"v{i}", "title": title, "category": category}
         for i, (title, category) in enumerate([
             ("红烧肉 家常菜 做法", "美食"), ("篮球 比赛 精彩 瞬间", "运动"), ("小猫 小狗 萌宠", "萌宠"),
             ("旅行 风景 摄影", "旅行"), ("手机 数码 评测", "数码"), ("搞笑 段子 喜剧", "搞笑"),
             ("美妆 口红 试色", "美妆"), ("健身 运动 跑步", "运动")])]
HEADER = "user_id,item_id,behavior,timestamp,rating,text\n"
GOOD_CSV = "u1,v0,view,2024-03-01T10:00:00Z,,\nu1,v1,click,2024-03-01T11:00:00Z,,\n"
GOOD_JSON = {"user_id": "u1", "item_id": "v0", "behavior": "view", "timestamp": 1709287200}
FUTURE = int(time.time()) + 3 * 86400


def _jsonl(rows):
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n"
                   for r in rows)


def _row(**changes):
    """A valid behaviour record with ``changes`` applied (None removes a key)."""
    row = {**GOOD_JSON, **changes}
    return {k: v for k, v in row.items() if v is not None}


@pytest.fixture()
def items_file(tmp_path):
    path = tmp_path / "items.jsonl"
    path.write_text(_jsonl(ITEMS), encoding="utf-8")
    return str(path)


def _run(capsys, *argv):
    """Run bert-rec; return (exit code, stdout, stderr)."""
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _one_error_line(err):
    """The single 'bert-rec: error:' line of stderr (and proof that nothing else went wrong)."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("bert-rec: error:")]
    assert len(lines) == 1, err
    assert err.rstrip("\n").endswith(lines[0]), err  # the error is the last thing printed
    return lines[0]


# (file name, content, line, field, words the message must hold)
BAD_BEHAVIORS = {
    "malformed json": ("behaviors.jsonl", _jsonl([GOOD_JSON, '{"user_id": "u1", "item_id"']),
                       2, None, ["not valid JSON"]),
    "malformed csv quoting": ("behaviors.csv", HEADER + GOOD_CSV + 'u1,v0,view,1709287200,,"a"b\n',
                              4, None, ["cannot parse the CSV row"]),
    "csv column count": ("behaviors.csv", HEADER + GOOD_CSV + "u1,v0,view\n", 4, None,
                         ["expected 6 columns"]),
    "missing field": ("behaviors.jsonl", _jsonl([GOOD_JSON, _row(behavior=None)]), 2, "behavior",
                      ["missing"]),
    "rating five": ("behaviors.csv", HEADER + GOOD_CSV + "u1,v2,rate,1709287200,five,\n", 4,
                    "rating", ["expected a number", "'five'"]),
    "rating out of range": ("behaviors.jsonl", _jsonl([GOOD_JSON, _row(rating=11)]), 2, "rating",
                            ["outside the range 0 to 5"]),
    "future timestamp": ("behaviors.jsonl", _jsonl([_row(timestamp=FUTURE)]), 1, "timestamp",
                         ["in the future"]),
    "millisecond timestamp": ("behaviors.csv", HEADER + "u1,v0,view,1709287200000,,\n", 2,
                              "timestamp", ["milliseconds"]),
    "unparsable timestamp": ("behaviors.jsonl", _jsonl([_row(timestamp="昨天")]), 1, "timestamp",
                             ["cannot parse", "ISO-8601"]),
    "unknown item": ("behaviors.jsonl", _jsonl([GOOD_JSON, _row(item_id="v999")]), 2, "item_id",
                     ["'v999' is not in the items file"]),
    "unknown behavior": ("behaviors.csv", HEADER + "u1,v0,purchase,1709287200,,\n", 2, "behavior",
                         ["unknown behavior 'purchase'", "allowed: view, click, rate, comment"]),
    "invalid utf-8": ("behaviors.csv", (HEADER + GOOD_CSV).encode() + b"u1,v0,comment,1709287200,,"
                      b"\xe5\xa5\xbd\xff\n", 4, None, ["invalid UTF-8", "Save the file as UTF-8"]),
}


@pytest.mark.parametrize("case", sorted(BAD_BEHAVIORS))
def test_bad_behavior_row_is_one_line_naming_file_line_and_field(case, tiny_ckpt, items_file,
                                                                  tmp_path, capsys):
    name, content, line, field, words = BAD_BEHAVIORS[case]
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    code, out, err = _run(capsys, "recommend", "--model", tiny_ckpt, "--items", items_file,
                          "--behaviors", path)
    assert code == 2 and out == ""
    message = _one_error_line(err)
    assert f"{path} line {line}" in message
    if field:
        assert f"field '{field}'" in message
    for word in words:
        assert word in message
    assert "--on-error skip" in message  # what to do


def test_wrong_column_names_name_the_header_line_and_the_fix(tiny_ckpt, items_file, tmp_path,
                                                             capsys):
    path = tmp_path / "behaviors.csv"
    path.write_text("user,item_id,action,time\nu1,v0,view,1709287200\n", encoding="utf-8")
    code, _, err = _run(capsys, "recommend", "--model", tiny_ckpt, "--items", items_file,
                        "--behaviors", path, "--on-error", "skip")  # a bad header always stops
    assert code == 2
    message = _one_error_line(err)
    assert f"{path} line 1, field 'user_id'" in message
    assert "'user_id', 'behavior', 'timestamp' column" in message
    assert "Add the missing column(s)" in message


def test_duplicate_item_id_with_different_text(tiny_ckpt, tmp_path, capsys):
    items = tmp_path / "items.csv"
    items.write_text("item_id,title,text\nv0,红烧肉,家常菜\nv1,篮球,比赛\nv0,红烧肉,另一种做法\n",
                     encoding="utf-8")
    behaviors = tmp_path / "behaviors.csv"
    behaviors.write_text(HEADER + GOOD_CSV, encoding="utf-8")
    args = ["recommend", "--model", tiny_ckpt, "--items", items, "--behaviors", behaviors,
            "-k", "1"]
    code, _, err = _run(capsys, *args)
    assert code == 2
    message = _one_error_line(err)
    assert f"{items} line 4, field 'item_id'" in message
    assert "already appeared on line 2 with different content" in message
    code, out, err = _run(capsys, *args, "--on-error", "skip")
    assert code == 0 and "skipped 1 (1 duplicate item_id)" in err and "user u1:" in out


def test_skip_mode_counts_every_reason_and_recommends_from_the_rest(tiny_ckpt, items_file,
                                                                    tmp_path, capsys):
    rows = [GOOD_JSON, _row(item_id="v1", behavior="click"),
            '{"user_id": "u1", "item_id"',  # malformed
            '["u1", "v0"]',  # not an object
            _row(behavior=None), _row(user_id=""),  # missing x2
            _row(rating="five"),  # wrong type
            _row(rating=-1), _row(rating=6),  # out of range x2
            _row(timestamp=FUTURE),  # future
            _row(timestamp="not a time"),  # unparsable
            _row(item_id="v404"),  # unknown item
            _row(behavior="buy")]  # unknown behaviour
    path = tmp_path / "behaviors.jsonl"
    path.write_text(_jsonl(rows), encoding="utf-8")
    os.utime(path, (1_600_000_000, 1_600_000_000))
    before = [(p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode)
              for p in (path, tmp_path / "items.jsonl")]
    code, out, err = _run(capsys, "recommend", "--model", tiny_ckpt, "--items", items_file,
                          "--behaviors", path, "--on-error", "skip", "-k", "2", "--format", "json")
    assert code == 0 and "Traceback" not in err
    assert before == [(p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode)
                      for p in (path, tmp_path / "items.jsonl")]  # reading never modifies inputs
    summary = next(line for line in err.splitlines() if str(path) in line)
    assert summary.startswith(f"read 13 rows from {path}, kept 2, skipped 11 (")
    for count_reason in ("2 malformed row", "2 missing field", "1 wrong type",
                         "2 rating out of range", "1 future timestamp", "1 unparsable timestamp",
                         "1 unknown item_id", "1 unknown behavior"):
        assert count_reason in summary
    (result,) = [json.loads(line) for line in out.splitlines()]
    assert result["user_id"] == "u1" and len(result["items"]) == 2


# --------------------------------------------------------------------------- texts

WEIRD_TEXTS = {
    "empty": "", "whitespace": " \t\u3000 ", "emoji only": "😂😂👍🏻🇨🇳",
    "100k characters": "好看" * 50_000, "NUL bytes": "红烧\x00肉\x00", "lone surrogate": "\ud800好",
    "mixed scripts": "iPhone 15 真香 привет مرحبا שלום こんにちは 안녕",
    "traditional": "這個視頻讓我學會了紅燒肉的做法", "right-to-left marks": "\u200f\u202eشكرا\u202c 好看",
    "html and pii": "<b>我的手机</b> 13812345678，邮箱 zhang.san@example.com",
}


def test_odd_texts_never_crash_and_a_user_whose_texts_clean_to_nothing_is_served(
        tiny_ckpt, items_file, tmp_path, capsys):
    rows = [_row(user_id="nothing", item_id="v0", behavior="comment", text=""),
            _row(user_id="nothing", item_id="v1", behavior="comment", text="   "),
            _row(user_id="nothing", item_id="v2", behavior="comment", text="😂👍 [doge] @某人"),
            _row(user_id="nothing", item_id="v3", behavior="comment", text="\u200f\x00\u200b")]
    rows += [_row(user_id="odd", item_id=f"v{i % 8}", behavior="comment", text=text,
                  timestamp=1709287200 + i)
             for i, text in enumerate(WEIRD_TEXTS.values())]
    path = tmp_path / "behaviors.jsonl"  # ensure_ascii: the lone surrogate stays a JSON escape
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    code, out, err = _run(capsys, "recommend", "--model", tiny_ckpt, "--items", items_file,
                          "--behaviors", path, "-k", "3", "--format", "json", "--include-seen")
    assert code == 0, err
    results = {r["user_id"]: r for r in map(json.loads, out.splitlines())}
    assert set(results) == {"nothing", "odd"}
    for result in results.values():
        assert len(result["items"]) == 3
        assert all(np.isfinite(item["score"]) for item in result["items"])
        for item in result["items"]:
            for why in item["because"]:
                assert len(why["text"]) <= 2000  # the 100k text is cut
                assert not set(why["text"]) & {"\x00", "\u200f", "\u202e", "\ud800"}
    assert all(why["text"] == "" for item in results["nothing"]["items"]
               for why in item["because"])
    assert "13812345678" not in out and "zhang.san@example.com" not in out  # scrubbed
    for text in ("紅燒肉", "привет", "好看好看", "13812345678"):
        assert text not in err  # no behaviour text on stderr


def test_invalid_utf8_and_nul_bytes_in_a_csv_comment(tiny_ckpt, items_file, tmp_path, capsys):
    path = tmp_path / "behaviors.csv"
    path.write_bytes(HEADER.encode() + b"u1,v0,comment,1709287200,,\"\xe5\xa5\xbd\x00\x00\"\n"
                     b"u1,v1,comment,1709287300,,\"bad \xc3\x28 bytes\"\n"
                     b"u1,v2,view,1709287400,,\n")
    args = ["recommend", "--model", tiny_ckpt, "--items", items_file, "--behaviors", path,
            "-k", "2"]
    code, _, err = _run(capsys, *args)
    assert code == 2 and f"{path} line 3: invalid UTF-8" in _one_error_line(err)
    code, out, err = _run(capsys, *args, "--on-error", "skip")
    assert code == 0 and "kept 2, skipped 1 (1 malformed row)" in err and "user u1:" in out


# --------------------------------------------------------------------------- models


def _copy(src, dst, change):
    shutil.copytree(src, dst)
    change(str(dst))
    return str(dst)


def _truncate(name, size):
    def change(path):
        target = next(os.path.join(path, f) for f in sorted(os.listdir(path)) if name in f)
        with open(target, "r+b") as f:
            f.truncate(size)
    return change


def _edit_config(**changes):
    def change(path):
        with open(os.path.join(path, "bert_config.json"), encoding="utf-8") as f:
            config = json.load(f)
        with open(os.path.join(path, "bert_config.json"), "w", encoding="utf-8") as f:
            json.dump({**config, **changes}, f)
    return change


def _flip_bytes(path):
    data_file = next(os.path.join(path, f) for f in os.listdir(path) if ".data-" in f)
    with open(data_file, "r+b") as f:
        f.seek(200)
        block = f.read(64)
        f.seek(200)
        f.write(bytes(b ^ 0xFF for b in block))


def _non_bert(path):
    from bert_rec.backend import tf
    for name in os.listdir(path):
        if name.startswith("bert_model.ckpt"):
            os.remove(os.path.join(path, name))
    tf.train.Checkpoint(w=tf.Variable(np.zeros(3, np.float32))).write(
        os.path.join(path, "bert_model.ckpt"))


CHECKPOINT_DAMAGE = {
    "missing vocab": (lambda p: os.remove(os.path.join(p, "vocab.txt")),
                      ["missing vocab.txt", "copy the whole folder"]),
    "missing data file": (lambda p: [os.remove(os.path.join(p, f)) for f in os.listdir(p)
                                     if ".data-" in f], ["no bert_model.ckpt.data-*", "copy"]),
    "vocab size mismatch": (lambda p: open(os.path.join(p, "vocab.txt"), "a").write("多\n"),
                            ["lines but bert_config.json says vocab_size", "pass the vocab"]),
    "hidden size mismatch": (_edit_config(hidden_size=64), ["different models"]),
    "layer count mismatch": (_edit_config(num_hidden_layers=4),
                             ["has 2 transformer layers", "num_hidden_layers 4"]),
    "not a BERT config": (lambda p: open(os.path.join(p, "bert_config.json"), "w").write(
        '{"model_type": "gpt2"}'), ["not a BERT config"]),
    "non-BERT weights": (_non_bert, ["not a BERT checkpoint"]),
    "truncated data": (_truncate(".data-", 1000), ["truncated", "copy it again"]),
    "truncated index": (_truncate(".index", 40), ["cannot read the checkpoint", "copy them again"]),
    "corrupted data": (_flip_bytes, ["cannot load the weights", "copy the checkpoint again"]),
}


def _recommend_with(model, items_file, tmp_path, capsys):
    """``bert-rec recommend`` with a (damaged) model and good inputs: (code, stdout, the one
    error line)."""
    behaviors = tmp_path / "behaviors.csv"
    behaviors.write_text(HEADER + GOOD_CSV, encoding="utf-8")
    code, out, err = _run(capsys, "recommend", "--model", model, "--items", items_file,
                          "--behaviors", behaviors)
    return code, out, _one_error_line(err)


@pytest.mark.parametrize("case", sorted(CHECKPOINT_DAMAGE))
def test_broken_checkpoint_is_one_line(case, tiny_ckpt, items_file, tmp_path, capsys):
    change, words = CHECKPOINT_DAMAGE[case]
    code, out, message = _recommend_with(_copy(tiny_ckpt, tmp_path / "ckpt", change),
                                         items_file, tmp_path, capsys)
    assert code == 2 and out == ""
    for word in words:
        assert word in message


@pytest.fixture(scope="module")
def model_dir(tiny_ckpt, tmp_path_factory):
    from bert_rec.data import Item
    from bert_rec.recommend import Recommender
    out = tmp_path_factory.mktemp("robust") / "model"
    items = [Item(r["item_id"], r["title"], category=r["category"]) for r in ITEMS]
    return Recommender.load(tiny_ckpt).index_items(items).save(str(out))


def _pickled_vectors(path):
    np.save(os.path.join(path, "item_vectors.npy"), np.array([{"x": 1}], dtype=object),
            allow_pickle=True)


MODEL_DAMAGE = {
    "truncated head": (_truncate("head.npz", 100), ["head.npz: cannot read", "save or train"]),
    "missing item ids": (lambda p: os.remove(os.path.join(p, "item_ids.txt")),
                         ["item_ids.txt: missing", "save or train"]),
    "truncated item vectors": (_truncate("item_vectors.npy", 60),
                               ["item_vectors.npy: cannot read", "to re-encode"]),
    "pickled item vectors": (_pickled_vectors, ["pickled Python objects", "never loads"]),
}


@pytest.mark.parametrize("case", sorted(MODEL_DAMAGE))
def test_broken_model_directory_is_one_line(case, model_dir, items_file, tmp_path, capsys):
    change, words = MODEL_DAMAGE[case]
    code, _, message = _recommend_with(_copy(model_dir, tmp_path / "model", change),
                                       items_file, tmp_path, capsys)
    assert code == 2
    for word in words:
        assert word in message


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_output_written_in_chunks_of_users_is_the_same(fmt, tiny_ckpt, items_file, tmp_path,
                                                      capsys, monkeypatch):
    path = tmp_path / "behaviors.jsonl"
    path.write_text(_jsonl([_row(user_id=f"u{u}", item_id=f"v{(u + j) % 8}",
                                 timestamp=1709287200 + j) for u in range(5) for j in range(3)]),
                    encoding="utf-8")
    args = ["recommend", "--model", tiny_ckpt, "--items", items_file, "--behaviors", path,
            "-k", "2", "--format", fmt]
    outputs = []
    for chunk in (2048, 2):
        monkeypatch.setattr("bert_rec.commands.RECOMMEND_CHUNK", chunk)
        code, out, err = _run(capsys, *args)
        assert code == 0 and "recommended for 5 user(s)" in err
        outputs.append(out)
    assert "u4" in outputs[0]
    if fmt == "table":
        assert outputs[0] == outputs[1]
    else:  # the same results; scores may differ in the last float digits (other batch shapes)
        results = [[json.loads(line) for line in out.splitlines()] for out in outputs]
        for a, b in zip(*results):
            assert a["user_id"] == b["user_id"]
            assert [i["item_id"] for i in a["items"]] == [i["item_id"] for i in b["items"]]
            assert [i["score"] for i in a["items"]] == pytest.approx(
                [i["score"] for i in b["items"]], abs=1e-5)


def test_missing_input_file_and_output_directory(tiny_ckpt, items_file, tmp_path, capsys):
    code, _, err = _run(capsys, "recommend", "--model", tiny_ckpt, "--items", items_file,
                        "--behaviors", tmp_path / "nope.csv")
    assert code == 2
    assert "nope.csv: cannot open the file (No such file or directory). Check the path" in \
        _one_error_line(err)
    behaviors = tmp_path / "behaviors.csv"
    behaviors.write_text(HEADER + GOOD_CSV, encoding="utf-8")
    code, _, err = _run(capsys, "recommend", "--model", tiny_ckpt, "--items", items_file,
                        "--behaviors", behaviors, "--output", tmp_path)
    assert code == 2 and "is a directory; give a file name" in _one_error_line(err)
