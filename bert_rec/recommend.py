"""User interest vectors, cosine scoring, top-K with explanations.

For one user with behaviours b_1..b_n (latest ``max_history``), each behaviour contributes its
item's vector and, when it carries text (a comment, review, query), its text's vector too. With
unit vectors v_j and weights w_j (ScoringConfig), the interest vector is

    u = sum_j w_j v_j / sum_j w_j                       (WeightedPooling)

and an item x scores s(x) = cos(u, x) (CosineSimilarity). Because u is linear in the v_j,
the score splits exactly into per-behaviour contributions

    c_j(x) = w_j (v_j . x/|x|) / (sum_j w_j |u|),       sum_j c_j(x) = s(x)

and ``share_j = c_j / s(x)``: the part of the score that behaviour drove. The shares of all a
user's behaviours sum to 1; explanations list the largest.
"""

import dataclasses
import os
import shutil

import numpy as np

from .backend import tf
from .checkpoint import CONFIG_NAME as BERT_CONFIG_NAME
from .checkpoint import CheckpointError, find_checkpoint
from .config import CONFIG_NAME, ModelConfig
from .layers import CosineSimilarity, WeightedPooling
from .models import TextEncoder
from .progress import progress_bar

SECONDS_PER_DAY = 86400.0


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


def fit_whitening(vectors, mode="whiten", dim=None):
    """(mean [H], kernel [H, D]) so that ``(x - mean) @ kernel`` is centred (and whitened).

    Whitening needs a well-conditioned covariance: with fewer than 2·H vectors it falls back to
    centring only.
    """
    vectors = np.asarray(vectors, np.float64)  # [M, H]
    mean = vectors.mean(axis=0) if len(vectors) else np.zeros(vectors.shape[1])
    hidden = vectors.shape[1]
    if mode == "none":
        return np.zeros(hidden, np.float32), np.eye(hidden, dtype=np.float32)
    if mode == "center" or len(vectors) < 2 * hidden:
        return mean.astype(np.float32), np.eye(hidden, dtype=np.float32)
    cov = np.cov((vectors - mean).T)  # [H, H]
    u, s, _ = np.linalg.svd(cov)
    kernel = u / np.sqrt(s + 1e-6 * s.max())  # [H, H]
    return mean.astype(np.float32), kernel[:, :dim].astype(np.float32)


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


