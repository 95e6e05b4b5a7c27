"""``Recommender``: load a model, index a catalogue, recommend with explanations.

It only orchestrates the steps, each in the module named after it:

    texts ─ encoder.py ─► encoder vectors ─ models.Towers.item_projector ─► item vectors
    behaviours ─ units.py ─► signed units ─ Towers.user_encoder ─► interest, dislikes
    profile · items ─ Towers.scorer ─► scores ─ retrieval.py ─► top-k ─ explain.py ─► why

Zero-shot (a Google checkpoint, or ``zero_shot=True``), the item tower is BERT-whitening fitted
on the indexed catalogue and the user tower a weighted mean; a trained model directory brings
its learned item tower (+ item-id embeddings) and user tower. Behaviours are signed (units.py):
what a user disliked (a low rating, a complaint the sentiment head recognises) goes into a
dislike vector whose similarity lowers the score (layers.InterestScore).
"""

import dataclasses

import numpy as np

from . import model_dir
from .checkpoint import find_checkpoint
from .encoder import TextEncoder
from .explain import Recommendation, UserRecommendations, behavior_shares, merge_because
from .models import build_towers, whitened_tower
from .retrieval import ItemIndex, best_k
from .sentiment import SentimentClassifier
from .units import pad_units, user_units
from .utils.progress import progress_bar

SCORE_BLOCK_FLOATS = 64 * 2**20  # users are scored in blocks of at most this many [B, M] scores
# Users per block searched with an ItemIndex: faiss's exact kernel ran 2.6 s for 10k users in
# blocks of 256 and 0.9-1.6 s in blocks of 1024 (20k x 128 catalogue, 2 cores).
INDEX_USER_BLOCK = 1024


@dataclasses.dataclass
class Catalogue:
    """The indexed items: encoder vectors ``raw`` [M, H] and item vectors ``vectors`` [M, D]."""
    items: list
    rows: dict  # item id -> row
    raw: np.ndarray
    vectors: np.ndarray


