"""User interest vectors, cosine scoring, top-K with explanations.

For one user with behaviours b_1..b_n (latest ``max_history``), each behaviour contributes its
item's vector and, when it carries text (a comment, review, query), its text's vector too. With
unit vectors v_j and pooling weights alpha_j (zero-shot: w_j / sum w from ScoringConfig,
``WeightedPooling``; trained: learned attention with log w_j as prior, ``AttentionPooling``),

    u = sum_j alpha_j v_j

and an item x scores s(x) = cos(u, x) (CosineSimilarity). Because u is linear in the v_j,
the score splits exactly into per-behaviour contributions

    c_j(x) = alpha_j (v_j . x/|x|) / |u|,               sum_j c_j(x) = s(x)

and ``share_j = c_j / s(x)``: the part of the score that behaviour drove. The shares of all a
user's behaviours sum to 1; explanations list the largest.
"""

import dataclasses
import hashlib
import os
import shutil

import numpy as np

from .backend import tf
from .checkpoint import CONFIG_NAME as BERT_CONFIG_NAME
from .checkpoint import (CheckpointError, find_checkpoint, read_arrays, read_lines, replace_dir,
                         staging_dir, write_checkpoint_files)
from .config import CONFIG_NAME, ModelConfig
from .layers import AttentionPooling, CosineSimilarity, ItemTower, WeightedPooling
from .models import TextEncoder
from .progress import progress_bar

SECONDS_PER_DAY = 86400.0
HEAD_NAME = "head.npz"
ITEM_IDS_NAME = "item_ids.txt"
ITEM_VECTORS_NAME = "item_vectors.npy"
ITEM_KEYS_NAME = "item_vectors.keys"
ITEM_VECTOR_IDS_NAME = "item_vectors.ids"


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


def whitened_tower(raw_items, config, num_ids=0):
    """An ItemTower whose text part is BERT-whitening fitted on items' encoder vectors [M, H]."""
    mean, kernel = fit_whitening(raw_items, config.whitening, config.whitening_dim)
    tower = ItemTower(kernel.shape[1], num_ids=num_ids, name="item_tower")
    tower([raw_items[:1], np.zeros(1, np.int32)])  # build
    tower.set_affine(mean, kernel)
    return tower


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
    """One user's pooled units, as rows of a unit table (items first, then behaviour texts).

    Returns (recent behaviours, rows [n], weights [n], owners [n]): each of the latest
    ``max_history`` behaviours gives its item's row and, when its text is in ``text_rows``
    (texts that clean to nothing are not), its text's row with ``text_weight`` times the weight;
    ``owners`` maps each unit back to its behaviour. Training and recommending both use this.
    """
    recent = behaviors[-scoring.max_history:]
    weights = behavior_weights(recent, scoring)
    rows, unit_weights, owners = [], [], []
    for j, (b, w) in enumerate(zip(recent, weights)):
        rows.append(item_rows[b.item_id])
        unit_weights.append(w)
        owners.append(j)
        text_row = text_rows.get(b.text) if b.text else None
        if text_row is not None:
            rows.append(text_row)
            unit_weights.append(w * scoring.text_weight)
            owners.append(j)
    return (recent, np.array(rows, np.int32), np.array(unit_weights, np.float32),
            np.array(owners, np.int32))


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
    """Users' (rows, weights) -> rows [B, N] int32 and weights [B, N] (padding: row 0, weight 0)."""
    n = max((len(rows) for rows, _ in units), default=1) or 1
    rows = np.zeros((len(units), n), dtype=np.int32)  # [B, N]
    weights = np.zeros((len(units), n), dtype=np.float32)  # [B, N]
    for b, (r, w) in enumerate(units):
        rows[b, :len(r)] = r
        weights[b, :len(w)] = w
    return rows, weights


