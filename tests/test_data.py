"""Tests for bert_rec.data: reading and checking the items and behaviours files."""

import gzip
import json
import os
import pickle
import subprocess
import sys
import time

import pytest

from bert_rec.data import (
    DEFAULT_BEHAVIORS,
    Behavior,
    InputError,
    Item,
    ReadReport,
    group_by_user,
    iter_records,
    read_behaviors,
    read_items,
)

JAN_1_2024 = 1704067200.0  # 2024-01-01T00:00:00Z
BEHAVIOR_HEADER = "user_id,item_id,behavior,timestamp,rating,text\n"


def write(tmp_path, name, content):
    """Write `content` (str as UTF-8, or bytes) to tmp_path/name, gzip-compressing for '.gz'."""
    data = content.encode("utf-8") if isinstance(content, str) else content
    path = tmp_path / name
    if name.endswith(".gz"):
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def jsonl(*records):
    """Return JSON Lines text for `records` (str records are written verbatim)."""
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records)


def event(**overrides):
    """Return a valid behaviour record with `overrides` applied (None removes a key)."""
    record = {"user_id": "u1", "item_id": "b1", "behavior": "view", "timestamp": "2024-01-01T00:00:00Z"}
    record.update(overrides)
    return {key: value for key, value in record.items() if value is not None}


# --------------------------------------------------------------------------- items


def test_items_jsonl_fields_tags_and_int_ids(tmp_path):
    path = write(tmp_path, "items.jsonl", jsonl(
        {"item_id": "b1", "title": "三体", "text": "科幻小说", "category": "科幻", "tags": ["刘慈欣", "小说"]},
        {"item_id": 7, "title": "", "tags": "a| b ||c"},
        {"item_id": "b3", "title": "活着", "extra": "ignored"},
    ))
    items, report = read_items(path)
    assert items == [
        Item("b1", "三体", "科幻小说", "科幻", ("刘慈欣", "小说")),
        Item("7", "", "", "", ("a", "b", "c")),
        Item("b3", "活着"),
    ]
    assert (report.rows, report.kept, sum(report.skipped.values())) == (3, 3, 0)


def test_item_full_text_skips_empty_parts():
    assert Item("b1", "三体", "", "科幻", ("刘慈欣", "小说")).full_text() == "三体 科幻 刘慈欣 小说"
    assert Item("b2", "", "desc").full_text() == "desc"


def test_items_csv_with_pipe_tags_and_optional_columns(tmp_path):
    path = write(tmp_path, "items.csv",
                 "item_id,title,text,category,tags\n"
                 'b1,三体,"地球, 三体",科幻,刘慈欣|小说\n'
                 "b2,,,,\n")
    items, _ = read_items(path)
    assert items == [Item("b1", "三体", "地球, 三体", "科幻", ("刘慈欣", "小说")), Item("b2", "")]


def test_items_csv_needs_only_required_columns(tmp_path):
    path = write(tmp_path, "items.csv", "title,item_id\nHello,b1\n")
    assert read_items(path)[0] == [Item("b1", "Hello")]


@pytest.mark.parametrize("name", ["items.jsonl.gz", "items.json.gz", "items.csv.gz"])
def test_items_gzip(tmp_path, name):
    content = ("item_id,title,tags\nb1,三体,a|b\n" if ".csv" in name
               else jsonl({"item_id": "b1", "title": "三体", "tags": ["a", "b"]}))
    items, _ = read_items(write(tmp_path, name, content))
    assert items == [Item("b1", "三体", tags=("a", "b"))]


def test_utf8_byte_order_mark_is_ignored(tmp_path):
    path = write(tmp_path, "items.csv", "\ufeffitem_id,title\nb1,三体\n")
    assert read_items(path)[0] == [Item("b1", "三体")]


def test_exact_duplicate_item_is_dropped_silently(tmp_path):
    row = {"item_id": "b1", "title": "三体"}
    items, report = read_items(write(tmp_path, "items.jsonl", jsonl(row, row)))
    assert items == [Item("b1", "三体")]
    assert report.skipped == {"duplicate": 1}
    assert report.examples == []


def test_duplicate_item_id_with_different_content_raises(tmp_path):
    path = write(tmp_path, "items.jsonl", jsonl({"item_id": "b1", "title": "a"}, {"item_id": "b1", "title": "b"}))
    with pytest.raises(InputError) as info:
        read_items(path)
    assert "items.jsonl line 2, field 'item_id'" in str(info.value)
    assert "line 1" in str(info.value)
    assert info.value.kind == "duplicate item_id"