class Recommender:
    """Encodes a catalogue once, then scores users' interest vectors against it."""

    def __init__(self, encoder, config=None, model_dir=None):
        self.encoder = encoder
        self.config = config or ModelConfig(pooling=encoder.pooling)
        self.model_dir = model_dir
        self.pool = WeightedPooling(name="interest_pooling")
        self.cosine = CosineSimilarity(name="cosine_score")
        self.items = []
        self.item_index = {}
        self.item_vectors = np.zeros((0, encoder.dim), dtype=np.float32)
        self.whitening = None  # (mean [H], kernel [H, D]) fitted on the catalogue

    # -- loading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, path, pooling=None):
        """From a bert_rec model directory (bert_rec.json inside) or a Google checkpoint dir.

        A checkpoint directory gives the zero-shot model: the pretrained encoder with default
        settings (``pooling`` overrides the pooling).
        """
        config_path = os.path.join(path, CONFIG_NAME)
        if os.path.isfile(config_path):
            config = ModelConfig.load(config_path)
            config.text = _model_dir_text_config(path, config.text)
        elif os.path.isfile(os.path.join(path, BERT_CONFIG_NAME)):
            config = ModelConfig()
        else:
            raise CheckpointError(
                f"{path}: neither a bert_rec model directory ({CONFIG_NAME}) nor a Google-format "
                f"checkpoint directory ({BERT_CONFIG_NAME}); pass one of those (see "
                f"checkpoints/README.md)")
        if pooling:
            config.pooling = pooling
        encoder = TextEncoder(find_checkpoint(path), pooling=config.pooling,
                              text_config=config.text, batch_size=config.batch_size)
        return cls(encoder, config, model_dir=path)

    # -- items --------------------------------------------------------------------------------
    def index_items(self, items):
        """Encode every item's feature text (title, description, category, tags) once."""
        self.items = list(items)
        self.item_index = {item.item_id: i for i, item in enumerate(self.items)}
        raw = self.encoder.encode([item.full_text() for item in self.items],
                                  max_len=self.config.item_max_len, desc="encoding items")  # [M, H]
        self.whitening = fit_whitening(raw, self.config.whitening, self.config.whitening_dim)
        self.item_vectors = self.transform(raw)  # [M, D]
        return self

    def transform(self, vectors):
        """Raw encoder vectors [N, H] -> the scoring space [N, D] (centred / whitened)."""
        mean, kernel = self.whitening
        return ((vectors - mean) @ kernel).astype(np.float32)

    # -- users --------------------------------------------------------------------------------
    def _user_units(self, behaviors, text_vectors):
        """One user's pooled units: rows of vectors [n, H], weights [n], owning behaviour index.

        ``text_vectors`` maps cleaned behaviour text -> vector; texts that clean to nothing
        contribute no unit.
        """
        recent = behaviors[-self.config.scoring.max_history:]
        weights = behavior_weights(recent, self.config.scoring)
        vectors, unit_weights, owners = [], [], []
        for j, (b, w) in enumerate(zip(recent, weights)):
            vectors.append(self.item_vectors[self.item_index[b.item_id]])
            unit_weights.append(w)
            owners.append(j)
            cleaned = self._cleaned_text.get(b.text, "")
            if cleaned:
                vectors.append(text_vectors[cleaned])
                unit_weights.append(w * self.config.scoring.text_weight)
                owners.append(j)
        return recent, np.array(vectors, np.float32), np.array(unit_weights, np.float32), owners

    def _encode_behavior_texts(self, histories):
        """Encode each distinct cleaned behaviour text of these users once."""
        raw = sorted({b.text for behaviors in histories for b in behaviors if b.text})
        cleaned = self.encoder.pipeline.clean_many(raw)
        self._cleaned_text = dict(zip(raw, cleaned))
        distinct = sorted({c for c in cleaned if c})
        vectors = self.encoder.encode(distinct, max_len=self.config.text_max_len,
                                      desc="encoding behaviour texts", clean=False)
        return dict(zip(distinct, self.transform(vectors)))

    def recommend(self, histories, k=10, explain=3, batch_users=256):
        """``histories``: {user_id: time-sorted behaviours} -> list of UserRecommendations."""
        if not len(self.items):
            raise ValueError("no items indexed: call index_items(items) first")
        user_ids = list(histories)
        text_vectors = self._encode_behavior_texts(histories.values())
        item_tensor = tf.constant(self.item_vectors)  # [M, H]
        # Keep the [B, M] score block near 256 MB whatever the catalogue size.
        batch_users = max(1, min(batch_users, (64 * 2**20) // max(len(self.items), 1)))
        results = []
        with progress_bar(total=len(user_ids), desc="scoring users", unit="user") as bar:
            for start in range(0, len(user_ids), batch_users):
                batch = user_ids[start:start + batch_users]
                units = [self._user_units(histories[u], text_vectors) for u in batch]
                vectors, weights = _pad_units(units, self.item_vectors.shape[1])  # [B,N,D],[B,N]
                interest = self.pool([tf.constant(vectors), tf.constant(weights)])  # [B, H]
                scores = self.cosine([interest, item_tensor]).numpy()  # [B, M]
                interest = interest.numpy()
                for row, user_id in enumerate(batch):
                    results.append(self._top_k(user_id, histories[user_id], units[row],
                                               interest[row], scores[row], k, explain))
                bar.update(len(batch))
        return results

    def _top_k(self, user_id, behaviors, units, interest, scores, k, explain):
        """Top-k items of one user's score row [M], each explained by its behaviours."""
        scores = scores.copy()
        if self.config.scoring.exclude_seen:
            seen = [self.item_index[b.item_id] for b in behaviors]
            scores[seen] = -np.inf
        k = min(k, int(np.isfinite(scores).sum()))
        top = np.argpartition(-scores, k - 1)[:k] if k else np.zeros(0, dtype=int)
        top = top[np.lexsort((top, -scores[top]))]  # by score, ties by catalogue order
        recent, vectors, weights, owners = units
        recs = []
        for i in top:
            item = self.items[i]
            shares = self._shares(interest, vectors, weights, owners, len(recent), i)
            because = _merge_because(recent, shares, self.encoder.pipeline)[:explain]
            recs.append(Recommendation(item.item_id, float(scores[i]), item.title, because))
        return UserRecommendations(user_id, recs)

    def _shares(self, interest, vectors, weights, owners, n_behaviors, item_row):
        """Each behaviour's share of cos(u, x): contributions c_j / s(x), summing to 1."""
        x = self.item_vectors[item_row]
        x = x / max(np.linalg.norm(x), 1e-12)  # [H]
        v = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)  # [n, H]
        u_norm = max(float(np.linalg.norm(interest)), 1e-12)
        contrib = weights * (v @ x) / (weights.sum() * u_norm)  # [n units]
        per_behavior = np.zeros(n_behaviors)
        np.add.at(per_behavior, owners, contrib)
        total = per_behavior.sum()
        return per_behavior / total if abs(total) > 1e-12 else per_behavior

    # -- saving -------------------------------------------------------------------------------
    def save(self, out_dir):
        """Write a model directory: bert_rec.json, the encoder checkpoint, vocab and stopwords."""
        from .checkpoint import save_checkpoint  # noqa: PLC0415  (keeps import graph flat)
        files = self.encoder.files
        with open(files.vocab_path, encoding="utf-8") as f:
            vocab = [line.rstrip("\r\n") for line in f]
        save_checkpoint(self.encoder.transformer, files.config, vocab, out_dir)
        text = self.encoder.pipeline.config
        with open(os.path.join(out_dir, "stopwords.txt"), "w", encoding="utf-8") as f:
            f.writelines(word + "\n" for word in sorted(self.encoder.pipeline.stopwords))
        if text.user_dict_path:
            shutil.copyfile(text.user_dict_path, os.path.join(out_dir, "userdict.txt"))
        config = dataclasses.replace(self.config, text=dataclasses.replace(
            text, stopwords_path=None, extra_stopwords_path=None, user_dict_path=None))
        config.save(os.path.join(out_dir, CONFIG_NAME))
        return out_dir


def _model_dir_text_config(path, text_config):
    """Point the text config at the stopwords / user dictionary stored in a model directory."""
    changes = {}
    if os.path.isfile(os.path.join(path, "stopwords.txt")):
        changes["stopwords_path"] = os.path.join(path, "stopwords.txt")
    if os.path.isfile(os.path.join(path, "userdict.txt")):
        changes["user_dict_path"] = os.path.join(path, "userdict.txt")
    return dataclasses.replace(text_config, **changes)


def _pad_units(units, dim):
    """Users' unit lists -> vectors [B, N, H] and weights [B, N] (padding has weight 0)."""
    n = max((len(u[2]) for u in units), default=1) or 1
    vectors = np.zeros((len(units), n, dim), dtype=np.float32)  # [B, N, H]
    weights = np.zeros((len(units), n), dtype=np.float32)  # [B, N]
    for row, (_, v, w, _) in enumerate(units):
        if len(w):
            vectors[row, :len(w)] = v
            weights[row, :len(w)] = w
    return vectors, weights


def _merge_because(recent, shares, pipeline):
    """Behaviours sorted by share; repeats of the same (item, behaviour, text) are added up."""
    merged = {}
    for b, share in zip(recent, shares):
        key = (b.item_id, b.behavior, b.text)
        merged[key] = merged.get(key, 0.0) + float(share)
    ranked = sorted(merged.items(), key=lambda kv: -kv[1])
    return [Because(item_id, behavior, pipeline.normalize(text), share)
            for (item_id, behavior, text), share in ranked]
