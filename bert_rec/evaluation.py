"""Offline evaluation: leave-last-out split, full-ranking metrics and simple baselines.

Protocol
--------
* Split (:func:`leave_last_out`): for each user, the target is the *last distinct item*,
  the item whose first behaviour comes latest in time (ties in timestamp resolved by input
  order, as :func:`bert_rec.data.group_by_user` sorts them). The history is every behaviour
  strictly before that first behaviour. Users with fewer than two distinct items are skipped.
* Candidates: the whole catalogue minus the items in the case's history.
* Rank (:func:`target_ranks`): ``1 + #candidates scoring strictly higher than the target
  + #other candidates scoring exactly the same``. Ties count against the target, so a
  constant scorer ranks every target last. NaN scores are treated as ``-inf``.
* Metrics at K (:func:`evaluate_scores`), averaged over cases: HR@K (= Recall@K with one
  target), NDCG@K (``1/log2(rank+1)`` if ``rank <= K``), MRR (``1/rank``, not cut at K) and
  coverage@K (distinct items in any case's top-K, history excluded and ties broken by
  catalogue order, divided by the catalogue size).

Baselines (:class:`Popularity`, :class:`ItemKNN`, :class:`TfidfContent`) are fitted only on
the cases' histories, so nothing at or after any user's target is seen (no leakage).
Only numpy is used; this module never imports TensorFlow.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .config import DEFAULT_BEHAVIOR_WEIGHTS, ScoringConfig
from .data import Behavior, Item
from .retrieval import best_k

__all__ = [
    "Case",
    "ItemKNN",
    "Popularity",
    "TfidfContent",
    "evaluate_scores",
    "format_metrics",
    "item_index",
    "leave_last_out",
    "run_baselines",
    "target_ranks",
]

METRICS = ("hr", "ndcg", "mrr", "coverage", "disliked")
LOWER_IS_BETTER = ("disliked",)


# --------------------------------------------------------------------------- split


@dataclass
class Case:
    """One evaluation case: a user's history and the held-out target item_id."""

    user_id: str
    history: list[Behavior]
    target: str


def leave_last_out(histories: Mapping[str, Sequence[Behavior]]) -> tuple[list[Case], int]:
    """Split each user's time-sorted behaviours into (history, last distinct item).

    `histories` is the output of :func:`bert_rec.data.group_by_user`. Returns the cases in the
    input order of users and the number of users skipped for having fewer than 2 distinct items.
    """
    cases: list[Case] = []
    skipped = 0
    for user_id, events in histories.items():
        first_seen: dict[str, int] = {}
        for position, event in enumerate(events):
            first_seen.setdefault(event.item_id, position)
        if len(first_seen) < 2:
            skipped += 1
            continue
        target, cut = max(first_seen.items(), key=lambda pair: pair[1])
        cases.append(Case(user_id, list(events[:cut]), target))
    return cases, skipped


# --------------------------------------------------------------------------- metrics


def item_index(items: Iterable[Item]) -> dict[str, int]:
    """Map item_id -> column of the score matrix (catalogue order); raise on a repeated id."""
    index: dict[str, int] = {}
    for position, item in enumerate(items):
        if item.item_id in index:
            raise ValueError(f"item_id {item.item_id!r} appears more than once in the catalogue")
        index[item.item_id] = position
    return index


def _history_columns(case: Case, index: Mapping[str, int]) -> list[int]:
    """Columns of the catalogue items in the case's history (items outside the catalogue are ignored)."""
    return sorted({index[event.item_id] for event in case.history if event.item_id in index})


def _candidate_mask(cases: Sequence[Case], index: Mapping[str, int], width: int) -> np.ndarray:
    """Boolean [B, M]: True for the items each case may be recommended (not in its history)."""
    mask = np.ones((len(cases), width), dtype=bool)
    for row, case in enumerate(cases):
        mask[row, _history_columns(case, index)] = False
    return mask


def _target_columns(cases: Sequence[Case], index: Mapping[str, int], mask: np.ndarray) -> np.ndarray:
    """Column of each case's target; raise ValueError for a target outside the catalogue or in the history."""
    columns = np.empty(len(cases), dtype=np.int64)
    for row, case in enumerate(cases):
        if case.target not in index:
            raise ValueError(f"user {case.user_id!r}: target item_id {case.target!r} is not in the catalogue")
        columns[row] = index[case.target]
        if not mask[row, columns[row]]:
            raise ValueError(f"user {case.user_id!r}: target item_id {case.target!r} is also in the history")
    return columns