# --------------------------------------------------------------------------- behaviours


@pytest.mark.parametrize("value, expected", [
    ("2024-01-01T00:00:00Z", JAN_1_2024),
    ("2024-01-01T00:00:00", JAN_1_2024),
    ("2024-01-01 00:00:00", JAN_1_2024),
    ("2024-01-01T08:00:00+08:00", JAN_1_2024),
    ("2024-01-01T00:00:00+08:00", JAN_1_2024 - 8 * 3600),
    ("2024-01-01T00:00:00.5Z", JAN_1_2024 + 0.5),
    (1704067200, JAN_1_2024),
    (1704067200.25, JAN_1_2024 + 0.25),
    ("1704067200", JAN_1_2024),
    ("1704067200.5", JAN_1_2024 + 0.5),
])
def test_timestamp_formats_jsonl(tmp_path, value, expected):
    behaviors, _ = read_behaviors(write(tmp_path, "behaviors.jsonl", jsonl(event(timestamp=value))))
    assert behaviors[0].timestamp == expected
    assert isinstance(behaviors[0].timestamp, float)


def test_behaviors_csv_values(tmp_path):
    path = write(tmp_path, "behaviors.csv", BEHAVIOR_HEADER
                 + "u1,b1,rate,2024-01-01T00:00:00Z,4.5,\n"
                 + "u1,b2,comment,1704067200,,\"好看, 推荐\"\n"
                 + "u2,b1,view,2024-01-01 08:00:00+08:00,,\n")
    behaviors, report = read_behaviors(path)
    source = os.fspath(path)
    assert behaviors == [
        Behavior("u1", "b1", "rate", JAN_1_2024, 4.5, "", source=source, line=2),
        Behavior("u1", "b2", "comment", JAN_1_2024, None, "好看, 推荐", source=source, line=3),
        Behavior("u2", "b1", "view", JAN_1_2024, None, "", source=source, line=4),
    ]
    assert report.summary() == f"read 3 rows from {source}, kept 3"


def test_behaviors_jsonl_rating_text_and_int_ids(tmp_path):
    path = write(tmp_path, "behaviors.jsonl", jsonl(
        event(user_id=42, rating=5, text="搜索 科幻"),
        event(rating=None),
        event(rating="3"),
    ))
    behaviors, _ = read_behaviors(path)
    assert [(b.user_id, b.rating, b.text) for b in behaviors] == [("42", 5.0, "搜索 科幻"), ("u1", None, ""),
                                                                  ("u1", 3.0, "")]


def test_behaviors_csv_gz(tmp_path):
    path = write(tmp_path, "behaviors.csv.gz", BEHAVIOR_HEADER + "u1,b1,click,1704067200,,\n")
    behaviors, _ = read_behaviors(path)
    assert [(b.behavior, b.timestamp) for b in behaviors] == [("click", JAN_1_2024)]


def test_extra_behavior_names_when_configured(tmp_path):
    path = write(tmp_path, "behaviors.jsonl", jsonl(event(behavior="search"), event(behavior="Click")))
    with pytest.raises(InputError, match="unknown behavior 'search'"):
        read_behaviors(path)
    behaviors, _ = read_behaviors(path, behaviors=DEFAULT_BEHAVIORS + ("search",))
    assert [b.behavior for b in behaviors] == ["search", "click"]


def test_item_ids_filter_accepts_known_items(tmp_path):
    path = write(tmp_path, "behaviors.jsonl", jsonl(event(item_id="b1"), event(item_id=2)))
    behaviors, _ = read_behaviors(path, item_ids=["b1", "2"])
    assert [b.item_id for b in behaviors] == ["b1", "2"]


def test_custom_rating_range(tmp_path):
    path = write(tmp_path, "behaviors.jsonl", jsonl(event(rating=9)))
    assert read_behaviors(path, rating_range=(1, 10))[0][0].rating == 9.0
    assert read_behaviors(path, rating_range=None)[0][0].rating == 9.0


# --------------------------------------------------------------------------- errors

FUTURE = time.time() + 3 * 86400

