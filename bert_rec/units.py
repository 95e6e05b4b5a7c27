"""A user's behaviours as weighted units: the rows the user tower pools (numpy only).

Each of a user's latest ``max_history`` behaviours contributes one unit for its item and, when
it carries text that cleans to something (a comment, review, query), one unit for the text.
A unit is a row of a *unit table*: the catalogue's items first (rows ``0..M-1``), then the
distinct cleaned behaviour texts (rows ``M..``). Its weight is behaviour type x rating x
recency (:func:`behavior_weights`). Recommending, training, evaluation and the serving client
all build their units here, so they pool exactly the same things.
"""

import dataclasses

import numpy as np

SECONDS_PER_DAY = 86400.0


@dataclasses.dataclass
class Units:
    """One user's units: ``rows`` [n] of the unit table, ``weights`` [n], and ``owners`` [n]
    (the index in ``recent`` of the behaviour each unit comes from)."""
    recent: list
    rows: np.ndarray
    weights: np.ndarray
    owners: np.ndarray


def behavior_weights(behaviors, scoring):
    """Per-behaviour weights (type x rating x recency) for one user's time-sorted behaviours."""
    if not behaviors:
        return np.zeros(0, dtype=np.float64)
    latest = max(b.timestamp for b in behaviors)
    weights = np.empty(len(behaviors), dtype=np.float64)
    for i, b in enumerate(behaviors):
        w = scoring.behavior_weight(b.behavior)
        if b.rating is not None:
            w *= max(b.rating, 0.0) / scoring.rating_max
        if scoring.half_life_days > 0:
            age_days = (latest - b.timestamp) / SECONDS_PER_DAY
            w *= 0.5 ** (age_days / scoring.half_life_days)
        weights[i] = w
    return weights


def user_units(behaviors, scoring, item_rows, text_rows):
    """One user's :class:`Units` (items first, then behaviour texts, in behaviour order).

    ``item_rows``: item id -> unit-table row; ``text_rows``: raw behaviour text -> row (texts
    that clean to nothing have none and give no unit). The text unit weighs ``text_weight``
    times its behaviour's weight.
    """
    recent = behaviors[-scoring.max_history:]
    weights = behavior_weights(recent, scoring)
    rows, unit_weights, owners = [], [], []
    for j, (b, w) in enumerate(zip(recent, weights)):
        row = item_rows.get(b.item_id)
        if row is None:
            raise ValueError(_unknown_item_message(b))
        rows.append(row)
        unit_weights.append(w)
        owners.append(j)
        text_row = text_rows.get(b.text) if b.text else None
        if text_row is not None:
            rows.append(text_row)
            unit_weights.append(w * scoring.text_weight)
            owners.append(j)
    return Units(recent, np.array(rows, np.int32), np.array(unit_weights, np.float32),
                 np.array(owners, np.int32))


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
    """Users' :class:`Units` -> rows [B, N] int32 and weights [B, N] float32 (padding: row 0,
    weight 0)."""
    n = max((len(u.rows) for u in units), default=1) or 1
    rows = np.zeros((len(units), n), dtype=np.int32)  # [B, N]
    weights = np.zeros((len(units), n), dtype=np.float32)  # [B, N]
    for b, u in enumerate(units):
        rows[b, :len(u.rows)] = u.rows
        weights[b, :len(u.weights)] = u.weights
    return rows, weights
