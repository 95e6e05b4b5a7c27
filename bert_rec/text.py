"""Deterministic cleaning and word segmentation for Chinese user-generated text.

Video captions, comments, reviews and search queries are noisy: full-width characters,
HTML fragments, links, ``@mentions``, ``#话题#`` markers, emoji, ``[doge]`` emoticons and,
now and then, somebody's phone number. :class:`TextPipeline` turns such text into a
normalised string (:meth:`TextPipeline.normalize`) and into a list of content words
(:meth:`TextPipeline.words`, :meth:`TextPipeline.clean`).

``normalize`` applies these steps, in this order:

1. Coerce: ``None`` and other non-strings become ``""`` (numbers become ``str(x)``, NaN
   becomes ``""``). Control and format characters (Unicode Cc/Cf: NUL, zero-width
   spaces and joiners, left-to-right / right-to-left marks, BOM ...) and lone surrogates
   are removed; whitespace controls such as ``\\n`` and ``\\t`` become spaces.
2. HTML: entities are unescaped (``&amp;`` -> ``&``, also doubly escaped ones) and
   tags and comments stripped (block tags such as ``<br/>`` become a space).
3. Unicode NFKC: full-width letters, digits and punctuation become half-width, the
   ideographic space becomes a space (a few CJK compatibility characters are folded too).
4. Lowercase (if ``TextConfig.lowercase``).
5. Noise: URLs (``http(s)://...``, ``www.``...), ``@mentions``, emoji and pictographs
   (incl. flags, skin tones, keycaps, variation selectors) and short bracketed
   emoticons such as ``[笑哭]`` are replaced by a space; the ``#`` signs of hashtags
   (``#美食#``, ``#美食``) are dropped while the topic word is kept.
6. PII (if ``TextConfig.scrub_pii``, the default), each replaced by a space:
   e-mail addresses; 18-digit resident ID-card numbers (17 digits + digit or X);
   bank-card numbers (16-19 digits, optionally grouped by spaces or dashes); mainland
   mobile numbers (``1[3-9]`` + 9 digits, optionally with a ``+86``/``86``/``0086``
   prefix and spaces or dashes, e.g. ``+86 138-0013-8000``); landlines
   (``010-12345678``, ``(0755)1234567``); WeChat/QQ ids written after a keyword
   (``微信``, ``vx``, ``wx``, ``weixin``, ``qq``, ``QQ号``, ``扣扣`` ..., optionally followed by
   ``:``, ``是`` or ``为``, as in ``微信是 zhangsan_88``; the keyword goes too).
   street addresses where recognisable (``建国路88号3号楼501室``, ``阳光小区3栋2单元501``:
   the street and the numbers go, the city and district before them stay).
   Numbers are matched only as whole digit runs, so longer numbers are left alone;
   the price list ``1999 2999 3999 4999`` looks like a bank card and is removed.
7. Whitespace runs collapse to one space, the ends are stripped and the text is cut
   to ``TextConfig.max_chars`` characters.

The steps are repeated (at most a few rounds) until the text no longer changes, so
``normalize`` is idempotent even when one step uncovers work for an earlier one (a
full-width ``＜b＞`` that NFKC turns into a tag, a 20-digit number whose first 11
digits survive the length cut ...). It never raises for a ``str``.

``words`` segments the normalised text with a private :class:`jieba.Tokenizer` (so user
dictionaries never leak between pipelines or into the global ``jieba``), then drops
whitespace, pure punctuation/symbol tokens and stopwords. The bundled stopword list is
stopwords-iso/stopwords-zh (MIT, see ``resources/README.md``). Stopwords are compared
after normalisation, so the list's full-width entries ``０``-``９`` also drop the
single-digit tokens ``0``-``9`` (``15`` in ``iphone 15`` is kept).

Meaning survives cleaning: the bundled list also holds negations (``不``, ``别``, ``无``,
``非``), degree words (``很``, ``最``, ``太``, ``好``) and contrast words (``但是``, ``却``), whose
removal turns ``这个视频不好看`` into ``视频 好看``. With ``TextConfig.keep_meaning_words`` (the
default) the words of :data:`MEANING_WORDS` are taken out of the bundled list, so they reach
the encoder; a stopword file the user passes (``stopwords_path``) is used exactly as given.
The keyword paths (the TF-IDF baseline) use the strict list (``keep_meaning_words=False``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import io
import json
import logging
import numbers
import os
import re
import threading
import unicodedata
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

with warnings.catch_warnings():
    # jieba 0.42.1 imports pkg_resources (deprecated by recent setuptools) and, when its
    # .py files are compiled for the first time, warns about invalid escape sequences.
    warnings.filterwarnings("ignore", message=r"pkg_resources is deprecated")
    warnings.filterwarnings("ignore", message=r"invalid escape sequence")
    import jieba

__all__ = ["BUNDLED_STOPWORDS_PATH", "MEANING_WORDS", "TextConfig", "TextPipeline",
           "load_word_list"]

BUNDLED_STOPWORDS_PATH = str(Path(__file__).resolve().parent / "resources" / "stopwords-zh.txt")

# Words of the bundled stopword list that change what a text says: negations, degree words,
# contrast and evaluative words. Kept for the encoder when TextConfig.keep_meaning_words.
MEANING_WORDS = frozenset("""
不 不是 不如 不成 不得 不然 不比 不尽 不尽然 不至于 不怕 不过 没 没有 没奈何 别 别说 别管 无 非 非但
未 莫 勿 毋 毋宁 莫如 莫若 莫不然 要不 要不是 若非 除非 否则
很 最 更 太 挺 多么 极了 好 大 小 多 甚至 甚至于 一般
但 但是 可是 然而 却 反而 而是 虽 虽然 虽说 虽则 只是
可以 能 会 要
""".split())

# normalize() re-runs its steps until the text is stable; real texts need at most two rounds.
_MAX_ROUNDS = 6
# Part of TextPipeline.fingerprint: bump it whenever a change to this module can change what
# ``clean`` returns for some text, so that caches keyed by raw text are never stale.
CLEANING_VERSION = 1
# Unescaping / tag stripping is repeated for nested input such as "&amp;lt;" or "<<b>b>".
_MAX_NESTING = 8

# --- step 2: HTML ----------------------------------------------------------------------
_HTML_TAG_RE = re.compile(
    r"<!--.*?(?:-->|\Z)"                     # comment (an unterminated one runs to the end)
    r"|<!?(/?)([a-z][a-z0-9]*)\b[^<>]*>",    # <tag ...>, </tag>, <br/>, <!doctype ...>
    re.IGNORECASE | re.DOTALL,
)
_BLOCK_TAGS = frozenset(
    "address article aside blockquote br dd div dl dt figcaption figure footer h1 h2 h3 h4 h5 h6 "
    "header hr li main nav ol p pre section table tbody td tfoot th thead tr ul".split()
)

# --- step 5: noise ---------------------------------------------------------------------
_URL_RE = re.compile(
    r"(?:https?://|(?<![a-z0-9@._\-])www\.)[a-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]+",
    re.IGNORECASE,
)
_EMOJI_RE = re.compile(
    "["
    "\U0001F000-\U0001FAFF"  # mahjong, cards, enclosed symbols, flags, pictographs, skin tones
    "\u2600-\u27BF"          # miscellaneous symbols and dingbats
    "\u2B00-\u2BFF"          # stars and arrows (⭐ ⬆)
    "\u231A\u231B\u2328\u23CF\u23E9-\u23F3\u23F8-\u23FA"  # ⌚ ⌛ ⌨ ⏏ ⏩ ... ⏰ ⏳ ⏸ ...
    "\u3030\u303D"           # 〰 〽
    "\uFE00-\uFE0F"          # variation selectors
    "\u200D\u20E3"           # zero-width joiner, combining keycap
    "\U000E0020-\U000E007F"  # tag characters of subdivision flags
    "]+"
)
_BRACKET_EMOTICON_RE = re.compile(r"\[[^\[\]\s]{1,6}\]")
# "@用户名" up to whitespace or punctuation, also chained ("@张三@李四"); not an e-mail's "@".
_MENTION_RE = re.compile(r"(?<![a-z0-9._%+\-])(?:@[\w\-]{1,30})+", re.IGNORECASE)
_HASH_SIGNS_RE = re.compile(r"#+")

# --- step 6: PII -----------------------------------------------------------------------
_SEP = r"[ \-]{0,3}"  # digit groups may be separated by spaces or dashes
_EMAIL_RE = re.compile(
    r"(?<![a-z0-9._%+\-])[a-z0-9._%+\-]+@[a-z0-9\-]+(?:\.[a-z0-9\-]+)*\.[a-z]{2,}",
    re.IGNORECASE,
)
_ID_CARD_RE = re.compile(r"(?<!\d)\d{17}[\dx](?!\d)", re.IGNORECASE)
_BANK_CARD_RE = re.compile(rf"(?<!\d)\d{{4}}(?:{_SEP}\d{{4}}){{3}}(?:{_SEP}\d{{1,3}})?(?!\d)")
_MOBILE_RE = re.compile(rf"(?<!\d)(?:(?:\+|00)?86{_SEP})?1[3-9]\d{_SEP}\d{{4}}{_SEP}\d{{4}}(?!\d)")
_LANDLINE_RE = re.compile(r"(?<!\d)(?:0\d{2,3}[ \-]|\(0\d{2,3}\) ?)\d{7,8}(?!\d)")
_IM_ID_RE = re.compile(
    r"(?<![a-z])(?:微信(?:号码?)?|威信|薇信|v信|vx|wx|weixin|wechat|qq(?:号码?)?|扣扣(?:号)?|企鹅号)"
    r" {0,3}(?:[:：]|是|为|為)? {0,3}[a-z0-9_\-]{5,30}(?![a-z0-9_\-])",
    re.IGNORECASE,
)
# Order matters: e-mails first (their digits are not phone numbers), long numbers before short.
# Street addresses where recognisable: "<street>路/街/道/巷/弄 88号" plus building/unit/room
# numbers, or "3栋2单元501室"; the city and district names before them are kept.
_ADDRESS_RE = re.compile(
    r"(?:(?![省市区區县縣镇鎮乡鄉村])[\u4e00-\u9fff]){1,4}(?:路|街|大道|巷|弄|胡同) ?\d{1,5} ?[号號]"
    r"(?: ?[a-z]?\d{1,4} ?(?:号楼|栋|棟|幢|座|单元|單元|楼|樓|层|室|号|號))*"
    r"|\d{1,4} ?(?:号楼|栋|棟|幢|座) ?\d{1,3} ?(?:单元|單元) ?\d{1,4} ?[室号號]?",
    re.IGNORECASE,
)
_PII_PATTERNS = (_EMAIL_RE, _ID_CARD_RE, _BANK_CARD_RE, _MOBILE_RE, _LANDLINE_RE, _IM_ID_RE,
                 _ADDRESS_RE)

# --- step 7 ----------------------------------------------------------------------------
_WHITESPACE_RE = re.compile(r"\s+")

_DROPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})

_log_level_set = False
_base_lock = threading.Lock()
_base_tokenizer: jieba.Tokenizer | None = None


# ======================================================================================
# configuration
# ======================================================================================
@dataclasses.dataclass(frozen=True)
class TextConfig:
    """How :class:`TextPipeline` cleans text; JSON-friendly via ``to_dict``/``from_dict``."""

    scrub_pii: bool = True
    lowercase: bool = True
    remove_stopwords: bool = True
    stopwords_path: str | None = None        # None: the bundled stopwords-zh list
    extra_stopwords_path: str | None = None  # added to the list above
    user_dict_path: str | None = None        # jieba user dictionary ("word [freq] [tag]")
    max_chars: int = 2000                    # normalised text is cut to this length
    keep_meaning_words: bool = True          # bundled list minus MEANING_WORDS (see above)

    def __post_init__(self) -> None:
        for name in ("scrub_pii", "lowercase", "remove_stopwords", "keep_meaning_words"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise TypeError(f"TextConfig.{name} must be True or False, got {value!r}")
        for name in ("stopwords_path", "extra_stopwords_path", "user_dict_path"):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
                object.__setattr__(self, name, value)
            if not isinstance(value, str):
                raise TypeError(f"TextConfig.{name} must be a path string or None, got {value!r}")
            if not value:
                raise ValueError(f"TextConfig.{name} must not be empty (use None for no file)")
        max_chars = self.max_chars
        if isinstance(max_chars, bool) or not isinstance(max_chars, numbers.Integral):
            raise TypeError(f"TextConfig.max_chars must be an int, got {max_chars!r}")
        if max_chars < 1:
            raise ValueError(f"TextConfig.max_chars must be at least 1, got {max_chars}")
        object.__setattr__(self, "max_chars", int(max_chars))

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as a plain, JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TextConfig:
        """Build a config from ``to_dict`` output; missing keys take their defaults."""
        if not isinstance(data, Mapping):
            raise TypeError(f"TextConfig.from_dict expects a mapping, got {type(data).__name__}")
        known = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(str(key) for key in data if key not in known)
        if unknown:
            raise ValueError(
                f"unknown TextConfig key(s): {', '.join(map(repr, unknown))}; "
                f"valid keys are: {', '.join(sorted(known))}"
            )
        return cls(**dict(data))


# ======================================================================================
# word lists
# ======================================================================================
def _read_utf8_lines(path: str | os.PathLike, what: str) -> list[str]:
    """Read a UTF-8 text file into lines, with errors that name the file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    if os.path.isdir(path):
        raise ValueError(f"{what} must be a file, but {path} is a directory")
    try:
        with open(path, encoding="utf-8-sig") as handle:
            return handle.read().splitlines()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} {path} is not valid UTF-8 ({exc})") from None