class Recommender:
    """Encodes a catalogue once, then scores users' interest vectors against it.

    Parts: the text encoder (BERT + pooling), an ``ItemTower`` mapping encoder vectors to the
    scoring space (zero-shot: BERT-whitening fitted on the catalogue; trained: learned affine map
    + item-id embeddings), a pooling layer (``WeightedPooling``, or a trained
    ``AttentionPooling``) and ``CosineSimilarity``.
    """

    def __init__(self, encoder, config=None, model_dir=None, tower=None, pooling=None,
                 id_vocab=None):
        self.encoder = encoder
        self.config = config or ModelConfig(pooling=encoder.pooling)
        self.model_dir = model_dir
        self.tower = tower  # None: fit BERT-whitening on the catalogue at index_items
        self.pooling = pooling or WeightedPooling(name="interest_pooling")
        self.id_vocab = dict(id_vocab or {})  # item_id -> id-embedding row (trained models)
        self.cosine = CosineSimilarity(name="cosine_score")
        self.items = []
        self.item_index = {}
        self.item_vectors = np.zeros((0, encoder.dim), dtype=np.float32)
        self.raw_item_vectors = np.zeros((0, encoder.dim), dtype=np.float32)
        self.index = None  # an index.ItemIndex when use_index() picked a faiss backend

    @property
    def trained(self):
        return isinstance(self.pooling, AttentionPooling)

    # -- loading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, path, pooling=None, zero_shot=False, cache_dir=None):
        """From a bert_rec model directory (bert_rec.json inside) or a Google checkpoint dir.

        A checkpoint directory gives the zero-shot model: the pretrained encoder with default
        settings (``pooling`` overrides the pooling). ``zero_shot=True`` ignores a model
        directory's trained item tower and attention, keeping its encoder and settings.
        ``cache_dir``: keep text vectors between runs in an on-disk cache there (see
        encode_cache.py; None: no cache).
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
        if cache_dir:
            encoder.enable_cache(cache_dir)
        head_path = os.path.join(path, HEAD_NAME)
        if zero_shot or not os.path.isfile(head_path):
            return cls(encoder, config, model_dir=path)
        tower, attention, id_vocab = load_head(path, config)
        return cls(encoder, config, model_dir=path, tower=tower, pooling=attention,
                   id_vocab=id_vocab)

    # -- items --------------------------------------------------------------------------------
    def encode_items(self, items):
        """Encoder vectors of items' feature texts (title, description, category, tags) [M, H].

        Items whose feature text is unchanged since the model directory's stored item vectors
        were written (same text fingerprint) reuse them; only the rest are encoded.
        """
        texts = [item.full_text() for item in items]
        raw = np.zeros((len(texts), self.encoder.dim), np.float32)  # [M, H]
        stored = self._stored_item_vectors()
        keys = [_fingerprint(t) for t in texts]
        todo = [i for i, key in enumerate(keys) if key not in stored]
        for i, key in enumerate(keys):
            if key in stored:
                raw[i] = stored[key]
        if todo:
            raw[todo] = self.encoder.encode([texts[i] for i in todo],
                                            max_len=self.config.item_max_len,
                                            desc="encoding items")
        self.raw_item_vectors = raw
        return raw

    def stored_catalogue(self):
        """(item ids, encoder vectors [M, H]) of the catalogue saved in the model directory."""
        path = os.path.join(self.model_dir or "", ITEM_VECTOR_IDS_NAME)
        if not os.path.isfile(path):
            raise ValueError(f"{self.model_dir}: no indexed catalogue saved ({ITEM_VECTOR_IDS_NAME}"
                             f"); save the model after index_items(items), e.g. with bert-rec "
                             f"train")
        ids = read_lines(path)
        vectors = read_arrays(os.path.join(self.model_dir, ITEM_VECTORS_NAME))
        if len(ids) != len(vectors):
            raise ValueError(f"{path} lists {len(ids)} items but {ITEM_VECTORS_NAME} has "
                             f"{len(vectors)} rows: the files come from different saves")
        return ids, vectors

    def _stored_item_vectors(self):
        """{text fingerprint: encoder vector [H]} saved in the model directory, if any."""
        if not self.model_dir:
            return {}
        vectors_path = os.path.join(self.model_dir, ITEM_VECTORS_NAME)
        keys_path = os.path.join(self.model_dir, ITEM_KEYS_NAME)
        if not (os.path.isfile(vectors_path) and os.path.isfile(keys_path)):
            return {}
        hint = f"delete {ITEM_VECTORS_NAME} and {ITEM_KEYS_NAME} to re-encode the items"
        vectors = read_arrays(vectors_path, hint=hint)
        keys = [line.strip() for line in read_lines(keys_path, hint=hint)]
        if len(keys) != len(vectors) or vectors.shape[1:] != (self.encoder.dim,):
            raise ValueError(f"{vectors_path} does not match {keys_path} or the encoder: the "
                             f"files come from different saves; delete both to re-encode")
        return dict(zip(keys, vectors))

    def index_items(self, items, raw=None):
        """Encode every item once (or take ``raw`` encoder vectors [M, H]) and project them."""
        self.items = list(items)
        self.item_index = {item.item_id: i for i, item in enumerate(self.items)}
        raw = self.encode_items(self.items) if raw is None else raw  # [M, H]
        self.raw_item_vectors = raw
        if self.tower is None:
            self.tower = whitened_tower(raw, self.config)
        id_rows = [self.id_vocab.get(item.item_id, self.tower.num_ids) for item in self.items]
        self.item_vectors = self.project(raw, id_rows)  # [M, D]
        if self.index is not None:
            self.use_index(self.index_backend, **self.index_options)
        return self

    def project(self, raw, id_rows=None):
        """Encoder vectors [N, H] -> scoring vectors [N, D] (id rows: None = no item id)."""
        if id_rows is None:
            id_rows = np.full(len(raw), self.tower.num_ids, np.int32)
        return self.tower([tf.constant(raw, tf.float32),
                           tf.constant(np.asarray(id_rows, np.int32))]).numpy()

    # -- users --------------------------------------------------------------------------------
    def _encode_behavior_texts(self, histories):
        """Encode each distinct cleaned behaviour text of these users once.

        Returns (raw text -> unit row, text vectors [T, D]); rows start after the M items.
        """
        distinct, text_rows = text_unit_rows(
            (b.text for behaviors in histories for b in behaviors), self.encoder.pipeline,
            offset=len(self.items))
        vectors = self.encoder.encode(distinct, max_len=self.config.text_max_len,
                                      desc="encoding behaviour texts", clean=False)
        return text_rows, self.project(vectors)

    def _unit_table(self, histories):
        """(unit table [M + T, D]: items then these users' distinct texts, text -> row)."""
        text_rows, text_vectors = self._encode_behavior_texts(histories)
        return np.concatenate([self.item_vectors, text_vectors]), text_rows

    def _score_batch(self, table, text_rows, batch, with_scores=True):
        """Score a batch of histories: (units per user, alpha [B, N], interest [B, D], [B, M]).

        Without ``with_scores`` the [B, M] block is not computed (None): an index retrieves.
        """
        units = [user_units(h, self.config.scoring, self.item_index, text_rows) for h in batch]
        rows, weights = pad_units([(u[1], u[2]) for u in units])  # [B, N], [B, N]
        vectors = tf.constant(table[rows])  # [B, N, D]
        weights = tf.constant(weights)
        alpha = self.pooling.attention(vectors, weights).numpy()  # [B, N]
        interest = self.pooling([vectors, weights])  # [B, D]
        scores = None
        if with_scores:
            scores = self.cosine([interest, tf.constant(self.item_vectors)]).numpy()  # [B, M]
        return units, alpha, interest.numpy(), scores

    def _user_batches(self, n_users, batch_users=256):
        """Batch size that keeps the [B, M] score block near 256 MB whatever the catalogue."""
        return max(1, min(batch_users, (64 * 2**20) // max(len(self.items), 1)))

    def score(self, histories):
        """Time-sorted behaviour lists [B] -> cosine scores over the catalogue [B, M]."""
        histories = list(histories)
        table, text_rows = self._unit_table(histories)
        step = self._user_batches(len(histories))
        blocks = [self._score_batch(table, text_rows, histories[i:i + step])[3]
                  for i in range(0, len(histories), step)]
        return np.concatenate(blocks) if blocks else np.zeros((0, len(self.items)), np.float32)

    def use_index(self, backend="exact", **options):
        """Retrieve top-k with an ``index.ItemIndex`` (e.g. ``faiss-hnsw`` for large catalogues)
        instead of scoring every item with the CosineSimilarity layer; ``exact`` switches back.
        """
        from .index import ItemIndex  # noqa: PLC0415
        self.index_backend, self.index_options = backend, options
        self.index = None
        if backend != "exact":
            self.index = ItemIndex(self.item_vectors.shape[1], backend, **options)
            self.index.add([item.item_id for item in self.items], self.item_vectors)
        return self

    def recommend(self, histories, k=10, explain=3):
        """``histories``: {user_id: time-sorted behaviours} -> list of UserRecommendations."""
        if not len(self.items):
            raise ValueError("no items indexed: call index_items(items) first")
        user_ids = list(histories)
        table, text_rows = self._unit_table(histories.values())
        step = self._user_batches(len(user_ids))
        index = self.index
        results = []
        with progress_bar(total=len(user_ids), desc="scoring users", unit="user") as bar:
            for start in range(0, len(user_ids), step):
                batch = user_ids[start:start + step]
                units, alpha, interest, scores = self._score_batch(
                    table, text_rows, [histories[u] for u in batch], with_scores=index is None)
                seen = [self._seen_rows(histories[u]) for u in batch]
                if index is None:
                    tops = [_top_rows(scores[b], seen[b], k) for b in range(len(batch))]
                else:
                    rows, values = index.search(interest, k, exclude=seen)
                    tops = [(r[r >= 0], v[r >= 0]) for r, v in zip(rows, values)]
                for b, user_id in enumerate(batch):
                    recent, unit_rows, _, owners = units[b]
                    explained = (recent, table[unit_rows], alpha[b, :len(unit_rows)], owners)
                    results.append(self._explain(user_id, tops[b], explained, interest[b],
                                                 explain))
                bar.update(len(batch))
        return results

    def _seen_rows(self, behaviors):
        """Catalogue rows to exclude for a user (their items, unless exclude_seen is off)."""
        if not self.config.scoring.exclude_seen:
            return []
        return sorted({self.item_index[b.item_id] for b in behaviors})

    def _explain(self, user_id, top, units, interest, explain):
        """UserRecommendations for the chosen (rows, scores), each explained by its behaviours."""
        recent, vectors, alpha, owners = units
        rows, values = top
        because = [[] for _ in rows]
        if explain and len(rows):
            shares = self._shares(interest, vectors, alpha, owners, len(recent), rows)  # [k, n]
            because = _merge_because(recent, shares, self.encoder.pipeline, explain)
        return UserRecommendations(user_id, [
            Recommendation(self.items[i].item_id, float(score), self.items[i].title, b)
            for i, score, b in zip(rows, values, because)])

    def _shares(self, interest, vectors, alpha, owners, n_behaviors, item_rows):
        """Each behaviour's share of cos(u, x) for items x: [len(item_rows), n_behaviors].

        u = sum_j alpha_j v_j (unit v_j), so cos(u, x) = sum_j alpha_j (v_j . x) / (|u||x|); the
        contributions c_j / s(x) of one item sum to 1.
        """
        x = self.item_vectors[np.asarray(item_rows)]  # [k, D]
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        v = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)  # [n, D]
        u_norm = max(float(np.linalg.norm(interest)), 1e-12)
        contrib = alpha[:, None] * (v @ x.T) / u_norm  # [n units, k]
        per_behavior = np.zeros((n_behaviors, len(x)))
        np.add.at(per_behavior, owners, contrib)
        total = per_behavior.sum(axis=0)  # [k]
        safe = np.where(np.abs(total) > 1e-12, total, 1.0)
        return (per_behavior / safe).T

    # -- saving -------------------------------------------------------------------------------
    def save(self, out_dir, keep=(), keras_models=True):
        """Write a model directory, atomically: bert_rec.json, the encoder checkpoint (Google
        format), vocab, stopwords, user dictionary and the head (item tower, attention, item-id
        vocabulary). A zero-shot model indexed on a catalogue keeps its fitted whitening.
        Entries of an existing ``out_dir`` named in ``keep`` are carried over. With
        ``keras_models``, also whole Keras models (``item_encoder.h5``, ``user_scorer.h5``) that
        ``tf_keras.models.load_model(path, custom_objects=bert_rec.custom_objects)`` reads.
        """
        files = self.encoder.files
        with open(files.vocab_path, encoding="utf-8") as f:
            vocab = [line.rstrip("\r\n") for line in f]
        tmp = staging_dir(out_dir)
        try:
            write_checkpoint_files(self.encoder.transformer, files.config, vocab, tmp)
            text = self.encoder.pipeline.config
            with open(os.path.join(tmp, "stopwords.txt"), "w", encoding="utf-8") as f:
                f.writelines(word + "\n" for word in sorted(self.encoder.pipeline.stopwords))
            if text.user_dict_path:
                shutil.copyfile(text.user_dict_path, os.path.join(tmp, "userdict.txt"))
            if self.tower is not None:
                save_head(tmp, self.tower, self.pooling if self.trained else None, self.id_vocab)
            if len(self.items):
                # Encoder vectors of the indexed catalogue, keyed by text fingerprint.
                with open(os.path.join(tmp, ITEM_VECTORS_NAME), "wb") as f:
                    np.save(f, self.raw_item_vectors, allow_pickle=False)
                with open(os.path.join(tmp, ITEM_KEYS_NAME), "w", encoding="utf-8") as f:
                    f.writelines(_fingerprint(item.full_text()) + "\n" for item in self.items)
                with open(os.path.join(tmp, ITEM_VECTOR_IDS_NAME), "w", encoding="utf-8") as f:
                    f.writelines(item.item_id + "\n" for item in self.items)
            if keras_models and self.tower is not None:
                from .export import save_keras_models  # noqa: PLC0415  (export imports us)
                save_keras_models(self, tmp)
            config = dataclasses.replace(self.config, text=dataclasses.replace(
                text, stopwords_path=None, extra_stopwords_path=None, user_dict_path=None))
            config.save(os.path.join(tmp, CONFIG_NAME))
            return replace_dir(tmp, out_dir, keep=keep)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise


def save_head(out_dir, tower, attention, id_vocab):
    """Write head.npz (tower and attention weights) and item_ids.txt into ``out_dir``."""
    arrays = {"tower_kernel": tower.kernel.numpy(), "tower_bias": tower.bias.numpy(),
              "tower_id_embeddings": tower.id_embeddings.numpy()}
    if attention is not None:
        arrays.update(attention_kernel=attention.kernel.numpy(),
                      attention_bias=attention.bias.numpy(),
                      attention_query=attention.query.numpy())
    with open(os.path.join(out_dir, HEAD_NAME), "wb") as f:
        np.savez(f, **arrays)
    with open(os.path.join(out_dir, ITEM_IDS_NAME), "w", encoding="utf-8") as f:
        f.writelines(item_id + "\n" for item_id in sorted(id_vocab, key=id_vocab.get))


def load_head(path, config):
    """(ItemTower, AttentionPooling or None, id vocab) from a model directory's head.npz."""
    head_path = os.path.join(path, HEAD_NAME)
    arrays = read_arrays(head_path)
    ids_path = os.path.join(path, ITEM_IDS_NAME)
    id_vocab = {line: i for i, line in enumerate(read_lines(ids_path)) if line.strip()}
    kernel = arrays["tower_kernel"]  # [H, D]
    if len(id_vocab) != len(arrays["tower_id_embeddings"]):
        raise ValueError(f"{ids_path} lists {len(id_vocab)} items but {head_path} has "
                         f"{len(arrays['tower_id_embeddings'])} id embeddings: the files come "
                         f"from different saves; save the model again")
    tower = ItemTower(kernel.shape[1], num_ids=len(id_vocab), name="item_tower")
    tower([np.zeros((1, kernel.shape[0]), np.float32), np.zeros(1, np.int32)])
    tower.set_weights([kernel, arrays["tower_bias"], arrays["tower_id_embeddings"]])
    attention = None
    if "attention_kernel" in arrays:
        attention = AttentionPooling(arrays["attention_kernel"].shape[1], name="interest_attention")
        attention([np.zeros((1, 1, kernel.shape[1]), np.float32), np.ones((1, 1), np.float32)])
        attention.set_weights([arrays["attention_kernel"], arrays["attention_bias"],
                               arrays["attention_query"]])
    return tower, attention, id_vocab


def _fingerprint(text):
    """Stable key of an item's feature text (SHA-1 of its UTF-8 bytes)."""
    return hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()


def _model_dir_text_config(path, text_config):
    """Point the text config at the stopwords / user dictionary stored in a model directory."""
    changes = {}
    if os.path.isfile(os.path.join(path, "stopwords.txt")):
        changes["stopwords_path"] = os.path.join(path, "stopwords.txt")
    if os.path.isfile(os.path.join(path, "userdict.txt")):
        changes["user_dict_path"] = os.path.join(path, "userdict.txt")
    return dataclasses.replace(text_config, **changes)


def _top_rows(scores, seen, k):
    """(rows, scores) of the k best unseen items of one score row [M], ties by catalogue order."""
    scores = scores.copy()
    scores[seen] = -np.inf
    k = min(k, int(np.isfinite(scores).sum()))
    top = np.argpartition(-scores, k - 1)[:k] if k else np.zeros(0, dtype=int)
    top = top[np.lexsort((top, -scores[top]))]
    return top, scores[top]


def _merge_because(recent, shares, pipeline, limit):
    """Per recommended item, the ``limit`` behaviours with the largest shares ``[k, n]``.

    Repeats of the same (item, behaviour, text) are added up (ties keep first-seen order); only
    the texts shown are normalised, each once.
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
                shown[text] = pipeline.normalize(text) if text else ""
            because.append(Because(item_id, behavior, shown[text], float(row[j])))
        out.append(because)
    return out
