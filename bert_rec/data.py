"""Read the item catalogue and the user-behaviour log.

Both inputs are UTF-8 text files in one of two formats, chosen by extension:

* JSON Lines (``.jsonl`` or ``.json``): one JSON object per line.
* CSV (``.csv``): the first row is the header naming the columns; fields that
  contain commas, quotes or newlines are wrapped in double quotes, and a quote
  inside such a field is written twice (``""``).

Either format may be gzip-compressed by appending ``.gz``
(``items.jsonl.gz``, ``behaviors.csv.gz``). Blank lines are ignored, a UTF-8
byte-order mark is allowed, and unknown keys or columns are ignored.

Items file
----------
==========  ========  =======================================================
field       required  meaning
==========  ========  =======================================================
item_id     yes       unique id; a string (integers in JSON are accepted)
title       yes       the key/column must exist; the value may be empty
text        no        description
category    no        category name
tags        no        JSON: list of strings, or one string ``"a|b|c"``;
                      CSV: one ``|``-separated string ``a|b|c``
==========  ========  =======================================================

Ids (item_id, user_id) must not contain control characters (tab and newline included) or
bidirectional formatting characters (U+202E and friends): such a row is refused
("control character in id"), since the id would rewrite a terminal or look like another id.
Each item_id may appear once. An exact repeat of an earlier row is dropped
(counted as "duplicate"); the same id with different content is an error.
An item's feature text is its title, text, category and tags joined by spaces.

Behaviours file
---------------
==========  ========  =======================================================
field       required  meaning
==========  ========  =======================================================
user_id     yes       a string (integers in JSON are accepted)
item_id     yes       must be an item_id of the items file
behavior    yes       view, click, rate or comment, plus any extra names
                      configured; matched ignoring case
timestamp   yes       ISO-8601 (``2024-03-05T12:00:00``, ``2024-03-05
                      12:00:00``, optionally with ``Z`` or an offset such as
                      ``+08:00``; no offset means UTC) or Unix seconds (a JSON
                      number or a numeric string); at most one day in the
                      future
rating      no        a number within the rating range (default 0 to 5);
                      empty or missing means no rating
text        no        what the user wrote: a comment, review or search query
==========  ========  =======================================================

Examples::

    {"item_id": "b1", "title": "三体", "category": "科幻", "tags": ["刘慈欣", "小说"]}
    {"user_id": "u1", "item_id": "b1", "behavior": "rate", "timestamp": "2024-03-05T12:00:00+08:00", "rating": 5}

    item_id,title,text,category,tags
    b1,三体,"地球文明与三体文明的故事",科幻,刘慈欣|小说
    user_id,item_id,behavior,timestamp,rating,text
    u1,b1,comment,1709611200,,"写得真好"

Errors
------
Every row is checked as it is read. A bad row is reported with the file, the
line (the line the row starts on; line 1 is the CSV header or the first JSON
line), the field, the reason and what to do. With ``on_error="raise"`` (the
default) the first bad row stops reading with an :class:`InputError`; with
``on_error="skip"`` bad rows are left out and counted by reason in the
:class:`ReadReport`. Problems with the whole file (an unknown extension, a
CSV header without a required column, a damaged gzip stream, a file that can't be
opened) always raise. Messages never quote the value of a behaviour's ``user_id`` or
``text`` (personal data) unless ``read_behaviors(..., verbose=True)``. Files are only ever
opened for reading.
"""

from __future__ import annotations

import codecs
import collections
import csv
import gzip
import json
import math
import os
import time
import zlib
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, BinaryIO, TypeVar

from .utils.terminal import first_unsafe

__all__ = [
    "DEFAULT_BEHAVIORS",
    "Behavior",
    "InputError",
    "Item",
    "ReadReport",
    "group_by_user",
    "iter_records",
    "read_behaviors",
    "read_items",
]

DEFAULT_BEHAVIORS = ("view", "click", "rate", "comment")
ON_ERROR_CHOICES = ("raise", "skip")
ACCEPTED_EXTENSIONS = (".jsonl", ".json", ".csv", ".jsonl.gz", ".json.gz", ".csv.gz", ".parquet")
TAG_SEPARATOR = "|"
MAX_FUTURE_SECONDS = 24 * 60 * 60
MAX_EXAMPLES = 5

