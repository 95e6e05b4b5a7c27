"""Property-based tests (hypothesis, profile "bert_rec" in conftest.py: derandomized, no deadline).

Text pipeline: ``normalize``/``words`` never raise, ``normalize`` is idempotent (which also
means no PII pattern survives it: a surviving one would be removed by a second pass), and the
output holds only the input's own characters -- see ``allowed_chars`` for exactly which -- or
spaces. Readers: any file, JSONL or CSV, gives rows or an InputError, never another exception,
and is left unchanged.
"""

import csv
import html
import io
import json
import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bert_rec.data import InputError, read_behaviors, read_items
from bert_rec.text import TextConfig, TextPipeline

PIPE = TextPipeline()
RAW = TextPipeline(TextConfig(scrub_pii=False, lowercase=False, remove_stopwords=False))

# Pieces the pipeline treats specially, mixed into arbitrary text so every step gets exercised.
SPECIAL = ["&amp;", "&lt;b&gt;", "&#x4e2d;", "&#0;", "&amp;lt;", "<br/>", "<b>", "</p>", "<!--",
           "-->", "http://t.cn/Ab1?x=1", "www.qq.com", "@张三", "#美食#", "[doge]", "😂", "👍🏻",
           "🇨🇳", "\u200f", "\u202e", "\u200b", "\x00", "\ufeff", "\t", "\n", "\u3000",
           "13812345678", "+86 139-1234-5678", "010-12345678", "li@x.cn", "11010519491231002X",
           "6222 0202 0001 2345", "微信是 abc_123", "qq:12345678", "建国路88号", "3栋2单元501",
           "ＡＢＣ１２３", "İ", "ΑΣ ", "ﬁ", "①", "e\u0301", "\ud800", "繁體", "שלום", "مرحبا"]
TEXTS = st.lists(st.one_of(st.text(max_size=20), st.sampled_from(SPECIAL),
                           st.text(st.characters(codec=None), max_size=5)),  # incl. surrogates
                 max_size=12).map("".join)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_TAG = re.compile(r"<[^<>]*>")


def _unescape_all(text):
    """html.unescape until nothing changes (the pipeline unescapes doubly escaped text too)."""
    for _ in range(10):
        unescaped = html.unescape(text)
        if unescaped == text:
            break
        text = unescaped
    return text


def _drop_format_chars(text):
    """Remove Cc/Cf/Cs characters (the pipeline's step 1), so entities split by them join."""
    return "".join(c for c in text if unicodedata.category(c) not in ("Cc", "Cf", "Cs"))


def allowed_chars(text):
    """Every character ``normalize(text)`` may contain, after Unicode decomposition (NFKD):

    the characters of the input, and of the input's HTML character references (``&amp;`` ->
    ``&``, ``&#x4e2d;`` -> ``中``, also once format characters or tags between their pieces
    are gone), closed under compatibility decomposition (NFKD: full-width -> ASCII, ``ﬁ`` -> ``fi``,
    ``①`` -> ``1``) and lowercasing (incl. the final sigma ``ς``); plus the space, which
    replaces everything the pipeline removes.
    """
    sources = [text, _drop_format_chars(text), _TAG.sub("", _drop_format_chars(text))]
    chars = set(" ")
    for source in sources:
        chars |= set(source) | set(_unescape_all(source))
    pending = list(chars)
    while pending:
        char = pending.pop()
        for derived in (unicodedata.normalize("NFKD", char), char.lower(), char.upper().lower()):
            for new in set(derived) - chars:
                chars.add(new)
                pending.append(new)
    if "σ" in chars:
        chars.add("ς")
    return chars


@given(TEXTS)
def test_normalize_never_raises_is_idempotent_and_uses_only_input_characters(text):
    for pipe in (PIPE, RAW):
        once = pipe.normalize(text)
        assert isinstance(once, str)
        assert pipe.normalize(once) == once
        assert once == once.strip() and "  " not in once and len(once) <= pipe.config.max_chars
    assert set(unicodedata.normalize("NFKD", PIPE.normalize(text))) <= allowed_chars(text)
    assert not _CONTROL.search(PIPE.normalize(text))


@settings(max_examples=60)
@given(TEXTS)
def test_words_never_raise_and_are_pieces_of_the_normalised_text(text):
    normalized = PIPE.normalize(text)
    words = PIPE.words(text)
    assert all(isinstance(w, str) and w.strip() == w and w for w in words)
    assert all(w in normalized for w in words)
    assert PIPE.clean(text) == " ".join(words)


@given(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.binary(max_size=20),
                 st.lists(st.text(max_size=5), max_size=3), st.dictionaries(st.text(), st.text())))
def test_normalize_accepts_any_value(value):
    result = PIPE.normalize(value)
    assert isinstance(result, str) and PIPE.normalize(result) == result


# --------------------------------------------------------------------------- readers

ITEM_KEYS = ["item_id", "title", "text", "category", "tags", "other"]
BEHAVIOR_KEYS = ["user_id", "item_id", "behavior", "timestamp", "rating", "text"]
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), TEXTS,
              st.sampled_from(["view", "CLICK", "rate", "2024-03-01T10:00:00+08:00", "1709287200",
                               "5", "-1", "nan", "1e400", "b1", "u1"])),
    lambda inner: st.lists(inner, max_size=3), max_leaves=5)
CSV_CELLS = st.one_of(TEXTS, st.sampled_from(["", "view", "rate", "2024-03-01", "1709287200",
                                              "5", "five", "b1", "a|b||c", '"', "\r\n"]))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("properties")


def _read_all(path):
    """Read ``path`` as items and as behaviours, both error modes; check the file is unchanged."""
    before = path.read_bytes()
    for reader in (read_items, read_behaviors):
        for on_error in ("raise", "skip"):
            try:
                rows, report = reader(path, on_error=on_error)
            except InputError as error:
                assert str(path) in str(error)
                continue
            assert report.kept == len(rows) <= report.rows
            assert report.rows - report.kept >= sum(report.skipped.values()) - report.skipped[
                "duplicate"]
    assert path.read_bytes() == before


def _csv_text(header, rows):
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return out.getvalue()


@given(st.binary(max_size=300), st.sampled_from(["f.jsonl", "f.csv"]))
def test_readers_on_arbitrary_bytes(workdir, data, name):
    path = workdir / name
    path.write_bytes(data)
    _read_all(path)


@given(st.lists(st.dictionaries(st.sampled_from(ITEM_KEYS + BEHAVIOR_KEYS), JSON_VALUES,
                                max_size=8), max_size=6),
       st.booleans())
def test_readers_on_arbitrary_json_lines(workdir, records, ascii_only):
    path = workdir / "f.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=ascii_only) + "\n" for r in records),
                    encoding="utf-8", errors="surrogatepass")
    _read_all(path)


@given(st.lists(st.sampled_from(ITEM_KEYS + BEHAVIOR_KEYS + ["", "x"]), max_size=8),
       st.lists(st.lists(CSV_CELLS, max_size=8), max_size=6))
def test_readers_on_arbitrary_csv(workdir, header, rows):
    path = workdir / "f.csv"
    path.write_text(_csv_text(header, rows), encoding="utf-8", errors="surrogatepass")
    _read_all(path)


@given(st.lists(st.text(max_size=30), max_size=5), st.sampled_from(["f.jsonl", "f.csv"]))
def test_readers_on_arbitrary_lines(workdir, lines, name):
    path = workdir / name
    path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    _read_all(path)


def test_profile_is_deterministic():
    assert settings().derandomize and settings().deadline is None and settings().database is None