def _check_scores(scores, cases: Sequence[Case], width: int) -> np.ndarray:
    """Return `scores` as a float [B, M] array with NaN replaced by -inf; raise on a wrong shape."""
    array = np.asarray(scores, dtype=np.float64)
    if array.shape != (len(cases), width):
        raise ValueError(f"expected scores of shape ({len(cases)}, {width}) "
                         f"[cases, catalogue items]; got {array.shape}")
    return np.where(np.isnan(array), -np.inf, array)


def _ranks(scores: np.ndarray, mask: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Pessimistic 1-based rank of each target among its candidates."""
    rows = np.arange(len(targets))
    target_scores = scores[rows, targets][:, None]
    higher = ((scores > target_scores) & mask).sum(axis=1)
    tied = ((scores == target_scores) & mask).sum(axis=1) - 1  # minus the target itself
    return (1 + higher + tied).astype(np.int64)


def target_ranks(scores, cases: Sequence[Case], item_index: Mapping[str, int]) -> np.ndarray:
    """Return the rank (1 = best) of each case's target among its candidates.

    `scores` is [B, M] over the catalogue (column = ``item_index[item_id]``). Candidates are all
    items not in the case's history; the rank is 1 + #candidates scoring higher + #other
    candidates scoring the same (ties count against the target). NaN counts as -inf.
    """
    width = len(item_index)
    array = _check_scores(scores, cases, width)
    mask = _candidate_mask(cases, item_index, width)
    return _ranks(array, mask, _target_columns(cases, item_index, mask))


def _top_k(scores: np.ndarray, mask: np.ndarray, k: int) -> list[np.ndarray]:
    """Each row's top-k candidate columns (highest score first, ties by catalogue order)."""
    tops = []
    for row_scores, row_mask in zip(scores, mask):
        columns = np.flatnonzero(row_mask)
        tops.append(best_k(columns, row_scores[columns], k)[0])
    return tops


@dataclass
class DislikeProbe:
    """What the disliked-items rate needs: each user's disliked items and an item-item content
    similarity [M, M] (TF-IDF cosine, the same for every method)."""

    disliked: dict[str, set[str]]
    similarity: np.ndarray

    def count(self, cases: Sequence[Case], tops: list[np.ndarray],
              index: Mapping[str, int]) -> tuple[int, int]:
        """(recommended items whose closest history item the user disliked, items recommended)."""
        hits = total = 0
        for case, top in zip(cases, tops):
            total += len(top)
            bad = self.disliked.get(case.user_id)
            history = _history_columns(case, index)
            if not bad or not history or not len(top):
                continue
            closest = np.asarray(history)[np.argmax(self.similarity[np.ix_(top, history)], 1)]
            bad_columns = {index[i] for i in bad if i in index}
            hits += sum(int(c) in bad_columns for c in closest)
        return hits, total


def dislike_probe(items: Sequence[Item], cases: Sequence[Case], scoring: ScoringConfig | None = None,
                  truth: Iterable[tuple[str, str]] | None = None) -> DislikeProbe:
    """The probe of :func:`evaluate_scores`'s disliked-items rate.

    Disliked items: the ``truth`` (user, item) pairs when given (a simulator's ground truth),
    else the items a user rated below the rating scale's midpoint in their history.
    """
    scoring = scoring or ScoringConfig()
    disliked: dict[str, set[str]] = {}
    if truth is not None:
        for user, item in truth:
            disliked.setdefault(user, set()).add(item)
    else:
        for case in cases:
            low = {e.item_id for e in case.history
                   if e.rating is not None and e.rating < scoring.midpoint}
            if low:
                disliked[case.user_id] = low
    similarity = TfidfContent().fit(items, cases).gram  # rows are unit vectors: cosines
    return DislikeProbe(disliked, similarity)


def evaluate_scores(score_fn: Callable[[list[Case]], np.ndarray], cases: Sequence[Case],
                    items: Sequence[Item], k: int = 10, batch_size: int = 256,
                    probe: DislikeProbe | None = None) -> dict[str, float]:
    """Score `cases` in batches with `score_fn` and return mean HR@k, NDCG@k, MRR and coverage@k
    (and, with a ``probe``, the disliked-items rate: the share of top-k items whose most similar
    history item the user disliked; lower is better).

    ``score_fn(list_of_cases)`` must return a float array [len(list_of_cases), len(items)]
    with columns in the order of `items`.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1; got {k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size}")
    if not cases:
        raise ValueError("no cases to evaluate (every user has fewer than 2 distinct items?)")
    index = item_index(items)
    width = len(index)
    ranks: list[np.ndarray] = []
    covered: set[int] = set()
    disliked = recommended = 0
    for start in range(0, len(cases), batch_size):
        batch = list(cases[start:start + batch_size])
        mask = _candidate_mask(batch, index, width)
        targets = _target_columns(batch, index, mask)
        scores = _check_scores(score_fn(batch), batch, width)
        ranks.append(_ranks(scores, mask, targets))
        tops = _top_k(scores, mask, k)
        covered.update(int(c) for top in tops for c in top)
        if probe is not None:
            hits, total = probe.count(batch, tops, index)
            disliked, recommended = disliked + hits, recommended + total
    rank = np.concatenate(ranks).astype(np.float64)
    hit = rank <= k
    metrics = {
        "hr": float(hit.mean()),
        "ndcg": float(np.where(hit, 1.0 / np.log2(rank + 1.0), 0.0).mean()),
        "mrr": float((1.0 / rank).mean()),
        "coverage": float(len(covered) / width),
    }
    if probe is not None:
        metrics["disliked"] = disliked / max(recommended, 1)
    return metrics


# --------------------------------------------------------------------------- baselines


def _scoring(weights: Mapping[str, float] | ScoringConfig | None) -> ScoringConfig:
    """The behaviour weights as a ScoringConfig: the model's, a {name: weight} table, or the
    default table (config.DEFAULT_BEHAVIOR_WEIGHTS); names match ignoring case."""
    if isinstance(weights, ScoringConfig):
        return weights
    return ScoringConfig(behavior_weights=dict(weights or DEFAULT_BEHAVIOR_WEIGHTS))


class _Baseline:
    """Shared plumbing: the catalogue index and per-case history weight matrices."""

    name = "baseline"

    def __init__(self, weights: Mapping[str, float] | ScoringConfig | None = None):
        self.scoring = _scoring(weights)
        self.index: dict[str, int] | None = None

    def _require_fit(self) -> dict[str, int]:
        if self.index is None:
            raise RuntimeError(f"{type(self).__name__} must be fitted before scoring")
        return self.index

    def _history_weights(self, cases: Sequence[Case]) -> np.ndarray:
        """[B, M]: summed behaviour weights of each case's history per item (repeats add up)."""
        index = self._require_fit()
        matrix = np.zeros((len(cases), len(index)), dtype=np.float64)
        for row, case in enumerate(cases):
            for event in case.history:
                column = index.get(event.item_id)
                if column is not None:
                    matrix[row, column] += self.scoring.behavior_weight(event.behavior)
        return matrix

    def _interactions(self, cases: Sequence[Case]) -> np.ndarray:
        """Binary user x item matrix [len(cases), M] (float32) from the cases' histories only."""
        index = self._require_fit()
        rows = [row for row, case in enumerate(cases) for event in case.history if event.item_id in index]
        cols = [index[event.item_id] for case in cases for event in case.history if event.item_id in index]
        matrix = np.zeros((len(cases), len(index)), dtype=np.float32)
        matrix[np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)] = 1.0
        return matrix


