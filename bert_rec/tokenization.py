"""Cleaned text -> token ids with bert4keras's Tokenizer and the checkpoint's vocab.txt.

Also builds a character vocabulary from a corpus (for checkpoints bert_rec creates itself) and
pads batches to their own longest sequence (dynamic padding).
"""

import collections
import re
import unicodedata

import numpy as np

from .backend import Tokenizer
from .config import TRUNCATIONS

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def read_vocab_tokens(path):
    """vocab.txt -> its tokens, one per line (id = line number); the one vocab reader.

    A file that is not UTF-8 is a ValueError naming it.
    """
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\r\n") for line in f]
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start}); pass the "
                         f"vocab.txt that came with the checkpoint") from None


def read_vocab(path):
    """vocab.txt -> {token: id} (a repeated token keeps its first id)."""
    vocab = {}
    for token in read_vocab_tokens(path):
        vocab.setdefault(token, len(vocab))
    return vocab


def write_vocab(tokens, path):
    """Write tokens one per line (the caller makes ``path`` a temporary name)."""
    with open(path, "w", encoding="utf-8") as f:
        for token in tokens:
            f.write(token + "\n")


def load_tokenizer(vocab_path):
    """bert4keras Tokenizer over vocab.txt, lower-casing like bert-base-chinese."""
    return Tokenizer(read_vocab(vocab_path), do_lower_case=True)


def build_char_vocab(texts, min_count=1, max_size=None, word_pieces=False, word_min_count=None):
    """A BERT-Chinese-style vocabulary from a corpus: special tokens, then characters by frequency.

    Every ASCII letter and digit is included with its ``##`` continuation, so English words
    and numbers become word pieces rather than [UNK]. With ``word_pieces=True``, ASCII words
    (runs of at least two lower-case letters/digits, e.g. ``iphone``, ``vlog``, ``2020``) seen at
    least ``word_min_count`` times (default ``min_count``) become whole tokens too, ranked by
    frequency together with the characters; bert4keras's greedy WordPiece then keeps them whole.
    [PAD] is id 0, followed by [UNK] [CLS] [SEP] [MASK].
    """
    counts = collections.Counter()
    word_counts = collections.Counter()
    for text in texts:
        text = text.lower()
        for ch in text:
            if not ch.isspace() and unicodedata.category(ch)[0] != "C":
                counts[ch] += 1
        if word_pieces:
            word_counts.update(_ASCII_WORD_RE.findall(text))
    ascii_pieces = [c for c in "0123456789abcdefghijklmnopqrstuvwxyz"]
    tokens = list(SPECIAL_TOKENS) + ascii_pieces + ["##" + c for c in ascii_pieces]
    seen = set(tokens)
    word_min = min_count if word_min_count is None else word_min_count
    candidates = [(n, ch) for ch, n in counts.items() if n >= min_count]
    candidates += [(n, word) for word, n in word_counts.items() if n >= word_min]
    for n, token in sorted(candidates, key=lambda nt: (-nt[0], nt[1])):
        if max_size and len(tokens) >= max_size:
            break
        if token not in seen:
            tokens.append(token)
            seen.add(token)
    return tokens


# An ASCII word as bert4keras's basic tokenizer sees it: letters/digits between spaces,
# punctuation or CJK characters (a bare letter or digit is already in the vocabulary).
_ASCII_WORD_RE = re.compile(r"(?<![0-9a-z])[0-9a-z]{2,}(?![0-9a-z])")


def encode_texts(tokenizer, texts, max_len, truncation="head"):
    """Texts -> list of token-id lists, each ``[CLS] ... [SEP]`` and at most ``max_len`` long.

    ``truncation="head"`` keeps a long text's first tokens; ``"head_tail"`` keeps its first
    quarter and last three quarters of the room (a review's verdict is often at its end; head +
    tail truncation was the best choice for long reviews in Sun et al., "How to Fine-Tune BERT
    for Text Classification?", 2019).
    """
    if truncation == "head":
        return [tokenizer.encode(text, maxlen=max_len)[0] for text in texts]
    if truncation != "head_tail":
        raise ValueError(f"truncation must be one of {', '.join(TRUNCATIONS)}, "
                         f"got {truncation!r}")
    return [head_tail(tokenizer.encode(text)[0], max_len) for text in texts]


def head_tail(ids, max_len, head_fraction=0.25):
    """``[CLS] body [SEP]`` cut to ``max_len`` ids: the body's first ``head_fraction`` of the
    room, then its last tokens."""
    if len(ids) <= max_len:
        return ids
    room = max_len - 2
    head = int(round(room * head_fraction))
    return ids[:1 + head] + ids[len(ids) - 1 - (room - head):]


def pad_batch(sequences):
    """Token-id lists -> (token_ids [B, L], segment_ids [B, L]) int32, L = longest in batch."""
    length = max((len(s) for s in sequences), default=1)
    token_ids = np.zeros((len(sequences), length), dtype=np.int32)  # [B, L]
    for row, seq in enumerate(sequences):
        token_ids[row, :len(seq)] = seq
    return token_ids, np.zeros_like(token_ids)
