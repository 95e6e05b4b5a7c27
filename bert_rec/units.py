"""A user's behaviours as weighted units: the rows the user tower pools (numpy only).

Each of a user's latest ``max_history`` behaviours contributes one unit for its item and, when
it carries text that cleans to something (a comment, review, query), one unit for the text.
A unit is a row of a *unit table*: the catalogue's items first (rows ``0..M-1``), then the
distinct behaviour texts (rows ``M..``: by cleaned text in training, by raw text in
``Recommender``, so that a warm encode cache skips cleaning; texts that clean alike get equal
vectors either way). Its weight is signed: behaviour type x rating
x recency for what the user liked or just used, and ``-(type x recency x |opinion|)`` for the
behaviours on an item the user disliked (see ``ScoringConfig`` and :func:`polarities`).
Recommending, training, evaluation and the serving client all build their units here, so
they pool exactly the same things.

Each unit also carries sequence features for the sequence tower: its kind (the behaviour type,
or a text), its age bucket (days before the user's latest behaviour) and the gap bucket (days
since the previous behaviour), in log2 buckets; 0 is padding.
"""

import dataclasses
import math

import numpy as np

SECONDS_PER_DAY = 86400.0
KINDS = {"view": 1, "click": 2, "rate": 3, "comment": 4}  # other behaviour names: OTHER_KIND
OTHER_KIND, TEXT_KIND = 5, 6
BUCKETS = 16  # age and gap buckets 1..15 (log2 of days), 0 = padding
FEATURES = 3  # kind, age bucket, gap bucket
POSITIVE, NEGATIVE, NEUTRAL = "positive", "negative", "neutral"


@dataclasses.dataclass
class Units:
    """One user's units: ``rows`` [n] of the unit table, signed ``weights`` [n], ``owners`` [n]
    (the index in ``recent`` of the behaviour each unit comes from), ``features`` [n, 3] and
    ``polarity`` [len(recent)] (POSITIVE / NEGATIVE / NEUTRAL per behaviour)."""
    recent: list
    rows: np.ndarray
    weights: np.ndarray
    owners: np.ndarray
    features: np.ndarray
    polarity: list


def opinions(behaviors, scoring, text_opinion=None):
    """Each behaviour's stated opinion in [-1, 1]: from its rating, else from its text's
    sentiment (``text_opinion``: raw text -> 2 P(positive) - 1); NaN when it states none."""
    mid, span = scoring.midpoint, scoring.rating_max - scoring.midpoint
    out = []  # plain floats: numpy scalar writes per behaviour cost more than the arithmetic
    for b in behaviors:
        if b.rating is not None:
            out.append(min(max((b.rating - mid) / span, -1.0), 1.0))
        elif b.text and text_opinion:
            out.append(text_opinion.get(b.text, math.nan))
        else:
            out.append(math.nan)
    return np.array(out, np.float64)


def polarities(behaviors, scoring, text_opinion=None):
    """(polarity per behaviour, item opinion per behaviour [n]): a behaviour takes its item's
    polarity, from the mean opinion the user stated about the item (a low rating or a
    complaint turns the view and click of that item into dislikes too)."""
    said = opinions(behaviors, scoring, text_opinion).tolist()
    by_item = {}  # item id -> [sum, count] of the opinions stated about it
    for b, opinion in zip(behaviors, said):
        if not math.isnan(opinion):
            total = by_item.setdefault(b.item_id, [0.0, 0])
            total[0] += opinion
            total[1] += 1
    strength = [by_item[b.item_id][0] / by_item[b.item_id][1] if b.item_id in by_item else 0.0
                for b in behaviors]
    margin = scoring.neutral_margin
    labels = [NEGATIVE if s < -margin else POSITIVE if s > margin else NEUTRAL
              for s in strength]
    return labels, np.array(strength, np.float64)


def behavior_weights(behaviors, scoring, text_opinion=None):
    """Signed weights [n] of one user's time-sorted behaviours (see the module docstring) and
    their polarity labels. With ``scoring.polarity == "off"`` every weight is positive."""
    if not behaviors:
        return np.zeros(0, dtype=np.float64), []
    signed = scoring.polarity == "signed"
    labels, strength = (polarities(behaviors, scoring, text_opinion) if signed
                        else ([NEUTRAL] * len(behaviors), np.zeros(len(behaviors))))
    # Vectorised over the behaviours: type weight x recency, then x -|opinion| for a dislike
    # or x rating / rating_max for a rated behaviour.
    weights = np.array([scoring.behavior_weight(b.behavior) for b in behaviors], np.float64)
    if scoring.half_life_days > 0:
        ts = np.array([b.timestamp for b in behaviors], np.float64)
        weights *= 0.5 ** ((ts.max() - ts) / SECONDS_PER_DAY / scoring.half_life_days)
    negative = np.array([label == NEGATIVE for label in labels], bool)
    rating = np.array([np.nan if b.rating is None else max(b.rating, 0.0) for b in behaviors],
                      np.float64)
    rated = ~negative & ~np.isnan(rating)
    weights[negative] *= -np.abs(strength[negative])
    weights[rated] *= rating[rated] / scoring.rating_max
    return weights, labels