def load_word_list(path: str | os.PathLike) -> frozenset[str]:
    """Read a UTF-8 word list: one word per line, blank lines and '#' comments ignored."""
    words = (line.strip() for line in _read_utf8_lines(path, "word list"))
    return frozenset(word for word in words if word and not word.startswith("#"))


# ======================================================================================
# normalisation steps
# ======================================================================================
def _coerce_to_str(value: object) -> str:
    """Return strings as they are, numbers as str(x) (NaN as ""), anything else as ""."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, numbers.Number) and not isinstance(value, bool):
        text = str(value)
        return "" if text.lower().lstrip("+-") in ("nan", "snan") else text
    return ""


def _clean_char(char: str) -> str:
    """Map one character: whitespace controls to a space, other Cc/Cf/Cs to nothing."""
    if unicodedata.category(char) not in _DROPPED_CATEGORIES:
        return char
    return " " if char.isspace() else ""


def _remove_control_chars(text: str) -> str:
    """Drop control/format characters and lone surrogates; \\n, \\t and friends become spaces."""
    if text.isprintable():  # fast path: no Cc/Cf/Cs (nor newlines) in the text
        return text
    return "".join(map(_clean_char, text))


def _unescape_entities(text: str) -> str:
    """Unescape HTML entities, repeatedly for doubly escaped text ("&amp;lt;" -> "<")."""
    for _ in range(_MAX_NESTING):
        unescaped = html.unescape(text)
        if unescaped == text:
            return text
        text = unescaped
    if html.unescape(text) != text:  # absurdly deep nesting: defuse the remaining entities
        text = text.replace("&", " ")
    return text


def _tag_replacement(match: re.Match) -> str:
    """Block-level tags and comments become a space, inline tags disappear."""
    name = match.group(2)
    return "" if name and name.lower() not in _BLOCK_TAGS else " "


def _strip_html_tags(text: str) -> str:
    """Remove HTML tags and comments, repeatedly for nested input ("<<b>b>")."""
    if "<" not in text:
        return text
    for _ in range(_MAX_NESTING):
        stripped = _HTML_TAG_RE.sub(_tag_replacement, text)
        if stripped == text:
            return text
        text = stripped
    if _HTML_TAG_RE.search(text):  # absurdly deep nesting: break the remaining tags
        text = text.replace("<", " ").replace(">", " ")
    return text


def _strip_html(text: str) -> str:
    """Unescape entities and strip tags (entities may encode control characters, so drop those again)."""
    if "&" in text:
        text = _remove_control_chars(_unescape_entities(text))
    return _strip_html_tags(text)


def _nfkc(text: str) -> str:
    """Unicode NFKC: full-width ASCII to half-width, ideographic space to space, etc."""
    return unicodedata.normalize("NFKC", text)


def _remove_noise(text: str) -> str:
    """Replace URLs, emoji, [emoticons] and @mentions by a space; drop '#' of hashtags."""
    text = _URL_RE.sub(" ", text)
    text = _EMOJI_RE.sub(" ", text)
    text = _BRACKET_EMOTICON_RE.sub(" ", text)
    text = _MENTION_RE.sub(" ", text)
    return _HASH_SIGNS_RE.sub(" ", text)


def _scrub_pii(text: str) -> str:
    """Replace e-mails, ID-card, bank-card, mobile and landline numbers and IM ids by a space."""
    for pattern in _PII_PATTERNS:
        text = pattern.sub(" ", text)
    return text


def _squeeze(text: str, max_chars: int) -> str:
    """Collapse whitespace runs to one space, strip, and cut to max_chars characters."""
    text = _WHITESPACE_RE.sub(" ", text).strip()
    return text[:max_chars].rstrip()


def _is_punctuation_or_symbol(token: str) -> bool:
    """True if every character of the token is punctuation (P*) or a symbol (S*)."""
    return all(unicodedata.category(char)[0] in "PS" for char in token)


# ======================================================================================
# jieba
# ======================================================================================
def _base_prefix_tokenizer() -> jieba.Tokenizer:
    """Load jieba's default prefix dictionary once per process (it takes a second or two)."""
    global _base_tokenizer, _log_level_set
    with _base_lock:
        if _base_tokenizer is None:
            if not _log_level_set:  # silence "Building prefix dict ..." on stderr
                jieba.setLogLevel(logging.WARNING)
                _log_level_set = True
            tokenizer = jieba.Tokenizer()
            tokenizer.initialize()
            _base_tokenizer = tokenizer
        return _base_tokenizer