ITEM_FIELDS = ("item_id", "title", "text", "category", "tags")
ITEM_REQUIRED = ("item_id", "title")
BEHAVIOR_FIELDS = ("user_id", "item_id", "behavior", "timestamp", "rating", "text")
BEHAVIOR_REQUIRED = ("user_id", "item_id", "behavior", "timestamp")

# Reasons: the keys of ReadReport.skipped.
MALFORMED = "malformed row"
MISSING = "missing field"
WRONG_TYPE = "wrong type"
RATING_OUT_OF_RANGE = "rating out of range"
BAD_TIMESTAMP = "unparsable timestamp"
FUTURE_TIMESTAMP = "future timestamp"
UNKNOWN_BEHAVIOR = "unknown behavior"
UNKNOWN_ITEM = "unknown item_id"
DUPLICATE_ITEM_ID = "duplicate item_id"
DUPLICATE = "duplicate"
CONTROL_IN_ID = "control character in id"

SKIP_HINT = "Fix the row, or rerun with --on-error skip to skip bad rows."
ENCODING_HINT = "Save the file as UTF-8, or rerun with --on-error skip to skip bad rows."
READ_HINT = "Check that the file is complete and that a .gz file really is gzip-compressed."
OPEN_HINT = "Check the path and that the file is readable."
HIDDEN = "(value hidden: it may be personal data; rerun with --verbose to show it)"
PRIVATE_FIELDS = ("text",)  # behaviour fields whose values error messages don't quote

_FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet"}

T = TypeVar("T")


# --------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Item:
    """One catalogue entry."""

    item_id: str
    title: str
    text: str = ""
    category: str = ""
    tags: tuple[str, ...] = ()

    def full_text(self) -> str:
        """Return the feature text: title, text, category and tags, non-empty parts joined by spaces."""
        return " ".join(part for part in (self.title, self.text, self.category, *self.tags) if part)


@dataclass(frozen=True, slots=True)
class Behavior:
    """One user action on one item; ``source`` and ``line`` say where it was read."""

    user_id: str
    item_id: str
    behavior: str
    timestamp: float
    rating: float | None = None
    text: str = ""
    source: str = ""
    line: int = 0


class InputError(ValueError):
    """One bad input row: file, line, field, reason, and what to do."""

    def __init__(self, path, line, field, reason, hint=None, *, kind=MALFORMED):
        self.path = os.fspath(path)
        self.line = line
        self.field = field
        self.reason = str(reason).rstrip(". ")
        self.hint = SKIP_HINT if hint is None else hint
        self.kind = kind
        super().__init__(self._message())

    def _message(self) -> str:
        """Build 'FILE line N, field 'F': REASON. HINT'."""
        where = self.path
        if self.line is not None:
            where += f" line {self.line}"
        if self.field is not None:
            where += f", field {self.field!r}"
        message = f"{where}: {self.reason}."
        return f"{message} {self.hint}" if self.hint else message

    def __reduce__(self):
        """Pickle by constructor arguments (the default would pass only the message)."""
        args = (self.path, self.line, self.field, self.reason, self.hint)
        return (self.__class__, args, {"kind": self.kind})


@dataclass
class ReadReport:
    """What reading one file did: rows seen, rows kept, and skipped rows by reason."""

    path: str
    rows: int = 0
    kept: int = 0
    skipped: collections.Counter = field(default_factory=collections.Counter)
    examples: list[str] = field(default_factory=list)

    def skip(self, reason: str, message: str | None = None) -> None:
        """Count one skipped row, remembering the first few error messages."""
        self.skipped[reason] += 1
        if message is not None and len(self.examples) < MAX_EXAMPLES:
            self.examples.append(message)

    def summary(self) -> str:
        """Return e.g. 'read 1000 rows from behaviors.csv, kept 990, skipped 10 (7 unknown item_id, 3 ...)'."""
        rows = "row" if self.rows == 1 else "rows"
        text = f"read {self.rows} {rows} from {self.path}, kept {self.kept}"
        total = sum(self.skipped.values())
        if total:
            reasons = ", ".join(f"{count} {reason}" for reason, count in self.skipped.most_common())
            text += f", skipped {total} ({reasons})"
        return text


