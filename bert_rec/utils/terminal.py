"""Text from users' data made inert for a terminal (no TensorFlow).

A catalogue title ``\\x1b[2J`` would clear the screen and a right-to-left override (U+202E)
would show ``exe.txt`` as ``txt.exe``: control characters (C0 but newline, DEL, C1) and the
bidirectional formatting characters are shown as escapes (``\\x1b``, ``\\u202e``) instead.
Ids holding them are refused when read (data.py); titles and texts are escaped where shown.
"""

import json
import re

# C0 controls, DEL, C1 controls; bidi marks, embeddings, overrides and isolates; the Unicode
# line and paragraph separators (some terminals break lines on them).
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
                    "\u2028\u2029]")
_UNSAFE_BUT_NEWLINE = re.compile(UNSAFE.pattern.replace("\x00-\x1f", "\x00-\x09\x0b-\x1f"))


def _escape(match):
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe(text, keep_newlines=False):
    """``text`` with every unsafe character shown as an escape (``\\x1b``, ``\\u202e``)."""
    pattern = _UNSAFE_BUT_NEWLINE if keep_newlines else UNSAFE
    return pattern.sub(_escape, str(text))


def first_unsafe(text):
    """(position, code point) of the first unsafe character of ``text``, or None."""
    match = UNSAFE.search(text)
    return (match.start(), ord(match.group())) if match else None


def safe_json(obj, **kwargs):
    """``json.dumps(obj, ensure_ascii=False)`` with unsafe characters as ``\\uXXXX`` escapes:
    the same JSON value, harmless when printed."""
    text = json.dumps(obj, ensure_ascii=False, **kwargs)
    return UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