# (file name, content, expected line, expected field, expected kind, text in message)
ERROR_CASES = {
    "malformed json": ("behaviors.jsonl", jsonl(event(), "", '{"user_id": "u1",'), 3, None,
                       "malformed row", "not valid JSON"),
    "json not an object": ("behaviors.jsonl", jsonl(event(), '["u1", "b1"]'), 2, None,
                           "malformed row", "JSON array"),
    "csv column count": ("behaviors.csv", BEHAVIOR_HEADER + "u1,b1,view,1704067200,,\nu1,b1,view,1,2\n", 3, None,
                         "malformed row", "expected 6 columns"),
    "csv bad quoting": ("behaviors.csv", BEHAVIOR_HEADER + 'u1,b1,view,1704067200,,"a"b\n', 2, None,
                        "malformed row", "cannot parse the CSV row"),
    "missing user_id": ("behaviors.jsonl", jsonl(event(), event(user_id="  ")), 2, "user_id",
                        "missing field", "missing"),
    "missing timestamp csv": ("behaviors.csv", BEHAVIOR_HEADER + "u1,b1,view,,,\n", 2, "timestamp",
                              "missing field", "missing"),
    "item_id a list": ("behaviors.jsonl", jsonl(event(item_id=["b1"])), 1, "item_id",
                       "wrong type", "found a list"),
    "rating five": ("behaviors.csv", BEHAVIOR_HEADER + "u1,b1,rate,1704067200,five,\n", 2, "rating",
                    "wrong type", "'five'"),
    "rating bool": ("behaviors.jsonl", jsonl(event(rating=True)), 1, "rating", "wrong type", "number"),
    "rating out of range": ("behaviors.jsonl", jsonl(event(rating=6)), 1, "rating",
                            "rating out of range", "outside the range 0 to 5"),
    "unparsable timestamp": ("behaviors.csv", BEHAVIOR_HEADER + "u1,b1,view,yesterday,,\n", 2, "timestamp",
                             "unparsable timestamp", "cannot parse 'yesterday' as ISO-8601 or Unix seconds"),
    "future timestamp": ("behaviors.jsonl", jsonl(event(timestamp=FUTURE)), 1, "timestamp",
                         "future timestamp", "future"),
    "milliseconds": ("behaviors.jsonl", jsonl(event(timestamp=1704067200000)), 1, "timestamp",
                     "future timestamp", "milliseconds"),
    "unknown behavior": ("behaviors.jsonl", jsonl(event(behavior="buy")), 1, "behavior",
                         "unknown behavior", "allowed: view, click, rate, comment (the allowed names are configurable)"),
    "item missing title": ("items.jsonl", jsonl({"item_id": "b1"}), 1, "title", "missing field", "missing"),
    "item tags wrong type": ("items.jsonl", jsonl({"item_id": "b1", "title": "", "tags": [1, 2]}), 1, "tags",
                             "wrong type", "list of strings"),
    "item title number": ("items.jsonl", jsonl({"item_id": "b1", "title": 5}), 1, "title",
                          "wrong type", "expected a string"),
    "item id float": ("items.jsonl", jsonl({"item_id": 1.5, "title": ""}), 1, "item_id",
                      "wrong type", "string or integer"),
}


def read_any(path, **kwargs):
    """Read `path` as items or behaviours depending on its name."""
    reader = read_items if path.name.startswith("items") else read_behaviors
    return reader(path, **kwargs)


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_bad_row_raises_with_file_line_and_field(tmp_path, case):
    name, content, line, field, kind, text = ERROR_CASES[case]
    with pytest.raises(InputError) as info:
        read_any(write(tmp_path, name, content))
    error, message = info.value, str(info.value)
    assert (error.line, error.field, error.kind) == (line, field, kind)
    assert f"{name} line {line}" in message
    if field is not None:
        assert f"field '{field}'" in message
    assert text in message
    assert "--on-error skip" in message


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_bad_row_is_counted_in_skip_mode(tmp_path, case):
    name, content, line, field, kind, text = ERROR_CASES[case]
    rows, report = read_any(write(tmp_path, name, content), on_error="skip")
    assert report.skipped == {kind: 1}
    assert report.kept == len(rows) == report.rows - 1
    assert f"line {line}" in report.examples[0]


def test_message_format_matches_documented_example(tmp_path):
    path = write(tmp_path, "behaviors.csv", BEHAVIOR_HEADER + "u1,b1,view,1704067200,,\n" * 10
                 + "u1,b1,view,yesterday,,\n")
    with pytest.raises(InputError) as info:
        read_behaviors(path)
    assert str(info.value) == (
        f"{path} line 12, field 'timestamp': cannot parse 'yesterday' as ISO-8601 or Unix seconds. "
        "Fix the row, or rerun with --on-error skip to skip bad rows.")