class _RowProblem(Exception):
    """A bad field found while parsing a record; turned into an InputError with file and line."""

    def __init__(self, kind: str, field: str | None, reason: str, hint: str | None = None):
        super().__init__(reason)
        self.kind, self.field, self.reason, self.hint = kind, field, reason, hint

    def at(self, path, line: int) -> InputError:
        """Return the InputError for this problem at `path` line `line`."""
        return InputError(path, line, self.field, self.reason, self.hint, kind=self.kind)


# --------------------------------------------------------------------------- raw records


def _detect_format(path) -> tuple[str, bool]:
    """Return ('jsonl' | 'csv', gzip-compressed?) from the file name, or raise InputError."""
    name = os.path.basename(os.fspath(path)).lower()
    compressed = name.endswith(".gz")
    stem = name[: -len(".gz")] if compressed else name
    for extension, fmt in _FORMATS.items():
        if stem.endswith(extension):
            return fmt, compressed
    accepted = ", ".join(ACCEPTED_EXTENSIONS)
    raise InputError(path, None, None, f"unsupported file extension; accepted: {accepted}",
                     hint="Rename the file to match its format.")


def _open_binary(path, compressed: bool) -> BinaryIO:
    """Open `path` read-only as bytes, decompressing gzip when `compressed`."""
    return gzip.open(path, "rb") if compressed else open(path, "rb")


class _Lines:
    """The decoded lines of a binary file, numbered from 1; remembers lines that were not UTF-8."""

    def __init__(self, path, stream: BinaryIO):
        self.path = path
        self.stream = stream
        self.number = 0
        self.bad: dict[int, str] = {}

    def __iter__(self) -> Iterator[str]:
        while raw := self._read_line():
            self.number += 1
            if self.number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            yield self._decode(raw)

    def _read_line(self) -> bytes:
        """Read the next raw line; a damaged file raises InputError instead of a traceback."""
        try:
            return self.stream.readline()
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(self.path, self.number + 1, None, f"cannot read the file ({exc})",
                             hint=READ_HINT) from exc

    def _decode(self, raw: bytes) -> str:
        """Decode one line, recording (not raising) invalid UTF-8."""
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            self.bad[self.number] = f"invalid UTF-8 byte sequence at byte {exc.start + 1} of the line"
            return raw.decode("utf-8", errors="replace")

    def pop_bad(self, first: int, last: int) -> str | None:
        """Forget the undecodable lines first..last and return the first one's problem, if any."""
        problems = [self.bad.pop(n) for n in range(first, last + 1) if n in self.bad]
        if not problems:
            return None
        return problems[0] if first == last else f"{problems[0]} (row spans lines {first}-{last})"


def _jsonl_records(path, lines: _Lines) -> Iterator[tuple[int, dict | InputError]]:
    """Yield (line, object or InputError) for each non-blank JSON line."""
    for text in lines:
        number = lines.number
        problem = lines.pop_bad(number, number)
        if problem:
            yield number, InputError(path, number, None, problem, hint=ENCODING_HINT)
        elif text.strip():
            yield number, _parse_json_object(path, number, text)


def _parse_json_object(path, number: int, text: str) -> dict | InputError:
    """Parse one JSON line into a dict, or return the InputError saying why not."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        return InputError(path, number, None, f"not valid JSON ({exc.msg} at column {exc.colno})")
    if isinstance(record, dict):
        return record
    reason = f"expected a JSON object {{...}}, found {_json_kind(record)}"
    if isinstance(record, list) or text.strip() == "[":
        reason += "; the file must hold one object per line (JSON Lines), not a JSON array"
    return InputError(path, number, None, reason)


def _json_kind(value: Any) -> str:
    """Name a JSON value's type the way a user would."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return "null" if value is None else type(value).__name__


