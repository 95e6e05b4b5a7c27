"""Why an item was recommended: each behaviour's exact share of its score (numpy only).

The user tower pools unit vectors v_j (unit length) with signed weights alpha_j into the
interest u = sum_{alpha_j > 0} alpha_j v_j and the dislikes d = sum_{alpha_j < 0} |alpha_j| v_j,
and an item x scores s(x) = cos(u, x) - lambda cos(d, x) (lambda: the dislike weight). Both
terms are linear in the v_j, so the score splits exactly into per-unit contributions

    c_j(x) = alpha_j (v_j . x/|x|) / |u|            for a liked unit,
    c_j(x) = -lambda |alpha_j| (v_j . x/|x|) / |d|  for a disliked one,   sum_j c_j(x) = s(x)

and a behaviour's ``share`` is the sum of its units' contributions over the score. The shares
of all a user's behaviours sum to 1; a disliked behaviour's share is negative when the item
resembles it ("ranked lower because you disliked ..."). Explanations list the behaviours with
the largest absolute shares.
"""

import dataclasses
import datetime

import numpy as np

from .utils.terminal import safe


@dataclasses.dataclass
class Because:
    """One behaviour behind a recommendation and its share of the score; ``polarity`` is
    "positive" (the user said they liked the item), "negative" (disliked: the share is
    negative when the recommendation resembles it) or "neutral" (used it, said nothing)."""
    item_id: str
    behavior: str
    text: str
    share: float
    polarity: str = "neutral"


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


def behavior_shares(profile, unit_vectors, alpha, owners, n_behaviors, item_vectors,
                    dislike_weight=0.0):
    """Each behaviour's share of s(x) for the items x: ``[len(item_vectors), n_behaviors]``.

    ``profile`` [2, D] (interest, dislikes); ``unit_vectors`` [n, D] and signed ``alpha`` [n]
    of the user's units, ``owners`` [n] their behaviours; ``item_vectors`` [k, D]. The shares
    of one item sum to 1.
    """
    x = np.asarray(item_vectors, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)  # [k, D]
    v = unit_vectors / np.maximum(np.linalg.norm(unit_vectors, axis=1, keepdims=True), 1e-12)
    u_norm, d_norm = (max(float(np.linalg.norm(row)), 1e-12) for row in profile)
    coef = np.where(alpha > 0, alpha / u_norm, dislike_weight * alpha / d_norm)  # [n]
    contrib = coef[:, None] * (v @ x.T)  # [n units, k]
    per_behavior = np.zeros((n_behaviors, len(x)))
    np.add.at(per_behavior, owners, contrib)
    total = per_behavior.sum(axis=0)  # [k]
    safe = np.where(np.abs(total) > 1e-12, total, 1.0)
    return (per_behavior / safe).T


def merge_because(recent, shares, normalize, limit, polarity=None):
    """Per recommended item, the ``limit`` behaviours with the largest absolute shares
    ``[k, n]``.

    Repeats of the same (item, behaviour, text) are added up (ties keep first-seen order); only
    the texts shown are normalised (``normalize``), each once. ``polarity``: per behaviour.
    """
    keys = {}
    polarity = list(polarity) if polarity is not None else ["neutral"] * len(recent)
    inverse = np.array([keys.setdefault((b.item_id, b.behavior, b.text, p), len(keys))
                        for b, p in zip(recent, polarity)])  # behaviour -> merged key
    onehot = np.zeros((len(recent), len(keys)))
    onehot[np.arange(len(recent)), inverse] = 1.0
    merged = np.asarray(shares) @ onehot  # [k, K]
    key_list = list(keys)
    shown = {}
    out = []
    for row in merged:
        because = []
        for j in np.argsort(-np.abs(row), kind="stable")[:limit]:
            item_id, behavior, text, said = key_list[j]
            if text not in shown:
                shown[text] = normalize(text) if text else ""
            because.append(Because(item_id, behavior, shown[text], float(row[j]), said))
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
                lines.append(f"          {why.share:6.1%}  {_reason(why)}{verb} "
                             f"{safe(why.item_id)} {_short(titles.get(why.item_id, ''), 20)}"
                             f"{said}")
        lines.append("")
    return "\n".join(lines)


def _reason(why):
    """Words before a behaviour: a disliked one lowered the score, or (rarely) raised it."""
    if why.polarity != "negative":
        return ""
    if why.share < 0:
        return "ranked lower because you disliked: "
    return "ranked higher as unlike what you disliked: "


def _short(text, width):
    """Single-line text cut to ``width`` characters with an ellipsis, control and bidi
    characters shown as escapes (text from users' data is inert in a terminal)."""
    text = " ".join(str(text).split())
    return safe(text if len(text) <= width else text[:width - 1] + "…")
