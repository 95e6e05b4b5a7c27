"""How positive a text is: the seed's 2-class classifier (``num_classes=2``) on the encoder.

``SentimentClassifier`` = its own copy of the model's BERT (the checkpoint's weights, with the
top ``train_layers`` transformer layers fine-tuned) + the model's pooling + ``Dense(2)``
softmax. The recommendation encoder is not touched, so a trained recommender head stays valid
beside it. What it understands of each behaviour text gives the behaviour its polarity
(units.py): ``2 P(positive) - 1``.

Labels come from labelled files (JSON Lines, ``.gz`` accepted: ``{"text": ..., "label": 1|0}``,
1 = positive) and/or from the behaviour log itself: a comment or review by a user on an item
the same user rated is positive when the rating is at least ``positive_rating`` (default 4 of
5) and negative when at most ``negative_rating`` (default 2); texts on items rated between
are left out (:func:`log_labels`).

In a model directory: ``sentiment.npz`` (the fine-tuned layers' and the head's weights, by
layer name) and ``sentiment.json`` (settings, label thresholds, training data, metrics; with
``ngrams``, the blend), plus ``ngrams.npz`` when stacked on the n-gram model (ngrams.py).
"""

import json
import math
import os
import time

import numpy as np

from .backend import keras, tf
from .checkpoint import CheckpointError, find_checkpoint, load_bert, read_arrays
from .data import InputError, iter_records
from .encoder import plan_batches, precision_policy
from .models import build_text_encoder, train_top_layers
from .ngrams import WEIGHTS_NAME as NGRAMS_NAME
from .ngrams import RESIDUAL_BLEND, NgramLogit, fit_blend
from .optimization import WarmupLinearDecay, bucketed_batches
from .text import TextPipeline
from .tokenization import encode_texts, load_tokenizer, pad_batch
from .utils.progress import progress_bar

WEIGHTS_NAME = "sentiment.npz"
META_NAME = "sentiment.json"
HEAD_LAYER = "sentiment_head"


def roc_auc(labels, scores):
    """Area under the ROC curve (the probability a positive outranks a negative; ties 1/2)."""
    labels, scores = np.asarray(labels).astype(bool), np.asarray(scores, np.float64)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if not n_pos or not n_neg:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks of ties
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for a, b in zip(starts, ends):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def read_labelled(paths):
    """(texts, labels) from JSON Lines files with ``text`` and ``label`` (1 positive, 0
    negative); a bad row is an ``InputError`` naming the file, line and field."""
    texts, labels = [], []
    for path in paths:
        for line, record in iter_records(path, required=("text", "label")):
            text, label = record.get("text"), record.get("label")
            if not isinstance(text, str):
                raise InputError(path, line, "text", f"expected a string, found {text!r}")
            if isinstance(label, str) and label.strip() in ("0", "1"):
                label = int(label)
            if isinstance(label, bool) or label not in (0, 1):
                raise InputError(path, line, "label", f"expected 1 (positive) or 0 (negative), "
                                                      f"found {label!r}")
            texts.append(text)
            labels.append(int(label))
    return texts, labels


def log_labels(behaviors, positive_rating=4.0, negative_rating=2.0):
    """(texts, labels) from the log itself: each text a user wrote about an item they rated,
    positive when the rating is >= ``positive_rating``, negative when <= ``negative_rating``."""
    ratings = {}
    for b in behaviors:
        if b.rating is not None:
            ratings.setdefault((b.user_id, b.item_id), []).append(b.rating)
    texts, labels = [], []
    for b in behaviors:
        rated = ratings.get((b.user_id, b.item_id))
        if not b.text or not rated:
            continue
        rating = float(np.mean(rated))
        if rating >= positive_rating or rating <= negative_rating:
            texts.append(b.text)
            labels.append(int(rating >= positive_rating))
    return texts, labels