class Recommender:
    """A text encoder and the towers of one model, scoring users against an indexed catalogue."""

    def __init__(self, encoder, config, towers=None, id_vocab=None, model_path=None,
                 sentiment=None):
        self.encoder = encoder
        self.config = config
        # A sentiment.SentimentClassifier: the polarity of behaviour texts (None: ratings only).
        self.sentiment = sentiment
        # None: zero-shot; the towers are (re)fitted on every catalogue index_items is given.
        self.towers = towers
        self._fit_on_catalogue = towers is None
        self.id_vocab = dict(id_vocab or {})  # item_id -> id-embedding row (trained models)
        self.model_path = model_path
        self.catalogue = None
        self.index = None  # an ItemIndex once use_index() picked a backend (None: the layer)

    @property
    def trained(self):
        return self.towers is not None and self.towers.trained

    # -- loading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, path, zero_shot=False, cache_dir=None, overrides=None, precision="float32"):
        """From a bert_rec model directory (bert_rec.json inside) or a Google checkpoint dir.

        A checkpoint directory gives the zero-shot model with default settings;
        ``zero_shot=True`` ignores a model directory's trained head, keeping its encoder and
        settings. ``overrides``: ``ModelConfig.replace`` changes, e.g. ``{"pooling": "cls",
        "scoring": {"exclude_seen": False}}`` (a trained head keeps the pooling it was trained
        with). ``cache_dir``: keep text vectors between runs in an on-disk cache there.
        ``precision``: the text encoder's compute precision (encoder.PRECISIONS; bfloat16 is
        faster on CPUs with BF16 instructions, with slightly different scores).
        """
        config = model_dir.read_config(path)
        use_head = model_dir.has_head(path) and not zero_shot
        overrides = dict(overrides or {})
        pooling = overrides.get("pooling")
        if use_head and pooling and pooling != config.pooling:
            raise ValueError(f"{path} was trained on {config.pooling}-pooled text vectors; "
                             f"--pooling {pooling} would feed its head vectors from another "
                             f"space: leave --pooling out, or retrain with that pooling")
        config = config.replace(**overrides)
        encoder = TextEncoder(find_checkpoint(path), pooling=config.pooling,
                              text_config=config.text, batch_size=config.batch_size,
                              precision=precision)
        if cache_dir:
            encoder.enable_cache(cache_dir)
        model_path = path if model_dir.is_model_dir(path) else None
        sentiment = None
        if model_path and SentimentClassifier.present(path):
            sentiment = SentimentClassifier.load(path, config.text)
            if encoder.cache is not None:  # its probabilities cached beside the vectors
                sentiment.enable_cache(cache_dir, encoder.cache.fingerprint)
        if not use_head:
            return cls(encoder, config, model_path=model_path, sentiment=sentiment)
        tower, interest, dislike_weight, id_vocab = model_dir.load_head(path)
        towers = build_towers(tower, interest, keras_encoder(encoder), dislike_weight)
        return cls(encoder, config, towers, id_vocab, model_path, sentiment)

    def save(self, out_dir, keep=(), keras_models=True):
        """Write a model directory (see model_dir.py), atomically; returns its path."""
        if self.encoder.precision != "float32":
            raise ValueError(f"this recommender runs its encoder in {self.encoder.precision}, "
                             f"for inference only; load it with precision='float32' to save it")
        return model_dir.save(self, out_dir, keep=keep, keras_models=keras_models)

    # -- items --------------------------------------------------------------------------------
    def encode_items(self, items):
        """Encoder vectors of items' feature texts [M, H]; items whose (text, length cap,
        pooling) the model directory stored vectors for are not encoded again."""
        texts = [item.full_text() for item in items]
        raw = np.zeros((len(texts), self.encoder.dim), np.float32)  # [M, H]
        stored = model_dir.stored_item_vectors(self.model_path, self.encoder.dim)
        cap, pooling = self.config.item_max_len, self.config.pooling
        keys = [model_dir.item_vector_key(t, cap, pooling) for t in texts]
        todo = [i for i, key in enumerate(keys) if key not in stored]
        for i, key in enumerate(keys):
            if key in stored:
                raw[i] = stored[key]
        if todo:
            raw[todo] = self.encoder.encode([texts[i] for i in todo], max_len=cap,
                                            desc="encoding items")
        return raw

    def index_items(self, items, raw=None):
        """Encode every item once (or take ``raw`` encoder vectors [M, H]) and project them."""
        items = list(items)
        raw = self.encode_items(items) if raw is None else raw  # [M, H]
        if self._fit_on_catalogue:  # zero-shot: whitening of this catalogue
            self.towers = build_towers(whitened_tower(raw, self.config),
                                       text_encoder=keras_encoder(self.encoder),
                                       dislike_weight=self.config.scoring.dislike_weight)
        id_rows = [self.id_vocab.get(item.item_id, self.towers.num_ids) for item in items]
        self.catalogue = Catalogue(items, {item.item_id: i for i, item in enumerate(items)},
                                   raw, self.towers.project(raw, id_rows))
        if self.index is not None:
            self.use_index(self.index.backend, **self._index_options)
        return self

    def use_index(self, backend="exact", **options):
        """Retrieve top-k with an ``ItemIndex`` (``exact``: faiss's exact kernel when faiss is
        installed; ``faiss-hnsw`` etc. for large catalogues) instead of scoring every item
        with the Keras cosine layer; ``None`` switches back to the layer. Both give the same
        top-k and scores (ties aside): the index scores x̂ · q with the layer's query q."""
        self.index, self._index_options = None, options
        if backend is not None:
            self.index = ItemIndex(self.towers.dim, backend, **options)
            self.index.add([item.item_id for item in self.catalogue.items],
                           self.catalogue.vectors)
        return self

    # -- users --------------------------------------------------------------------------------
    def _unit_table(self, histories):
        """(unit table [M + T, D]: items, then these users' T distinct raw texts that clean to
        something; raw text -> row; raw text -> opinion 2 P(positive) - 1 from the sentiment
        head, or None without one). Rows are per raw text, so a warm encode cache answers
        without cleaning; texts that clean alike get equal vectors, so users pool the same."""
        raw = sorted({b.text for behaviors in histories for b in behaviors if b.text})
        vectors, kept = self.encoder.encode_units(raw, max_len=self.config.text_max_len,
                                                  desc="encoding behaviour texts")
        texts = [raw[i] for i in kept]
        offset = len(self.catalogue.items)
        text_rows = {text: offset + j for j, text in enumerate(texts)}
        table = np.concatenate([self.catalogue.vectors, self.towers.project(vectors)])
        text_opinion = None
        if self.sentiment is not None and texts:
            positive = self.sentiment.predict(texts)  # [T]; cleans them itself
            text_opinion = {text: float(2 * p - 1) for text, p in zip(texts, positive)}
        return table, text_rows, text_opinion

    def _user_blocks(self, histories, with_scores=True):
        """(users' units, unit table, attention [B, N], profiles [B, 2, D], scores [B, M] or
        None) per block of users, blocks small enough that the score block [B, M] (or, without
        scores, the gathered unit vectors [B, N, D]) stays near 256 MB."""
        self._require_items()
        table, text_rows, text_opinion = self._unit_table(histories)
        if with_scores:
            step = min(256, SCORE_BLOCK_FLOATS // max(len(self.catalogue.items), 1))
        else:  # an index searches the block: larger blocks keep faiss's kernel busier
            units_cap = 2 * self.config.scoring.max_history  # an item and a text per behaviour
            step = min(INDEX_USER_BLOCK, SCORE_BLOCK_FLOATS // (units_cap * self.towers.dim))
        step = max(1, step)
        for start in range(0, len(histories), step):
            units = [user_units(h, self.config.scoring, self.catalogue.rows, text_rows,
                                text_opinion) for h in histories[start:start + step]]
            rows, weights, features = pad_units(units)  # [B, N], [B, N], [B, N, 3]
            alpha, profile, scores = self.towers.score_units(
                table, rows, weights, features, self.catalogue.vectors if with_scores else None)
            yield units, table, alpha, profile, scores

    def score(self, histories):
        """Time-sorted behaviour lists [B] -> cosine scores over the catalogue [B, M]."""
        blocks = [block[4] for block in self._user_blocks(list(histories))]
        return (np.concatenate(blocks) if blocks
                else np.zeros((0, len(self.catalogue.items)), np.float32))

    def recommend(self, histories, k=10, explain=3):
        """``histories``: {user_id: time-sorted behaviours} -> list of UserRecommendations."""
        user_ids = list(histories)
        results = []
        with progress_bar(total=len(user_ids), desc="scoring users", unit="user") as bar:
            blocks = self._user_blocks([histories[u] for u in user_ids],
                                       with_scores=self.index is None)
            for units, table, alpha, profile, scores in blocks:
                batch = user_ids[len(results):len(results) + len(units)]
                seen = [self._seen_rows(histories[u]) for u in batch]
                tops = self._top(scores, profile, seen, k)
                for b, (user_id, u) in enumerate(zip(batch, units)):
                    explained = (u, table[u.rows], alpha[b, :len(u.rows)])
                    results.append(self._explain(user_id, tops[b], explained, profile[b],
                                                 explain))
                bar.update(len(units))
        return results

    def _top(self, scores, profile, seen, k):
        """(rows, scores) of each user's k best unseen items: from the scores, or from the
        index searched with each user's query q (score = x̂ · q = |q| cos(q, x))."""
        if self.index is None:
            every = np.arange(scores.shape[1])
            return [best_k(every, row, k, skip) for row, skip in zip(scores, seen)]
        query = self.towers.query(profile)  # [B, D]
        rows, values = self.index.search(query, k, exclude=seen)
        norms = np.linalg.norm(query, axis=1, keepdims=True)
        return [(r[r >= 0], (v * n)[r >= 0]) for r, v, n in zip(rows, values, norms)]

    def _seen_rows(self, behaviors):
        """Catalogue rows to exclude for a user (their items, unless exclude_seen is off)."""
        if not self.config.scoring.exclude_seen:
            return []
        return sorted({self.catalogue.rows[b.item_id] for b in behaviors})

    def _explain(self, user_id, top, explained, profile, explain):
        """UserRecommendations for the chosen (rows, scores), each explained by its behaviours."""
        units, vectors, alpha = explained
        rows, values = top
        because = [[] for _ in rows]
        if explain and len(rows):
            shares = behavior_shares(profile, vectors, alpha, units.owners, len(units.recent),
                                     self.catalogue.vectors[np.asarray(rows)],
                                     self.towers.dislike_weight)  # [k, n]
            because = merge_because(units.recent, shares, self.encoder.pipeline.normalize,
                                    explain, units.polarity)
        items = self.catalogue.items
        return UserRecommendations(user_id, [
            Recommendation(items[i].item_id, float(score), items[i].title, b)
            for i, score, b in zip(rows, values, because)])

    def _require_items(self):
        if self.catalogue is None or not self.catalogue.items:
            raise ValueError("no items indexed: call index_items(items) first")


def keras_encoder(encoder):
    """The text encoder model for the towers' ``item_encoder`` (saved and exported), or None
    for a bfloat16 encoder: it serves inference only and its layers can't join a float32
    Keras graph."""
    return encoder.model if encoder.precision == "float32" else None
