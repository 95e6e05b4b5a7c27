"""Text from users' data cannot hijack the terminal: table output, JSON, errors, ids refused."""

import json

import pytest

from bert_rec.cli import main
from bert_rec.data import InputError, read_behaviors, read_items
from bert_rec.utils.terminal import UNSAFE, safe, safe_json

HOSTILE_TITLE = "\x1b[2J\x1b[31m红烧肉\x9b31m \u202egnp.exe"
HOSTILE_USER = "u\x1b[1m1"


def test_safe_escapes_controls_and_bidi_but_keeps_text():
    assert safe("\x1b[2J红烧肉") == "\\x1b[2J红烧肉"
    assert safe("a\u202eb\u2066c\x9bd\x7fe\u200f") == "a\\u202eb\\u2066c\\x9bd\\x7fe\\u200f"
    assert safe("line\nnext\tx") == "line\\x0anext\\x09x"
    assert safe("line\nnext", keep_newlines=True) == "line\nnext"
    plain = "篮球 比赛 🏀 iPhone 15 Pro，好看！\u200d"  # CJK, emoji, ZWJ stay
    assert safe(plain) == plain


def test_safe_json_is_the_same_value_and_inert():
    value = {"title": HOSTILE_TITLE, "n": 1, "nested": ["\u2028", "\x00"]}
    text = safe_json(value)
    assert json.loads(text) == value
    assert not UNSAFE.search(text)


def _write(path, lines):
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines),
                    encoding="utf-8")
    return str(path)


@pytest.fixture()
def hostile(tmp_path):
    items = _write(tmp_path / "items.jsonl", [
        {"item_id": "a", "title": HOSTILE_TITLE, "text": "家常菜 做法"},
        {"item_id": "b", "title": "篮球\x1b]0;pwned\x07比赛"},
        {"item_id": "c", "title": "小猫 萌宠"}, {"item_id": "d", "title": "手机 评测"}])
    behaviors = _write(tmp_path / "behaviors.jsonl", [
        {"user_id": "u1", "item_id": "a", "behavior": "view", "timestamp": 1.7e9},
        {"user_id": "u1", "item_id": "b", "behavior": "comment", "timestamp": 1.7e9 + 60,
         "text": "好看\x1b[5m 真的\u202e"},
        {"user_id": HOSTILE_USER, "item_id": "c", "behavior": "view", "timestamp": 1.7e9}])
    return ["--items", items, "--behaviors", behaviors]


def test_ids_with_control_characters_are_refused(hostile, capsys):
    with pytest.raises(InputError, match=r"line 3, field 'user_id': contains the control or "
                                         r"bidirectional-formatting character U\+001B at "
                                         r"position 2"):
        read_behaviors(hostile[3], item_ids={"a", "b", "c"})
    rows, report = read_behaviors(hostile[3], item_ids={"a", "b", "c"}, on_error="skip")
    assert [r.user_id for r in rows] == ["u1", "u1"]
    assert report.skipped == {"control character in id": 1}
    items = hostile[1].replace("items.jsonl", "items2.jsonl")
    with open(items, "w", encoding="utf-8") as f:
        f.write(json.dumps({"item_id": "x\u202ey", "title": "t"}) + "\n")
    with pytest.raises(InputError, match=r"field 'item_id'.*U\+202E at position 2"):
        read_items(items)


def test_recommend_prints_hostile_text_inert(tiny_ckpt, hostile, capsys):
    argv = ["recommend", "--model", tiny_ckpt, *hostile, "-k", "3", "--include-seen"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "control or bidirectional-formatting character U+001B" in err
    assert not UNSAFE.search(err.replace("\n", ""))
    assert main(argv + ["--on-error", "skip"]) == 0
    out, err = capsys.readouterr()
    assert "user u1:" in out and "\\x1b[2J\\x1b[31m红烧肉" in out and "\\u202e" in out
    assert "\\x1b]0;pwned\\x07" in out
    for stream in (out, err):
        assert not UNSAFE.search(stream.replace("\n", "")), repr(stream)
    assert "skipped 1 (1 control character in id)" in err
    assert main(argv + ["--on-error", "skip", "--format", "json"]) == 0
    out = capsys.readouterr().out
    assert not UNSAFE.search(out.replace("\n", ""))
    titles = {i["item_id"]: i["title"] for i in json.loads(out)["items"]}
    assert titles["a"] == HOSTILE_TITLE  # the JSON value itself is unchanged


def test_error_messages_are_inert(tiny_ckpt, hostile, capsys):
    argv = ["recommend", "--model", tiny_ckpt, *hostile, "--on-error", "skip",
            "--user", "\x1b[2J\u202emallory"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "no behaviours for user(s) \\x1b[2J\\u202emallory" in err
    assert not UNSAFE.search(err.replace("\n", ""))