def test_unknown_item_id(tmp_path):
    path = write(tmp_path, "behaviors.jsonl", jsonl(event(item_id="b1"), event(item_id="nope")))
    with pytest.raises(InputError) as info:
        read_behaviors(path, item_ids={"b1"})
    assert (info.value.line, info.value.field, info.value.kind) == (2, "item_id", "unknown item_id")
    assert "behaviors.jsonl line 2, field 'item_id': item_id 'nope'" in str(info.value)


@pytest.mark.parametrize("name", ["behaviors.jsonl", "behaviors.csv"])
def test_invalid_utf8_names_the_line(tmp_path, name):
    good = (jsonl(event()) if name.endswith(".jsonl") else BEHAVIOR_HEADER + "u1,b1,view,1704067200,,\n").encode()
    bad = (b'{"user_id": "u\xff", "item_id": "b1", "behavior": "view", "timestamp": 1}\n'
           if name.endswith(".jsonl") else b"u\xff,b1,view,1704067200,,\n")
    path = write(tmp_path, name, good + bad + good.splitlines(keepends=True)[-1])
    with pytest.raises(InputError) as info:
        read_behaviors(path)
    line = 2 if name.endswith(".jsonl") else 3
    assert f"{name} line {line}: invalid UTF-8" in str(info.value)
    behaviors, report = read_behaviors(path, on_error="skip")
    assert len(behaviors) == 2 and report.skipped == {"malformed row": 1}


def test_csv_header_missing_column_lists_expected(tmp_path):
    path = write(tmp_path, "behaviors.csv", "user_id,item_id,timestamp\nu1,b1,1\n")
    for on_error in ("raise", "skip"):  # a broken header always raises
        with pytest.raises(InputError) as info:
            read_behaviors(path, on_error=on_error)
        message = str(info.value)
        assert "behaviors.csv line 1, field 'behavior'" in message
        assert "user_id, item_id, behavior, timestamp, rating, text" in message


def test_csv_header_repeated_column(tmp_path):
    path = write(tmp_path, "items.csv", "item_id,title,item_id\nb1,a,b2\n")
    with pytest.raises(InputError, match="items.csv line 1, field 'item_id'"):
        read_items(path)


def test_csv_line_numbers_with_quoted_newlines(tmp_path):
    path = write(tmp_path, "behaviors.csv", BEHAVIOR_HEADER
                 + 'u1,b1,comment,1704067200,,"first line\nsecond line\n\nfourth"\n'
                 + "\n"
                 + "u1,b1,view,1704067200,,\n"
                 + "u1,b1,view,never,,\n")
    with pytest.raises(InputError) as info:
        read_behaviors(path)
    assert info.value.line == 8
    behaviors, _ = read_behaviors(path, on_error="skip")
    assert [b.line for b in behaviors] == [2, 7]
    assert behaviors[0].text == "first line\nsecond line\n\nfourth"


def test_skip_mode_counts_reasons_and_keeps_good_rows(tmp_path):
    path = write(tmp_path, "behaviors.csv", BEHAVIOR_HEADER
                 + "u1,b1,view,1704067200,,\n"
                 + "u1,zz,view,1704067200,,\n"
                 + "u2,b2,click,soon,,\n"
                 + "u2,b2,rate,1704067200,7,\n"
                 + "u3,zz,view,1704067200,,\n"
                 + "u3,b2,buy,1704067200,,\n"
                 + "u3,zz,view,1704067200,,\n"
                 + "u3,b2,rate,1704067200,4,nice\n"
                 + "u4,b1,view,1,2\n")
    behaviors, report = read_behaviors(path, on_error="skip", item_ids={"b1", "b2"})
    assert [(b.user_id, b.line) for b in behaviors] == [("u1", 2), ("u3", 9)]
    assert report.skipped == {"unknown item_id": 3, "unparsable timestamp": 1, "rating out of range": 1,
                              "unknown behavior": 1, "malformed row": 1}
    assert (report.rows, report.kept) == (9, 2)
    assert len(report.examples) == 5 and "line 3" in report.examples[0]
    assert report.summary() == (
        f"read 9 rows from {path}, kept 2, skipped 7 (3 unknown item_id, 1 unparsable timestamp, "
        "1 rating out of range, 1 unknown behavior, 1 malformed row)")