def _bucket(days):
    return 1 + min(BUCKETS - 2, int(math.log2(1.0 + max(days, 0.0))))


def unit_features(behavior, previous, latest, text):
    """[kind, age bucket, gap bucket] of a behaviour's item unit (``text``: its text unit)."""
    kind = TEXT_KIND if text else KINDS.get(behavior.behavior.casefold(), OTHER_KIND)
    gap = 0.0 if previous is None else behavior.timestamp - previous.timestamp
    return [kind, _bucket((latest - behavior.timestamp) / SECONDS_PER_DAY),
            _bucket(gap / SECONDS_PER_DAY)]


def user_units(behaviors, scoring, item_rows, text_rows, text_opinion=None):
    """One user's :class:`Units` (each behaviour's item unit, then its text unit).

    ``item_rows``: item id -> unit-table row; ``text_rows``: raw behaviour text -> row (texts
    that clean to nothing have none and give no unit). Opinions are read from the whole
    history, units from its latest ``max_history`` behaviours; a text unit weighs
    ``text_weight`` times its behaviour's weight. ``text_opinion``: raw text -> sentiment.
    """
    weights, labels = behavior_weights(behaviors, scoring, text_opinion)
    start = max(0, len(behaviors) - scoring.max_history)
    recent = behaviors[start:]
    latest = max((b.timestamp for b in recent), default=0.0)
    # Vectorised over the behaviours (this ran per behaviour in Python: a third of a warm run).
    item_row = []
    for b in recent:
        row = item_rows.get(b.item_id)
        if row is None:
            raise ValueError(_unknown_item_message(b))
        item_row.append(row)
    text_row = [text_rows.get(b.text) if b.text else None for b in recent]
    has_text = np.array([r is not None for r in text_row], bool)  # [n]
    counts = 1 + has_text.astype(np.int64)  # units per behaviour: its item, then its text
    first = np.cumsum(counts) - counts  # [n] position of each behaviour's item unit
    text_at = first[has_text] + 1
    owners = np.repeat(np.arange(len(recent), dtype=np.int32), counts)  # [N]
    rows = np.zeros(len(owners), np.int32)
    rows[first] = item_row
    rows[text_at] = [r for r in text_row if r is not None]
    w = np.asarray(weights[start:], np.float64)
    unit_weights = np.zeros(len(owners), np.float64)
    unit_weights[first] = w
    unit_weights[text_at] = w[has_text] * scoring.text_weight
    features = behaviour_features(recent, latest)[owners]  # [N, 3]
    features[text_at, 0] = TEXT_KIND
    return Units(recent, rows, unit_weights.astype(np.float32), owners,
                 features.reshape(-1, FEATURES), labels[start:])


def behaviour_features(behaviors, latest):
    """[n, 3] int32 [kind, age bucket, gap bucket] of time-sorted behaviours' item units, as
    :func:`unit_features` gives them one at a time."""
    if not behaviors:
        return np.zeros((0, FEATURES), np.int32)
    ts = np.array([b.timestamp for b in behaviors], np.float64)
    kinds = [KINDS.get(b.behavior.casefold(), OTHER_KIND) for b in behaviors]
    gaps = np.concatenate([[0.0], np.diff(ts)])
    return np.stack([np.array(kinds, np.int32), _buckets((latest - ts) / SECONDS_PER_DAY),
                     _buckets(gaps / SECONDS_PER_DAY)], axis=1).astype(np.int32)


def _buckets(days):
    """:func:`_bucket` of an array of day counts."""
    return 1 + np.minimum(BUCKETS - 2, np.floor(np.log2(1.0 + np.maximum(days, 0.0))))


def _unknown_item_message(behavior):
    where = f"{behavior.source} line {behavior.line}: " if behavior.source else ""
    return (f"{where}a behaviour refers to item {behavior.item_id!r}, which is not in the "
            f"indexed catalogue; index the items file the behaviour log comes from")


def text_unit_rows(texts, pipeline, offset):
    """Behaviour texts -> (distinct cleaned texts, raw text -> unit row ``offset + i``).

    Texts that clean to nothing get no row (and so contribute no unit).
    """
    raw = sorted({t for t in texts if t})
    cleaned = pipeline.clean_many(raw)
    distinct = sorted({c for c in cleaned if c})
    slot = {c: offset + i for i, c in enumerate(distinct)}
    return distinct, {r: slot[c] for r, c in zip(raw, cleaned) if c}


def pad_units(units):
    """Users' :class:`Units` -> rows [B, N] int32, signed weights [B, N] float32 and features
    [B, N, 3] int32 (padding: row 0, weight 0, features 0)."""
    n = max((len(u.rows) for u in units), default=1) or 1
    rows = np.zeros((len(units), n), dtype=np.int32)  # [B, N]
    weights = np.zeros((len(units), n), dtype=np.float32)  # [B, N]
    features = np.zeros((len(units), n, FEATURES), dtype=np.int32)  # [B, N, 3]
    for b, u in enumerate(units):
        rows[b, :len(u.rows)] = u.rows
        weights[b, :len(u.weights)] = u.weights
        features[b, :len(u.rows)] = u.features
    return rows, weights, features