class Popularity(_Baseline):
    """Score = number of distinct users who interacted with the item in the training histories."""

    name = "popularity"

    def __init__(self):
        super().__init__()
        self.counts: np.ndarray | None = None

    def fit(self, items: Sequence[Item], cases: Sequence[Case]) -> Popularity:
        self.index = item_index(items)
        self.counts = self._interactions(cases).sum(axis=0).astype(np.float64)
        return self

    def scores(self, cases: Sequence[Case]) -> np.ndarray:
        self._require_fit()
        return np.broadcast_to(self.counts, (len(cases), len(self.counts))).copy()


class ItemKNN(_Baseline):
    """Item-based kNN: cosine similarity of items' binary user vectors, top `neighbors` kept per item.

    score(user, j) = sum over history items h of weight(user, h) * sim_h[j], where sim_h keeps
    only h's `neighbors` most similar items (ties by catalogue order) and sim_h[h] = 0.
    The similarity matrix is dense M x M float32 (fine for a catalogue of a few thousand items).
    """

    name = "itemknn"

    def __init__(self, neighbors: int = 50,
                 weights: Mapping[str, float] | ScoringConfig | None = None):
        super().__init__(weights)
        if neighbors < 1:
            raise ValueError(f"neighbors must be at least 1; got {neighbors}")
        self.neighbors = neighbors
        self.similarity: np.ndarray | None = None

    def fit(self, items: Sequence[Item], cases: Sequence[Case]) -> ItemKNN:
        self.index = item_index(items)
        users = self._interactions(cases)
        cooccurrence = users.T @ users                       # [M, M] co-occurrence counts
        norms = np.sqrt(np.diag(cooccurrence).astype(np.float64))
        denominator = np.outer(norms, norms)
        with np.errstate(divide="ignore", invalid="ignore"):
            similarity = np.where(denominator > 0, cooccurrence / denominator, 0.0).astype(np.float32)
        np.fill_diagonal(similarity, 0.0)
        self.similarity = self._prune(similarity)
        return self

    def _prune(self, similarity: np.ndarray, chunk: int = 512) -> np.ndarray:
        """Keep each row's `neighbors` largest positive similarities (ties by column order)."""
        width = similarity.shape[1]
        if self.neighbors >= width:
            return similarity
        pruned = np.zeros_like(similarity)
        for start in range(0, similarity.shape[0], chunk):
            block = similarity[start:start + chunk]
            keep = np.argsort(-block, axis=1, kind="stable")[:, :self.neighbors]
            rows = np.arange(block.shape[0])[:, None]
            pruned[start + rows, keep] = block[rows, keep]
        return pruned

    def scores(self, cases: Sequence[Case]) -> np.ndarray:
        self._require_fit()
        return self._history_weights(cases) @ self.similarity.astype(np.float64)