def _csv_records(path, lines: _Lines, required: Collection[str],
                 expected: Collection[str]) -> Iterator[tuple[int, dict | InputError]]:
    """Yield (line the row starts on, {column: value} or InputError) for each CSV data row."""
    rows = _csv_rows(path, lines)
    header = next(rows, None)
    if header is None:
        return
    header_line, names = header
    if isinstance(names, InputError):
        raise names
    names = _check_header(path, header_line, names, required, expected)
    for number, row in rows:
        if isinstance(row, InputError):
            yield number, row
        elif len(row) != len(names):
            yield number, InputError(
                path, number, None,
                f"expected {len(names)} columns as in the header, found {len(row)}",
                hint="Quote fields that contain commas, quotes or newlines, then rerun "
                     "(or rerun with --on-error skip to skip bad rows).")
        else:
            yield number, dict(zip(names, row))


def _csv_rows(path, lines: _Lines) -> Iterator[tuple[int, list[str] | InputError]]:
    """Yield (start line, fields or InputError) for each non-blank CSV row, header included."""
    reader = csv.reader(lines, strict=True)
    while True:
        first = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            lines.pop_bad(first, reader.line_num)
            yield first, InputError(path, first, None, f"cannot parse the CSV row ({exc})")
            continue
        problem = lines.pop_bad(first, reader.line_num)
        if problem:
            yield first, InputError(path, first, None, problem, hint=ENCODING_HINT)
        elif row:
            yield first, row


def _check_header(path, line: int, header: list[str], required: Collection[str],
                  expected: Collection[str]) -> list[str]:
    """Return the cleaned column names, or raise InputError for a missing or repeated column."""
    names = [name.strip() for name in header]
    repeated = sorted({name for name in names if name and names.count(name) > 1})
    if repeated:
        raise InputError(path, line, repeated[0], "this column appears more than once in the header",
                         hint="Give every column a distinct name.")
    missing = [name for name in required if name not in names]
    if missing:
        listed = ", ".join(repr(name) for name in missing)
        raise InputError(
            path, line, missing[0],
            f"the header has no {listed} column; expected columns: {', '.join(expected)} "
            f"(required: {', '.join(required)})",
            hint="Add the missing column(s) to the header line.")
    return names


def _iter_raw(path, required: Collection[str] = (),
              expected: Collection[str] = ()) -> Iterator[tuple[int, dict | InputError]]:
    """Yield (line, record or InputError for a malformed row) for every row of `path`."""
    fmt, compressed = _detect_format(path)
    if fmt == "parquet":
        yield from _parquet_records(path)
        return
    try:
        stream = _open_binary(path, compressed)
    except OSError as exc:
        raise InputError(path, None, None, f"cannot open the file ({exc.strerror or exc})",
                         hint=OPEN_HINT) from None
    with stream:
        lines = _Lines(os.fspath(path), stream)
        if fmt == "csv":
            yield from _csv_records(lines.path, lines, required, expected or required)
        else:
            yield from _jsonl_records(lines.path, lines)


def _parquet_records(path) -> Iterator[tuple[int, dict]]:
    """Yield (row number from 1, record) for every row of a Parquet file (pyarrow, which Ray
    Data reads Parquet with too: a columnar file has no lines, its "line" is the row)."""
    try:
        import pyarrow.parquet as pq  # noqa: PLC0415  (only for Parquet input)
        table = pq.read_table(path)
    except ImportError:
        raise InputError(path, None, None, "reading Parquet needs pyarrow",
                         hint="pip install -r requirements.txt (it pins pyarrow)") from None
    except (OSError, ValueError) as exc:  # pyarrow.ArrowInvalid is a ValueError
        raise InputError(path, None, None, f"cannot read the Parquet file ({exc})",
                         hint=READ_HINT) from None
    number = 0
    for batch in table.to_batches():
        for row in batch.to_pylist():
            number += 1
            # a Parquet timestamp column arrives as datetime: the ISO form parses as in JSONL
            yield number, {key: value.isoformat() if isinstance(value, datetime) else value
                           for key, value in row.items()}