def test_report_summary_example():
    report = ReadReport("behaviors.csv", rows=1000, kept=990)
    report.skipped.update({"unparsable timestamp": 3, "unknown item_id": 7})
    assert report.summary() == "read 1000 rows from behaviors.csv, kept 990, skipped 10 " \
                               "(7 unknown item_id, 3 unparsable timestamp)"


# --------------------------------------------------------------------------- files and options


def test_unknown_extension_lists_accepted(tmp_path):
    path = write(tmp_path, "items.txt", "item_id,title\n")
    with pytest.raises(InputError) as info:
        read_items(path)
    assert "items.txt" in str(info.value)
    assert ".jsonl, .json, .csv" in str(info.value) and ".csv.gz" in str(info.value)


def test_damaged_gzip_raises_input_error(tmp_path):
    path = tmp_path / "items.jsonl.gz"
    path.write_bytes(b"this is not gzip")
    with pytest.raises(InputError, match="items.jsonl.gz line 1: cannot read the file"):
        read_items(path, on_error="skip")


def test_truncated_gzip_raises_input_error(tmp_path):
    path = tmp_path / "items.jsonl.gz"
    path.write_bytes(gzip.compress(jsonl(*({"item_id": str(i), "title": "t" * 50} for i in range(200))).encode())[:-20])
    with pytest.raises(InputError, match="cannot read the file"):
        read_items(path)


def test_invalid_on_error_value(tmp_path):
    path = write(tmp_path, "items.jsonl", jsonl({"item_id": "b1", "title": ""}))
    with pytest.raises(ValueError, match="on_error"):
        read_items(path, on_error="ignore")
    with pytest.raises(ValueError, match="on_error"):
        read_behaviors(path, on_error="warn")


def test_reading_leaves_the_file_unchanged(tmp_path):
    path = write(tmp_path, "behaviors.csv", BEHAVIOR_HEADER + "u1,b1,view,1704067200,,\nu1,b1,view,bad,,\n")
    os.utime(path, (1_600_000_000, 1_600_000_000))
    before = (path.read_bytes(), path.stat().st_mtime_ns, path.stat().st_mode)
    read_behaviors(path, on_error="skip")
    with pytest.raises(InputError):
        read_behaviors(path)
    assert (path.read_bytes(), path.stat().st_mtime_ns, path.stat().st_mode) == before


def test_iter_records_line_numbers(tmp_path):
    path = write(tmp_path, "items.jsonl", "\n" + jsonl({"item_id": "a", "title": ""}) + "  \n"
                 + jsonl({"item_id": "b", "title": ""}))
    assert [(line, rec["item_id"]) for line, rec in iter_records(path)] == [(2, "a"), (4, "b")]
    csv_path = write(tmp_path, "items.csv", 'item_id,title\na,"x\ny"\n\nb,z\n')
    assert list(iter_records(csv_path)) == [(2, {"item_id": "a", "title": "x\ny"}),
                                            (5, {"item_id": "b", "title": "z"})]


def test_empty_files_give_no_rows(tmp_path):
    for name in ("items.csv", "items.jsonl"):
        items, report = read_items(write(tmp_path, name, ""))
        assert items == [] and report.rows == 0


def test_input_error_pickles():
    error = InputError("a.csv", 3, "rating", "bad", kind="wrong type")
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.line, copy.field, copy.kind) == (str(error), 3, "rating", "wrong type")


def test_data_module_does_not_import_tensorflow():
    code = "import sys, bert_rec.data; sys.exit('tensorflow' in sys.modules)"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    assert subprocess.run([sys.executable, "-c", code], cwd=root).returncode == 0


# --------------------------------------------------------------------------- grouping


def test_group_by_user_sorts_by_time_keeping_input_order_on_ties():
    def make(user, item, ts):
        return Behavior(user, item, "view", ts)

    events = [make("u1", "c", 30.0), make("u2", "x", 5.0), make("u1", "a", 10.0),
              make("u1", "b1", 20.0), make("u1", "b2", 20.0), make("u1", "b0", 20.0)]
    groups = group_by_user(events)
    assert list(groups) == ["u1", "u2"]
    assert [b.item_id for b in groups["u1"]] == ["a", "b1", "b2", "b0", "c"]
    assert [b.item_id for b in groups["u2"]] == ["x"]