class SentimentClassifier:
    """P(positive) of texts with a BERT whose top ``train_layers`` layers are fine-tuned."""

    def __init__(self, files, pooling="mean", text_config=None, train_layers=2, max_len=128,
                 batch_size=64, truncation="head", ngrams=False, precision="float32"):
        self.files = find_checkpoint(files) if isinstance(files, str) else files
        self.pooling, self.max_len, self.batch_size = pooling, max_len, batch_size
        self.truncation, self.use_ngrams = truncation, ngrams
        self.ngrams = None  # the fitted NgramLogit when stacked on n-grams (ngrams.py)
        self.blend = dict(RESIDUAL_BLEND)  # how the n-gram and BERT log-odds combine
        # config.PRECISIONS: bfloat16 trains with bfloat16 matmuls (float32 variables); its
        # calls are traced under the policy too (bert4keras makes attention dropout in call())
        self.precision = precision
        with precision_policy(precision):
            self.transformer = load_bert(self.files, with_pool=(pooling == "pooler"),
                                         return_keras_model=False)
            token_ids = keras.Input((None,), dtype="int32", name="token_ids")
            segment_ids = keras.Input((None,), dtype="int32", name="segment_ids")
            vector = build_text_encoder(self.transformer.model, pooling)([token_ids,
                                                                          segment_ids])
            logits = keras.layers.Dense(2, name=HEAD_LAYER)(vector)              # [B, 2]
            self.model = keras.Model([token_ids, segment_ids], logits, name="sentiment")
        self.pipeline = TextPipeline(text_config) if text_config is not None else TextPipeline()
        self.tokenizer = load_tokenizer(self.files.vocab_path)
        self.train_layers = train_top_layers(self.transformer,
                                             -1 if train_layers is None else train_layers)
        self.meta = {}
        self.directory = None  # the model directory it was loaded from (load), if any
        self.cache = None  # an encode_cache.EncodeCache of P(positive) per raw text (enable_cache)
        self._logits = tf.function(lambda t, s: self._call(t, s, training=False),
                                   input_signature=[tf.TensorSpec([None, None], tf.int32)] * 2)

    def _call(self, token_ids, segment_ids, training):
        """Logits [B, 2] in float32, whatever the compute precision."""
        with precision_policy(self.precision):
            return tf.cast(self.model([token_ids, segment_ids], training=training), tf.float32)

    # -- files ----------------------------------------------------------------------------------
    @staticmethod
    def present(path):
        return os.path.isfile(os.path.join(path, WEIGHTS_NAME))

    def _trained_layers(self):
        """The layers whose weights a model directory stores: the fine-tuned ones + the head."""
        layers = [layer for layer in self.transformer.model.layers
                  if layer.trainable and layer.weights]
        return layers + [self.model.get_layer(HEAD_LAYER)]

    def save_head(self, directory):
        """Write sentiment.npz and sentiment.json into ``directory`` (a staging directory)."""
        arrays = {f"{layer.name}/{i}": w for layer in self._trained_layers()
                  for i, w in enumerate(layer.get_weights())}
        with open(os.path.join(directory, WEIGHTS_NAME), "wb") as f:
            np.savez(f, **arrays)
        meta = {**self.meta, "pooling": self.pooling, "train_layers": self.train_layers,
                "max_len": self.max_len, "truncation": self.truncation,
                "ngrams": self.ngrams is not None}
        if self.ngrams is not None:
            self.ngrams.save(directory)
            meta["blend"] = self.blend
        with open(os.path.join(directory, META_NAME), "w", encoding="utf-8") as f:
            json.dump(meta, f, ensure_ascii=False, indent=2)

    @classmethod
    def load(cls, path, text_config=None):
        """The classifier stored in a model directory (its encoder files are the directory's)."""
        meta_path = os.path.join(path, META_NAME)
        try:
            with open(meta_path, encoding="utf-8") as f:
                meta = json.load(f)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{meta_path}: cannot read ({e}); train the head again with "
                                  f"bert-rec train-sentiment") from None
        clf = cls(path, meta["pooling"], text_config, meta["train_layers"], meta["max_len"],
                  truncation=meta.get("truncation", "head"), ngrams=meta.get("ngrams", False))
        if clf.use_ngrams:
            clf.ngrams = NgramLogit.load(path)
            clf.blend = dict(meta.get("blend", RESIDUAL_BLEND))
        arrays = read_arrays(os.path.join(path, WEIGHTS_NAME))
        for layer in clf._trained_layers():
            count = len(layer.get_weights())
            if f"{layer.name}/0" not in arrays:
                raise CheckpointError(f"{os.path.join(path, WEIGHTS_NAME)}: no weights for "
                                      f"{layer.name}; train the head again")
            layer.set_weights([arrays[f"{layer.name}/{i}"] for i in range(count)])
        clf.meta = meta
        clf.directory = path
        return clf

    def enable_cache(self, root, base_fingerprint=None):
        """Keep P(positive) of raw texts between runs in an ``encode_cache.EncodeCache`` under
        ``root`` (one 1-wide row per text), in a namespace of its own: the encoder's
        fingerprint (``base_fingerprint``: the recommender's, computed here if None) and the
        bytes of this head's files. A warm run then neither cleans nor runs the texts it has
        seen (the head was four fifths of a warm recommend on data/sample). Only for a
        classifier loaded from a model directory: a head in training has no files to key by.
        """
        from .utils.encode_cache import EncodeCache, head_fingerprint, model_fingerprint  # noqa: PLC0415
        if self.directory is None:
            raise ValueError("enable_cache: this sentiment head was not loaded from a model "
                             "directory, so nothing identifies its weights; save and load it")
        base = base_fingerprint or model_fingerprint(self.files, self.pooling)
        paths = [os.path.join(self.directory, n) for n in (WEIGHTS_NAME, META_NAME, NGRAMS_NAME)]
        self.cache = EncodeCache(root, head_fingerprint("sentiment", base, paths), dim=1)
        return self.cache

    # -- inference ------------------------------------------------------------------------------
    def tokens(self, texts, clean=True):
        """Texts -> token-id lists (cleaned like every encoder input unless ``clean=False``)."""
        cleaned = self.pipeline.clean_many(texts) if clean else list(texts)
        return encode_texts(self.tokenizer, cleaned, min(self.max_len, self.files.max_position),
                            self.truncation)

    def predict(self, texts, clean=True):
        """P(positive) [N] of texts; each distinct text is run once, in length buckets. With a
        ``cache`` (enable_cache), raw texts it holds are answered from it before cleaning."""
        texts = list(texts)
        if not texts:
            return np.zeros(0, np.float32)
        if clean and self.cache is not None and all(isinstance(t, str) for t in texts):
            return self._predict_cached(texts)
        return self._predict_cleaned(self.pipeline.clean_many(texts) if clean else texts)

    def _predict_cached(self, texts):
        """``predict`` of raw texts through the cache: each distinct raw text is looked up by
        itself and the pipeline's fingerprint, and only the misses are cleaned, run and stored."""
        slot = {}
        for text in texts:
            slot.setdefault(text, len(slot))
        prefix = f"\0raw\0{self.pipeline.fingerprint}\0"  # as the encoder's raw keys
        keys = [prefix + text for text in slot]
        positive, hit = self.cache.lookup(keys, self.max_len)  # [U, 1], [U]
        todo = np.flatnonzero(~hit)
        if len(todo):
            unique = list(slot)
            fresh = self._predict_cleaned(self.pipeline.clean_many([unique[i] for i in todo]))
            positive[todo, 0] = fresh
            self.cache.store([keys[i] for i in todo], self.max_len, fresh[:, None])
        return positive[[slot[t] for t in texts], 0]

    def _predict_cleaned(self, cleaned):
        """P(positive) [N] of cleaned texts, each distinct one run once, in length buckets."""
        distinct = list(dict.fromkeys(cleaned))
        log_odds = self.combine(self.offsets(distinct), self._bert_log_odds(distinct))
        positive = (0.5 * (1.0 + np.tanh(0.5 * log_odds))).astype(np.float32)  # sigmoid
        slot = {text: i for i, text in enumerate(distinct)}
        return positive[[slot[t] for t in cleaned]]

    def _bert_log_odds(self, cleaned):
        """BERT's own log-odds of positive [N] for cleaned texts, in length buckets."""
        sequences = self.tokens(cleaned, clean=False)
        bert = np.zeros(len(cleaned), np.float32)
        for rows in plan_batches([len(s) for s in sequences], self.batch_size):
            token_ids, segment_ids = pad_batch([sequences[i] for i in rows])
            logits = self._logits(tf.constant(token_ids), tf.constant(segment_ids)).numpy()
            bert[rows] = logits[:, 1] - logits[:, 0]
        return bert

    def offsets(self, cleaned):
        """The n-gram model's log-odds [N] of cleaned texts (zeros without one): what BERT's
        log-odds are blended with (``combine``)."""
        if self.ngrams is None:
            return np.zeros(len(cleaned), np.float32)
        return self.ngrams.logit([text.split() for text in cleaned])

    def combine(self, ngram, bert):
        """P(positive)'s log-odds from the n-gram model's and BERT's (ngrams.py, the blend)."""
        if self.ngrams is None:
            return bert
        blend = self.blend
        return (blend["ngram"] * ngram + blend["bert"] * bert + blend["bias"]).astype(np.float32)

    # -- training -------------------------------------------------------------------------------
    def fit(self, texts, labels, val_texts, val_labels, epochs=3, batch_size=32,
            learning_rate=5e-5, seed=0, log=None):
        """Fine-tune on (texts, labels), keeping the epoch with the best validation AUC; stacked
        on n-grams, then fit the n-gram model and the blend (``_stack_on_ngrams``).

        Returns one dict per epoch (loss, validation accuracy and AUC, seconds).
        """
        keras.utils.set_random_seed(seed)
        cleaned = self.pipeline.clean_many(texts)
        sequences = self.tokens(cleaned, clean=False)
        labels = np.asarray(labels, np.int32)
        steps = math.ceil(len(sequences) / batch_size) * epochs
        optimizer = keras.optimizers.Adam(WarmupLinearDecay(learning_rate, steps,
                                                            max(1, steps // 10)))
        variables = self.model.trainable_variables
        optimizer.build(variables)
        step = tf.function(lambda t, s, y: self._train_step(optimizer, variables, t, s, y),
                           input_signature=[tf.TensorSpec([None, None], tf.int32)] * 2
                           + [tf.TensorSpec([None], tf.int32)])
        rng = np.random.default_rng(seed)
        history, best, best_auc = [], None, -1.0
        with progress_bar(total=steps, desc="training the sentiment head", unit="step") as bar:
            for epoch in range(1, epochs + 1):
                started, losses = time.time(), []
                for rows in bucketed_batches([len(s) for s in sequences], batch_size, rng):
                    token_ids, segment_ids = pad_batch([sequences[i] for i in rows])
                    losses.append(float(step(tf.constant(token_ids), tf.constant(segment_ids),
                                             tf.constant(labels[rows]))))
                    bar.update(1)
                record = {"epoch": epoch, "loss": float(np.mean(losses)),
                          **self.evaluate(val_texts, val_labels),
                          "seconds": round(time.time() - started, 1)}
                history.append(record)
                if log is not None:
                    print(f"sentiment epoch {epoch}/{epochs}: loss {record['loss']:.4f}, "
                          f"validation accuracy {record['accuracy']:.3f}, AUC "
                          f"{record['auc']:.3f} ({record['seconds']:.0f} s)", file=log)
                if not record["auc"] <= best_auc:  # NaN (one class only) keeps the latest
                    best_auc, best = record["auc"], [v.numpy() for v in variables]
        for variable, value in zip(variables, best):
            variable.assign(value)
        if self.use_ngrams:
            self._stack_on_ngrams(cleaned, labels, val_texts, val_labels)
        return history

    def _stack_on_ngrams(self, cleaned, labels, val_texts, val_labels):
        """The n-gram half and the blend (ngrams.py): both models fitted on the training texts
        alone, the blend on the validation texts, then the n-gram model on all of them."""
        val_cleaned = self.pipeline.clean_many(val_texts)
        words, val_words = [t.split() for t in cleaned], [t.split() for t in val_cleaned]
        bert = self._bert_log_odds(val_cleaned)
        ngram = NgramLogit.fit(words, labels).logit(val_words)
        self.blend = fit_blend(ngram, bert, val_labels)
        self.meta.update(ngrams_validation_auc=roc_auc(val_labels, ngram),
                         bert_validation_auc=roc_auc(val_labels, bert))
        self.ngrams = NgramLogit.fit(words + val_words,
                                     np.concatenate([labels, np.asarray(val_labels, np.int32)]))

    def _train_step(self, optimizer, variables, token_ids, segment_ids, labels):
        with tf.GradientTape() as tape:
            logits = self._call(token_ids, segment_ids, training=True)          # [B, 2]
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    def evaluate(self, texts, labels):
        """{"accuracy", "auc", "examples"} on labelled texts (threshold P(positive) = 0.5)."""
        labels = np.asarray(labels, np.int32)
        if not len(labels):
            return {"accuracy": float("nan"), "auc": float("nan"), "examples": 0}
        positive = self.predict(texts)
        return {"accuracy": float(((positive >= 0.5) == labels).mean()),
                "auc": roc_auc(labels, positive), "examples": int(len(labels))}


def train_sentiment(model_path, texts, labels, out_dir, config, sources=None, log=None,
                    overrides=None):
    """Fine-tune a sentiment head on the encoder of ``model_path`` (a checkpoint or model
    directory) and write ``out_dir``: ``model_path``'s model directory plus the head.

    ``texts``/``labels``: the examples (1 positive, 0 negative); a seeded
    ``config.validation_fraction`` of them picks the best epoch. ``overrides``: model
    settings for a checkpoint's new model directory (``ModelConfig.replace`` changes).
    Returns the classifier.
    """
    import dataclasses  # noqa: PLC0415
    from . import model_dir  # noqa: PLC0415
    labels = np.asarray(labels, np.int32)
    if len(labels) < 10 or len(set(labels.tolist())) < 2:
        raise ValueError(f"{len(labels)} labelled texts ({int(labels.sum())} positive): need at "
                         f"least 10 with both labels; pass more --data, or a --behaviors log "
                         f"with rated comments")
    model_config = model_dir.read_config(model_path).replace(**(overrides or {}))
    keras.utils.set_random_seed(config.seed)  # the new head's initial weights: reproducible
    clf = SentimentClassifier(find_checkpoint(model_path), model_config.pooling,
                              model_config.text, config.train_layers, config.max_len,
                              truncation=config.truncation, ngrams=config.ngrams,
                              precision=config.precision)
    order = np.random.default_rng(config.seed).permutation(len(labels))
    n_val = max(1, int(round(config.validation_fraction * len(labels))))
    val, train = order[:n_val], order[n_val:]
    history = clf.fit([texts[i] for i in train], labels[train], [texts[i] for i in val],
                      labels[val], epochs=config.epochs, batch_size=config.batch_size,
                      learning_rate=config.learning_rate, seed=config.seed, log=log)
    best = max(history, key=lambda h: -1.0 if math.isnan(h["auc"]) else h["auc"])
    clf.meta = {**clf.meta, "settings": dataclasses.asdict(config), "data": sources or {},
                "examples": {"train": int(len(train)), "validation": int(len(val)),
                             "positive": int(labels.sum())},
                "history": history, "validation": {k: best[k] for k in ("epoch", "accuracy",
                                                                        "auc")}}
    model_dir.derive(model_path, out_dir, clf.save_head,
                     replaced=(WEIGHTS_NAME, META_NAME, NGRAMS_NAME),
                     config=model_config)
    if config.precision != "float32":  # what is used from here on: the saved float32 head
        return SentimentClassifier.load(out_dir, model_config.text)
    return clf