def iter_records(path, *, required: Collection[str] = ()) -> Iterator[tuple[int, dict]]:
    """Yield (line number, raw record) for each row of a JSONL or CSV file; raise InputError on a malformed row.

    CSV values are strings; `required` names columns the CSV header must have.
    """
    for number, record in _iter_raw(path, tuple(required)):
        if isinstance(record, InputError):
            raise record
        yield number, record


# --------------------------------------------------------------------------- fields


def _is_blank(value: Any) -> bool:
    """True for a missing value: None, or a string of only whitespace."""
    return value is None or (isinstance(value, str) and not value.strip())


def _show(value: Any, limit: int = 40) -> str:
    """Return a short repr of a bad value for an error message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _id_field(record: dict, name: str, show: bool = True) -> str:
    """Return a required id field as a stripped string (JSON integers accepted); see _text_field for `show`."""
    value = record.get(name)
    if _is_blank(value):
        raise _RowProblem(MISSING, name, "is missing or empty")
    if isinstance(value, str):
        return _plain_id(value.strip(), name)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    shown = _show(value) if show else HIDDEN
    raise _RowProblem(WRONG_TYPE, name, f"expected a string or integer, found {_json_kind(value)} {shown}")


def _plain_id(value: str, name: str) -> str:
    """Refuse an id holding a control or bidi formatting character (see utils/terminal.py)."""
    unsafe = first_unsafe(value)
    if unsafe:
        position, code = unsafe
        raise _RowProblem(CONTROL_IN_ID, name, f"contains the control or bidirectional-formatting "
                          f"character U+{code:04X} at position {position + 1}; ids must be plain "
                          f"text (such characters can rewrite a terminal or disguise an id)")
    return value


def _text_field(record: dict, name: str, show: bool = True) -> str:
    """Return an optional text field as a stripped string; missing means ''.

    A bad value is quoted in the error only when `show` (behaviour texts are personal data).
    """
    value = record.get(name)
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    shown = _show(value) if show else HIDDEN
    raise _RowProblem(WRONG_TYPE, name, f"expected a string, found {_json_kind(value)} {shown}")


def _title_field(record: dict) -> str:
    """Return the title: the key must be present, the value may be empty."""
    if "title" not in record or record["title"] is None:
        raise _RowProblem(MISSING, "title", "is missing; use an empty string for an item without a title")
    return _text_field(record, "title")


def _tags_field(record: dict) -> tuple[str, ...]:
    """Return tags from a list of strings or a '|'-separated string, dropping empty tags."""
    value = record.get("tags")
    if value is None:
        return ()
    if isinstance(value, str):
        parts = value.split(TAG_SEPARATOR)
    elif isinstance(value, list) and all(isinstance(tag, str) for tag in value):
        parts = value
    else:
        raise _RowProblem(WRONG_TYPE, "tags",
                          f"expected a list of strings or a '{TAG_SEPARATOR}'-separated string, "
                          f"found {_show(value)}")
    return tuple(tag.strip() for tag in parts if tag.strip())


def _number(value: Any) -> float | None:
    """Return `value` as a finite float if it is a number or numeric string, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def parse_timestamp(value: Any) -> float:
    """Return Unix seconds for an ISO-8601 string (naive means UTC) or Unix seconds; raise ValueError."""
    number = _number(value)
    if number is not None:
        return number
    if not isinstance(value, str):
        raise ValueError(f"expected Unix seconds or an ISO-8601 string, found {_json_kind(value)}")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"cannot parse {value!r} as ISO-8601 or Unix seconds") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _timestamp_field(record: dict, now: float) -> float:
    """Return the required timestamp as Unix seconds, no more than a day after `now`."""
    value = record.get("timestamp")
    if _is_blank(value):
        raise _RowProblem(MISSING, "timestamp", "is missing or empty")
    if isinstance(value, (bool, list, dict)):
        raise _RowProblem(WRONG_TYPE, "timestamp",
                          f"expected Unix seconds or an ISO-8601 string, found {_json_kind(value)} {_show(value)}")
    try:
        seconds = parse_timestamp(value)
    except (ValueError, OverflowError):
        raise _RowProblem(BAD_TIMESTAMP, "timestamp",
                          f"cannot parse {_show(value)} as ISO-8601 or Unix seconds") from None
    if seconds > now + MAX_FUTURE_SECONDS:
        raise _RowProblem(FUTURE_TIMESTAMP, "timestamp", _future_reason(value, seconds))
    return seconds