class TfidfContent(_Baseline):
    """Content-based: cosine between a user's TF-IDF profile and each item's TF-IDF vector.

    Item vectors: raw token counts of ``item.full_text()`` (tokens from ``TextPipeline().words``
    or `tokenize`) times smooth idf ``ln((1+N)/(1+df)) + 1``, L2-normalised. The profile is the
    behaviour-weighted mean of the history items' vectors.

    Representation: the vocabulary is not capped. Item vectors are kept sparse, as per-token
    postings (item indices and values); only the item x item Gram matrix G = X X^T (dense M x M)
    is materialised. Then cosine(profile, x_j) = (w G)_j / sqrt(w G w^T) for the history weight
    vector w, which equals the cosine with the weighted-mean profile exactly.
    """

    name = "tfidf"

    def __init__(self, weights: Mapping[str, float] | ScoringConfig | None = None,
                 tokenize: Callable[[str], list[str]] | None = None):
        super().__init__(weights)
        self.tokenize = tokenize
        self.vocabulary: dict[str, int] | None = None
        self.idf: np.ndarray | None = None
        self.gram: np.ndarray | None = None

    def _tokenizer(self) -> Callable[[str], list[str]]:
        if self.tokenize is None:
            # imported lazily: jieba loads only when TF-IDF is used. Keywords: the strict stopword
            # list (negations and degree words are not content words of an item).
            from .text import TextConfig, TextPipeline
            self.tokenize = TextPipeline(TextConfig(keep_meaning_words=False)).words
        return self.tokenize

    def fit(self, items: Sequence[Item], cases: Sequence[Case]) -> TfidfContent:
        """Build the item vectors from the catalogue text (item content only; `cases` is not needed)."""
        self.index = item_index(items)
        tokenize = self._tokenizer()
        counts = [Counter(token for token in tokenize(item.full_text()) if token.strip()) for item in items]
        vocabulary: dict[str, int] = {}
        for bag in counts:
            for token in bag:
                vocabulary.setdefault(token, len(vocabulary))
        rows = np.asarray([row for row, bag in enumerate(counts) for _ in bag], dtype=np.int64)
        cols = np.asarray([vocabulary[token] for bag in counts for token in bag], dtype=np.int64)
        tf = np.asarray([count for bag in counts for count in bag.values()], dtype=np.float64)
        n_items = len(counts)
        df = np.bincount(cols, minlength=len(vocabulary)).astype(np.float64)
        idf = np.log((1.0 + n_items) / (1.0 + df)) + 1.0
        values = tf * idf[cols]
        norms = np.sqrt(np.bincount(rows, weights=values ** 2, minlength=n_items))
        values = values / norms[rows]  # every stored row has at least one token, so norm > 0
        self.vocabulary, self.idf = vocabulary, idf
        self.gram = self._gram(rows, cols, values, n_items, len(vocabulary))
        return self

    @staticmethod
    def _gram(rows: np.ndarray, cols: np.ndarray, values: np.ndarray, n_items: int,
              n_tokens: int) -> np.ndarray:
        """G = X X^T from sparse (row, col, value) triples, accumulated token by token."""
        gram = np.zeros((n_items, n_items), dtype=np.float64)
        np.add.at(gram, (rows, rows), values ** 2)           # diagonal from every token
        order = np.argsort(cols, kind="stable")
        rows, cols, values = rows[order], cols[order], values[order]
        bounds = np.searchsorted(cols, np.arange(n_tokens + 1))
        for token in np.flatnonzero(np.diff(bounds) >= 2):   # tokens shared by several items
            start, stop = bounds[token], bounds[token + 1]
            members, weights = rows[start:stop], values[start:stop]
            block = np.outer(weights, weights)
            np.fill_diagonal(block, 0.0)                     # diagonal already added above
            gram[np.ix_(members, members)] += block
        return gram

    def scores(self, cases: Sequence[Case]) -> np.ndarray:
        self._require_fit()
        weights = self._history_weights(cases)
        dots = weights @ self.gram                           # [B, M]: w G
        norms = np.sqrt(np.maximum(np.einsum("bm,bm->b", dots, weights), 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(norms[:, None] > 0, dots / norms[:, None], 0.0)


# --------------------------------------------------------------------------- reporting


def run_baselines(items: Sequence[Item], cases: Sequence[Case], k: int = 10,
                  weights: Mapping[str, float] | ScoringConfig | None = None, neighbors: int = 50,
                  tokenize: Callable[[str], list[str]] | None = None,
                  probe: DislikeProbe | None = None) -> dict[str, dict[str, float]]:
    """Fit Popularity, ItemKNN and TfidfContent on the cases' histories and evaluate each at `k`.

    ``weights``: the behaviour weights of the profiles (pass the model's ScoringConfig, so the
    baselines weigh behaviours as the model does).
    """
    models = (Popularity(), ItemKNN(neighbors=neighbors, weights=weights),
              TfidfContent(weights=weights, tokenize=tokenize))
    results: dict[str, dict[str, float]] = {}
    for model in models:
        model.fit(items, cases)
        results[model.name] = evaluate_scores(model.scores, cases, items, k=k, probe=probe)
    return results


def format_metrics(results: Mapping[str, Mapping[str, float]], k: int) -> str:
    """Return a plain-text table of `results` (method -> metrics); the best value per column gets '*'
    (the lowest for the disliked-items rate, a column shown only when the results have it)."""
    titles = {"hr": f"HR@{k}", "ndcg": f"NDCG@{k}", "mrr": "MRR", "coverage": f"Coverage@{k}",
              "disliked": f"Disliked@{k}"}
    metrics = [m for m in METRICS if all(m in row for row in results.values())]
    headers = ["method"] + [titles[m] for m in metrics]
    pick = {m: (min if m in LOWER_IS_BETTER else max) for m in metrics}
    best = {m: pick[m]((row[m] for row in results.values()), default=math.nan) for m in metrics}
    lines = []
    for name, row in results.items():
        cells = [name]
        for metric in metrics:
            mark = "*" if row[metric] == best[metric] else " "
            cells.append(f"{row[metric]:.4f}{mark}")
        lines.append(cells)
    widths = [max(len(header), *(len(cells[i]) for cells in lines)) for i, header in enumerate(headers)]

    def render(cells):
        return "  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i])
                         for i, cell in enumerate(cells)).rstrip()
    out = [render(headers), render(["-" * width for width in widths])]
    out.extend(render(cells) for cells in lines)
    return "\n".join(out)