def _prime_tokenizer(tokenizer: jieba.Tokenizer) -> None:
    """Give a fresh Tokenizer its own copy of the default dictionary, without re-reading it."""
    base = _base_prefix_tokenizer()
    tokenizer.FREQ = dict(base.FREQ)
    tokenizer.total = base.total
    tokenizer.initialized = True


# ======================================================================================
# the pipeline
# ======================================================================================
class TextPipeline:
    """Normalise, segment and filter Chinese text according to a :class:`TextConfig`."""

    def __init__(self, config: TextConfig = TextConfig()) -> None:
        if not isinstance(config, TextConfig):
            raise TypeError(f"TextPipeline expects a TextConfig, got {type(config).__name__}")
        self._config = config
        # A private tokenizer, so user dictionaries never leak between pipelines. Its
        # dictionary is filled on first use (see _tokenizer), files are read right away.
        self._jieba = jieba.Tokenizer()
        self._jieba_ready = False
        self._jieba_lock = threading.Lock()
        self._user_dict_lines = self._read_user_dict()
        self._stopwords = self._load_stopwords()
        self._fingerprint = None

    def __repr__(self) -> str:
        return f"TextPipeline({self._config!r})"

    def __reduce__(self):
        # jieba's Tokenizer holds a lock; rebuild from the config instead of pickling it.
        return (type(self), (self._config,))

    @property
    def config(self) -> TextConfig:
        """The (immutable) configuration of this pipeline."""
        return self._config

    @property
    def fingerprint(self) -> str:
        """Hex SHA-1 of everything that decides ``clean``'s output: the settings, the stopword
        and user-dictionary contents, jieba's version and :data:`CLEANING_VERSION`. Caches keyed
        by a raw text and this fingerprint may skip cleaning it (utils/encode_cache.py)."""
        if self._fingerprint is None:
            digest = hashlib.sha1(f"bert_rec cleaning v{CLEANING_VERSION}\0jieba "
                                  f"{getattr(jieba, '__version__', '?')}\0".encode())
            settings = dataclasses.asdict(self._config)
            for path_field in ("stopwords_path", "extra_stopwords_path", "user_dict_path"):
                settings.pop(path_field, None)  # their contents enter below, not their names
            digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
            for block in (sorted(self._stopwords), self._user_dict_lines):
                digest.update(b"\0\0" + "\0".join(block).encode("utf-8", "surrogatepass"))
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    @property
    def stopwords(self) -> frozenset[str]:
        """The normalised stopwords that ``words`` drops (empty if removal is off)."""
        return self._stopwords

    # -- normalisation ------------------------------------------------------------------
    def normalize(self, text: object) -> str:
        """Return the normalised text (see the module docstring); idempotent, never raises for str."""
        text = _coerce_to_str(text)
        for _ in range(_MAX_ROUNDS):
            result = self._normalize_once(text)
            if result == text:
                break
            text = result
        return result

    def _normalize_once(self, text: str) -> str:
        """Apply steps 1-7 once."""
        text = _remove_control_chars(text)
        text = _strip_html(text)
        text = _nfkc(text)
        if self._config.lowercase:
            text = text.lower()
        text = _remove_noise(text)
        if self._config.scrub_pii:
            text = _scrub_pii(text)
        return _squeeze(text, self._config.max_chars)

    def _fold(self, text: str) -> str:
        """NFKC and (if configured) lowercase: how dictionary words must look to match text."""
        text = _nfkc(text)
        return text.lower() if self._config.lowercase else text

    # -- segmentation -------------------------------------------------------------------
    def words(self, text: object) -> list[str]:
        """Normalise, segment with jieba and drop whitespace, punctuation and stopwords."""
        normalized = self.normalize(text)
        if not normalized:
            return []
        tokens = self._tokenizer().lcut(normalized, HMM=True)
        return [token for token in tokens if self._is_content_word(token)]

    def clean(self, text: object) -> str:
        """Return ``" ".join(self.words(text))``."""
        return " ".join(self.words(text))

    def clean_many(self, texts: Iterable[object]) -> list[str]:
        """``clean`` every text; repeated texts are segmented only once."""
        cache: dict[str, str] = {}
        cleaned = []
        for text in texts:
            key = text if isinstance(text, str) else self.normalize(text)
            if key not in cache:
                cache[key] = self.clean(key)
            cleaned.append(cache[key])
        return cleaned

    def _is_content_word(self, token: str) -> bool:
        """Keep a token unless it is blank, pure punctuation/symbols or a stopword."""
        if not token.strip() or _is_punctuation_or_symbol(token):
            return False
        return token not in self._stopwords

    def _tokenizer(self) -> jieba.Tokenizer:
        """This pipeline's jieba tokenizer, with its dictionary and user words loaded."""
        with self._jieba_lock:
            if not self._jieba_ready:
                _prime_tokenizer(self._jieba)
                if self._user_dict_lines:
                    self._jieba.load_userdict(io.StringIO("\n".join(self._user_dict_lines)))
                self._jieba_ready = True
        return self._jieba

    # -- resources ----------------------------------------------------------------------
    def _read_user_dict(self) -> list[str]:
        """Read the jieba user dictionary, folded like the text so its words can match."""
        path = self._config.user_dict_path
        if path is None:
            return []
        lines = (self._fold(line).strip() for line in _read_utf8_lines(path, "jieba user dictionary"))
        return [line for line in lines if line]

    def _load_stopwords(self) -> frozenset[str]:
        """Load the stopword list(s) and normalise every entry like the text."""
        if not self._config.remove_stopwords:
            return frozenset()
        if self._config.stopwords_path:
            raw = load_word_list(self._config.stopwords_path)
        else:
            raw = load_word_list(BUNDLED_STOPWORDS_PATH)
            if self._config.keep_meaning_words:
                raw -= MEANING_WORDS
        if self._config.extra_stopwords_path:
            raw |= load_word_list(self._config.extra_stopwords_path)
        normalized = {self.normalize(word) for word in raw}
        normalized.discard("")
        return frozenset(normalized)