def _future_reason(value: Any, seconds: float) -> str:
    """Explain a timestamp that lies in the future, spotting millisecond values."""
    reason = f"{_show(value)} is more than one day in the future"
    if _number(value) is not None and seconds > 1e11:
        reason += " (it looks like milliseconds; timestamps must be in seconds)"
    return reason


def _rating_field(record: dict, rating_range: tuple[float, float] | None) -> float | None:
    """Return the optional rating as a float within `rating_range`; missing or empty means None."""
    value = record.get("rating")
    if _is_blank(value):
        return None
    rating = _number(value)
    if rating is None:
        raise _RowProblem(WRONG_TYPE, "rating", f"expected a number, found {_show(value)}")
    if rating_range is not None and not rating_range[0] <= rating <= rating_range[1]:
        low, high = rating_range
        raise _RowProblem(RATING_OUT_OF_RANGE, "rating", f"{rating:g} is outside the range {low:g} to {high:g}")
    return rating


def _behavior_field(record: dict, allowed: dict[str, str]) -> str:
    """Return the behaviour name as configured, matching `allowed` (casefolded -> name) ignoring case."""
    value = record.get("behavior")
    if _is_blank(value):
        raise _RowProblem(MISSING, "behavior", "is missing or empty")
    if not isinstance(value, str):
        raise _RowProblem(WRONG_TYPE, "behavior", f"expected a string, found {_json_kind(value)} {_show(value)}")
    name = allowed.get(value.strip().casefold())
    if name is None:
        names = ", ".join(allowed.values())
        raise _RowProblem(UNKNOWN_BEHAVIOR, "behavior",
                          f"unknown behavior {_show(value.strip())}; allowed: {names} "
                          f"(the allowed names are configurable)")
    return name


# --------------------------------------------------------------------------- readers


def _check_on_error(on_error: str) -> None:
    """Raise ValueError unless `on_error` is 'raise' or 'skip'."""
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {', '.join(ON_ERROR_CHOICES)}; got {on_error!r}")


def _reject(error: InputError, on_error: str, report: ReadReport) -> None:
    """Raise `error`, or count it in `report` when skipping bad rows."""
    if on_error == "raise":
        raise error
    report.skip(error.kind, str(error))


def _parsed_rows(path, records: Iterable[tuple[int, dict | InputError]],
                 parse: Callable[[dict, int], T], on_error: str,
                 report: ReadReport) -> Iterator[tuple[int, T]]:
    """Yield (line, parse(record, line)) for good rows; raise or count the bad ones."""
    for number, record in records:
        report.rows += 1
        if not isinstance(record, InputError):
            try:
                value = parse(record, number)
            except _RowProblem as problem:
                record = problem.at(path, number)
            else:
                yield number, value
                continue
        _reject(record, on_error, report)


def _parse_item(record: dict, line: int) -> Item:
    """Build an Item from one raw record."""
    return Item(
        item_id=_id_field(record, "item_id"),
        title=_title_field(record),
        text=_text_field(record, "text"),
        category=_text_field(record, "category"),
        tags=_tags_field(record),
    )


def read_items(path, on_error: str = "raise") -> tuple[list[Item], ReadReport]:
    """Read and check the items file; return the items in file order and a report."""
    _check_on_error(on_error)
    source = os.fspath(path)
    report = ReadReport(source)
    first_seen: dict[str, tuple[Item, int]] = {}
    items: list[Item] = []
    records = _iter_raw(path, ITEM_REQUIRED, ITEM_FIELDS)
    for number, item in _parsed_rows(source, records, _parse_item, on_error, report):
        earlier = first_seen.get(item.item_id)
        if earlier is None:
            first_seen[item.item_id] = (item, number)
            items.append(item)
            report.kept += 1
        elif earlier[0] == item:
            report.skip(DUPLICATE)
        else:
            _reject(InputError(source, number, "item_id",
                               f"item_id {item.item_id!r} already appeared on line {earlier[1]} "
                               f"with different content", kind=DUPLICATE_ITEM_ID),
                    on_error, report)
    return items, report


