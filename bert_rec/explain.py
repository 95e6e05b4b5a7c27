"""Why an item was recommended: each behaviour's exact share of its score (numpy only).

The user tower pools unit vectors v_j (unit length) with weights alpha_j into the interest
u = sum_j alpha_j v_j, and an item x scores s(x) = cos(u, x). Because u is linear in the v_j,
the score splits exactly into per-unit contributions

    c_j(x) = alpha_j (v_j . x/|x|) / |u|,               sum_j c_j(x) = s(x)

and a behaviour's ``share`` is the sum of its units' contributions over the score. The shares
of all a user's behaviours sum to 1; explanations list the largest.
"""

import dataclasses
import datetime

import numpy as np

from .utils.terminal import safe


@dataclasses.dataclass
class Because:
    """One behaviour behind a recommendation and its share of the score."""
    item_id: str
    behavior: str
    text: str
    share: float


@dataclasses.dataclass
class Recommendation:
    item_id: str
    score: float
    title: str
    because: list


@dataclasses.dataclass
class UserRecommendations:
    user_id: str
    items: list

    def to_dict(self):
        return dataclasses.asdict(self)


def behavior_shares(interest, unit_vectors, alpha, owners, n_behaviors, item_vectors):
    """Each behaviour's share of cos(u, x) for the items x: ``[len(item_vectors), n_behaviors]``.

    ``interest`` [D]; ``unit_vectors`` [n, D] and ``alpha`` [n] of the user's units, ``owners``
    [n] their behaviours; ``item_vectors`` [k, D]. The shares of one item sum to 1.
    """
    x = np.asarray(item_vectors, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # [k, D]
    v = unit_vectors / np.maximum(np.linalg.norm(unit_vectors, axis=1, keepdims=True), 1e-12)
    u_norm = max(float(np.linalg.norm(interest)), 1e-12)
    contrib = alpha[:, None] * (v @ x.T) / u_norm  # [n units, k]
    per_behavior = np.zeros((n_behaviors, len(x)))
    np.add.at(per_behavior, owners, contrib)
    total = per_behavior.sum(axis=0)  # [k]
    safe = np.where(np.abs(total) > 1e-12, total, 1.0)
    return (per_behavior / safe).T


def merge_because(recent, shares, normalize, limit):
    """Per recommended item, the ``limit`` behaviours with the largest shares ``[k, n]``.

    Repeats of the same (item, behaviour, text) are added up (ties keep first-seen order); only
    the texts shown are normalised (``normalize``), each once.
    """
    keys = {}
    inverse = np.array([keys.setdefault((b.item_id, b.behavior, b.text), len(keys))
                        for b in recent])  # behaviour -> merged key
    onehot = np.zeros((len(recent), len(keys)))
    onehot[np.arange(len(recent)), inverse] = 1.0
    merged = np.asarray(shares) @ onehot  # [k, K]
    key_list = list(keys)
    shown = {}
    out = []
    for row in merged:
        because = []
        for j in np.argsort(-row, kind="stable")[:limit]:
            item_id, behavior, text = key_list[j]
            if text not in shown:
                shown[text] = normalize(text) if text else ""
            because.append(Because(item_id, behavior, shown[text], float(row[j])))
        out.append(because)
    return out


VERBS = {"view": "viewed", "click": "clicked", "rate": "rated", "comment": "commented on"}


def format_recommendations(results, histories, titles):
    """Readable per-user blocks: rank, score, item, title, and the behaviours behind it."""
    lines = []
    for result in results:
        history = histories[result.user_id]
        latest = datetime.datetime.fromtimestamp(history[-1].timestamp, datetime.timezone.utc)
        lines.append(f"user {safe(result.user_id)}: {len(history)} behaviours, latest "
                     f"{latest:%Y-%m-%d %H:%M} UTC")
        for rank, rec in enumerate(result.items, 1):
            lines.append(f"  {rank:>2}. {rec.score:6.3f}  {safe(rec.item_id):<10} "
                         f"{_short(rec.title, 30)}")
            for why in rec.because:
                said = f" \"{_short(why.text, 24)}\"" if why.text else ""
                verb = safe(VERBS.get(why.behavior, why.behavior))
                # a negative share ranked the item lower (e.g. a disliked behaviour)
                mark = " [disliked]" if getattr(why, "polarity", None) == "negative" else ""
                lines.append(f"          {why.share:6.1%}  {verb} {safe(why.item_id)} "
                             f"{_short(titles.get(why.item_id, ''), 20)}{said}{mark}")
        lines.append("")
    return "\n".join(lines)


def _short(text, width):
    """Single-line text cut to ``width`` characters with an ellipsis, control and bidi
    characters shown as escapes (text from users' data is inert in a terminal)."""
    text = " ".join(str(text).split())
    return safe(text if len(text) <= width else text[:width - 1] + "…")