def _allowed_behaviors(behaviors: Iterable[str]) -> dict[str, str]:
    """Map casefolded behaviour names to their configured spelling; reject bad configuration."""
    if isinstance(behaviors, str):
        behaviors = (behaviors,)
    allowed: dict[str, str] = {}
    for name in behaviors:
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"behavior names must be non-empty strings; got {name!r}")
        allowed.setdefault(name.strip().casefold(), name.strip())
    if not allowed:
        raise ValueError("at least one behavior name must be allowed")
    return allowed


def _check_rating_range(rating_range: tuple[float, float] | None) -> tuple[float, float] | None:
    """Return `rating_range` as two floats (low <= high), or None for no range check."""
    if rating_range is None:
        return None
    low, high = (float(bound) for bound in rating_range)
    if not low <= high:
        raise ValueError(f"rating_range must be (low, high) with low <= high; got {rating_range!r}")
    return low, high


def read_behaviors(path, on_error: str = "raise", behaviors: Iterable[str] = DEFAULT_BEHAVIORS,
                   item_ids: Collection[str] | None = None,
                   rating_range: tuple[float, float] | None = (0.0, 5.0), *,
                   map_user_id: Callable[[str], str] | None = None,
                   verbose: bool = False) -> tuple[list[Behavior], ReadReport]:
    """Read and check the behaviours file; return the behaviours in file order and a report.

    `behaviors` is the full set of allowed names (DEFAULT_BEHAVIORS plus any extras);
    when `item_ids` is given, rows about other items are errors ("unknown item_id").
    `map_user_id` replaces every user id as it is read (e.g. ``privacy.user_id_hasher``), so
    the raw ids are never kept. Error messages quote no value of a user_id or text field
    (personal data) unless `verbose`.
    """
    _check_on_error(on_error)
    allowed = _allowed_behaviors(behaviors)
    rating_range = _check_rating_range(rating_range)
    if item_ids is not None and not isinstance(item_ids, (set, frozenset, dict)):
        item_ids = frozenset(item_ids)
    source = os.fspath(path)
    now = time.time()
    # One string object per distinct id (a big log repeats them a lot); user ids mapped once.
    users: dict[str, str] = {}
    items: dict[str, str] = {}

    def parse(record: dict, line: int) -> Behavior:
        """Build a Behavior from one raw record."""
        user_id = _id_field(record, "user_id", show=verbose)
        item_id = _id_field(record, "item_id")
        name = _behavior_field(record, allowed)
        timestamp = _timestamp_field(record, now)
        rating = _rating_field(record, rating_range)
        text = _text_field(record, "text", show=verbose)
        if item_ids is not None and item_id not in item_ids:
            raise _RowProblem(UNKNOWN_ITEM, "item_id", f"item_id {item_id!r} is not in the items file",
                              hint="Add the item to the items file, fix the row, or rerun with "
                                   "--on-error skip to skip bad rows.")
        if user_id not in users:
            users[user_id] = map_user_id(user_id) if map_user_id else user_id
        user_id = users[user_id]
        item_id = items.setdefault(item_id, item_id)
        return Behavior(user_id, item_id, name, timestamp, rating, text, source=source, line=line)

    report = ReadReport(source)
    records = _iter_raw(path, BEHAVIOR_REQUIRED, BEHAVIOR_FIELDS)
    result = [behavior for _, behavior in _parsed_rows(source, records, parse, on_error, report)]
    report.kept = len(result)
    return result, report


def group_by_user(behaviors: Iterable[Behavior]) -> dict[str, list[Behavior]]:
    """Group behaviours by user, each user's list sorted by timestamp (ties keep input order)."""
    groups: dict[str, list[Behavior]] = {}
    for behavior in behaviors:
        groups.setdefault(behavior.user_id, []).append(behavior)
    for events in groups.values():
        events.sort(key=lambda event: event.timestamp)
    return groups
