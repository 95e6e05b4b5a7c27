"""Fine-tuning (``bert-rec train``): a two-tower model on the user's own behaviour log.

User tower: the user's behaviour units (item vectors, behaviour-text vectors; see
``units.user_units``) -> ``AttentionPooling`` (log behaviour weights as prior). Item tower:
encoder vector -> ``ItemTower`` (affine map initialised to BERT-whitening + item-id embedding).
Both towers come from ``models.build_towers`` and share the BERT encoder, whose top
``train_layers`` layers may be fine-tuned
(0 = frozen encoder: vectors are computed once and training is fast on CPU).

Objective: sampled softmax over the batch's target items plus ``extra_negatives`` uniform random
items, on temperature-scaled cosine scores, with the log-q correction for popular items being
over-represented among in-batch negatives (Yi et al., RecSys 2019). Optionally a click
classifier (``num_classes=2``: target vs. random item) as a second objective.

Split (the evaluation protocol's, one step earlier): per user the last distinct item is the test
target (never seen here), the one before it is the validation target, and every earlier first
interaction with an item, given the behaviours before it, is a training example. Training stops
early on validation NDCG@K and keeps the best epoch.
"""

import contextlib
import dataclasses
import json
import math
import os
import sys
import time

import numpy as np

from .backend import keras, tf
from .config import TrainConfig
from .encoder import plan_batches, precision_policy
from .evaluation import evaluate_scores, leave_last_out
from .models import (build_towers, split_text_encoder, train_top_layers, user_tower,
                     whitened_tower)
from .recommend import Recommender, keras_encoder
from .tokenization import encode_texts
from .units import NEGATIVE, pad_units, polarities, text_unit_rows, user_units
from .utils.atomic import save_figure, write_json
from .utils.progress import progress_bar

# The largest token-state table (TrainConfig.frozen_states) kept in memory; above it the frozen
# layers run at every step as before. 6 GiB is ~75k texts of 64 tokens at base size in float16.
FROZEN_STATES_LIMIT = 6 * 2**30
# Length buckets of the trained layers' input in one training step (StoredStates.vectors), by
# TrainConfig.precision. Measured on base --train-layers 2 (2 cores, AMX-BF16 CPU, median of 5
# steps): float32 0.86 s with 2 or 4 buckets (4 kept: it was faster on the AVX2 machine);
# bfloat16 0.55-0.56 s with 2, 0.59 with 1, 0.65-0.69 with 4, 0.93 with 8: AMX's bfloat16
# matmuls want fewer, larger products more than they lose to the extra padding.
STEP_BUCKETS = {"float32": 4, "bfloat16": 2}

STATE_DIR = "training"
CURVES_NAME = "training_curves.png"


@dataclasses.dataclass
class Example:
    """One training example: a user's behaviours before their first interaction with target."""
    user_id: str
    history: list
    target: str


def split_for_training(histories):
    """{user: behaviours} -> (train examples, validation cases, test cases, users skipped).

    Test cases are ``evaluation.leave_last_out``'s; validation is the same rule applied to each
    test history; training examples come from each validation history only.
    """
    test_cases, skipped = leave_last_out(histories)
    val_cases, _ = leave_last_out({c.user_id: c.history for c in test_cases})
    examples = []
    for case in val_cases:
        seen = set()
        for p, b in enumerate(case.history):
            if b.item_id not in seen:
                if p > 0:
                    examples.append(Example(case.user_id, case.history[:p], b.item_id))
                seen.add(b.item_id)
    return examples, val_cases, test_cases, skipped


@dataclasses.dataclass
class TrainingData:
    """The unit table of a training run and what the steps read from it.

    Rows: the M items, then the T distinct cleaned behaviour texts of the validation histories
    (which hold every training history). ``tokens`` [M + T, L] (0-padded, ``lengths`` [M + T]),
    ``id_rows`` [M + T] (id-embedding row; ``num_ids`` for texts), per example its ``units``,
    ``mask_rows`` (the items that are not its negatives: the user's own, see ``user_items``)
    and ``targets`` [E], and ``log_q`` [M] of the log-q correction.
    ``text_opinion``: raw text -> 2 P(positive) - 1 from the sentiment head (None without).
    """
    item_rows: dict
    item_texts: list
    distinct_texts: list
    text_rows: dict
    text_opinion: dict | None
    tokens: np.ndarray
    lengths: np.ndarray
    id_rows: np.ndarray
    units: list
    mask_rows: list
    targets: np.ndarray
    log_q: np.ndarray


def prepare_data(encoder, model_config, items, examples, val_cases, id_vocab, config,
                 sentiment=None):
    """Clean and tokenise every unit-table row, and each example's units and targets."""
    pipeline, scoring = encoder.pipeline, model_config.scoring
    item_rows = {item.item_id: i for i, item in enumerate(items)}
    distinct, text_rows = text_unit_rows((b.text for c in val_cases for b in c.history),
                                         pipeline, offset=len(items))
    text_opinion = None
    if sentiment is not None and distinct:
        positive = sentiment.predict(distinct, clean=False)  # [T]
        text_opinion = {raw: float(2 * positive[row - len(items)] - 1)
                        for raw, row in text_rows.items()}
    item_texts = pipeline.clean_many([item.full_text() for item in items])
    caps = [min(cap, encoder.max_position) for cap in (model_config.item_max_len,
                                                       model_config.text_max_len)]
    sequences = (encode_texts(encoder.tokenizer, item_texts, caps[0]) +
                 encode_texts(encoder.tokenizer, distinct, caps[1]))
    lengths = np.array([len(s) for s in sequences], np.int32)  # [M + T]
    tokens = np.zeros((len(sequences), lengths.max()), np.int32)  # [M + T, L]
    for row, seq in enumerate(sequences):
        tokens[row, :len(seq)] = seq
    id_rows = np.full(len(sequences), len(id_vocab), np.int32)  # texts: no id embedding
    for item_id, row in id_vocab.items():
        id_rows[item_rows[item_id]] = row
    targets = np.array([item_rows[ex.target] for ex in examples], np.int32)
    counts = np.bincount(targets, minlength=len(items)).astype(np.float64)
    batch = min(config.batch_size, len(examples))
    # Expected count of each item among a batch's candidates: in-batch + uniform negatives.
    expected = batch * counts / counts.sum() + config.extra_negatives / len(items)
    return TrainingData(
        item_rows, item_texts, distinct, text_rows, text_opinion, tokens, lengths, id_rows,
        units=[user_units(ex.history, scoring, item_rows, text_rows, text_opinion)
               for ex in examples],
        mask_rows=user_items(examples, item_rows), targets=targets,
        log_q=np.log(np.maximum(expected, 1e-6)).astype(np.float32))


def user_items(examples, item_rows):
    """Per example, the sorted item rows it must not count as negatives: the items of its
    history and the targets of the same user's other examples, i.e. the user's own items in the
    training span, except its target. Another example's target is a negative only when it is
    not the same user's: with batches of one user's examples (TrainConfig.batching "user") the
    user's later items would otherwise be scored as things they do not want."""
    targets = {}
    for ex in examples:
        targets.setdefault(ex.user_id, set()).add(item_rows[ex.target])
    out = []
    for ex in examples:
        own = {item_rows[b.item_id] for b in ex.history} | targets[ex.user_id]
        own.discard(item_rows[ex.target])
        out.append(np.array(sorted(own), np.int32))
    return out


def batching_for(config, trains_encoder):
    """TrainConfig.batching resolved: "auto" is "user" when encoder layers train (a step then
    encodes each distinct text of its batch once), else "random"."""
    if config.batching != "auto":
        return config.batching
    return "user" if trains_encoder else "random"


def epoch_order(examples, seed, epoch, batching):
    """The order of the examples in epoch ``epoch`` (a permutation of their indices, the same
    for the same seed). "random": shuffled. "user": the users shuffled, each user's examples
    kept together in the order of their histories, so a batch holds one or two users' successive
    examples, whose histories are prefixes of each other: the encoder runs once per text they
    share (on data/sample, a batch of 8 holds 2.8 distinct history texts and targets per
    example instead of 13.1, before the sampled negatives; README 'Speed')."""
    rng = np.random.default_rng([seed, epoch])
    if batching == "random":
        return rng.permutation(len(examples))
    by_user = {}
    for index, ex in enumerate(examples):  # split_for_training: each user's in history order
        by_user.setdefault(ex.user_id, []).append(index)
    groups = [by_user[user] for user in sorted(by_user)]
    return np.array([i for g in rng.permutation(len(groups)) for i in groups[g]], np.int64)


def training_batch(data, indices, rng, num_items, extra_negatives):
    """Step inputs for the examples at ``indices``: unit rows and weights [B, N], candidate
    item rows [C] (the targets + random negatives), target positions [B], the [B, C] mask of
    each example's non-negatives (``TrainingData.mask_rows``: the user's own items), and a
    random non-target candidate per example [B]."""
    rows, weights, features = pad_units([data.units[i] for i in indices])
    targets = data.targets[indices]
    negatives = rng.integers(0, num_items, extra_negatives)
    cand = np.unique(np.concatenate([targets, negatives])).astype(np.int32)  # [C]
    pos = np.searchsorted(cand, targets).astype(np.int32)  # [B]
    mask = np.zeros((len(indices), len(cand)), bool)  # [B, C] the user's own items
    for b, i in enumerate(indices):
        mask[b] = np.isin(cand, data.mask_rows[i])
    click_neg = rng.integers(0, len(cand), len(indices)).astype(np.int32)
    click_neg = np.where(click_neg == pos, (click_neg + 1) % len(cand), click_neg)
    return rows, weights, features, cand, pos, mask, click_neg


def liked_examples(examples, val_cases, scoring, sentiment, pipeline):
    """The examples whose target the user did not dislike: a target the user rated low or
    complained about later is negative feedback, not interest to learn (the user's whole
    validation history states their opinions)."""
    if scoring.polarity != "signed":
        return examples
    text_opinion = None
    if sentiment is not None:
        texts = sorted({b.text for c in val_cases for b in c.history if b.text})
        if texts:
            text_opinion = dict(zip(texts, 2 * sentiment.predict(texts) - 1))
    disliked = set()
    for case in val_cases:
        labels, _ = polarities(case.history, scoring, text_opinion)
        disliked.update((case.user_id, b.item_id) for b, label in zip(case.history, labels)
                        if label == NEGATIVE)
    return [ex for ex in examples if (ex.user_id, ex.target) not in disliked]


class StoredStates:
    """The frozen layers' token states of every unit-table row [R, L, H], computed once, and the
    trained top layers that run on them (models.split_text_encoder): with --train-layers N below
    the depth, a training step runs only those N layers instead of the whole encoder."""

    def __init__(self, upper, states, tokens, lengths, buckets=STEP_BUCKETS["float32"]):
        self.upper, self.states = upper, states
        self.tokens, self.lengths = tokens, lengths
        self.buckets = buckets

    @classmethod
    def build(cls, encoder, data, tokens, lengths, trained, dtype, log):
        """StoredStates for ``trained`` top layers (``tokens``, ``lengths``: the trainer's
        tensors of ``data.tokens`` and ``data.lengths``), stored as ``dtype`` (float16 halves the
        memory: R x L x H x 2 bytes), or None when every layer trains or the table would pass
        FROZEN_STATES_LIMIT. No dropout in the frozen layers (the stored states are their
        inference output); the trained layers keep theirs."""
        transformer = encoder.transformer
        if trained >= transformer.num_hidden_layers:
            return None
        size = data.tokens.size * transformer.hidden_size * np.dtype(dtype).itemsize
        if size > FROZEN_STATES_LIMIT:
            print(f"the frozen layers' token states would take {size / 2**30:.1f} GiB (limit "
                  f"{FROZEN_STATES_LIMIT / 2**30:.0f} GiB): running those layers at every step "
                  f"instead", file=log)
            return None
        with precision_policy(encoder.precision):  # the new layers take the encoder's policy
            lower, upper = split_text_encoder(transformer, encoder.pooling, trained)
        run = tf.function(lambda t: tf.cast(lower([t, tf.zeros_like(t)], training=False),
                                            tf.float32),
                          input_signature=[tf.TensorSpec([None, None], tf.int32)])
        states = np.zeros(data.tokens.shape + (transformer.hidden_size,), dtype)
        with precision_policy(encoder.precision), \
                progress_bar(total=len(data.lengths), desc="frozen layers", unit="text") as bar:
            for rows in plan_batches(data.lengths, encoder.batch_size):
                length = int(data.lengths[rows].max())
                states[rows, :length] = run(tf.constant(data.tokens[rows, :length])).numpy()
                bar.update(len(rows))
        print(f"stored the frozen layers' token states: {states.nbytes / 2**20:.0f} MiB "
              f"({dtype})", file=log)
        return cls(upper, tf.constant(states), tokens, lengths, STEP_BUCKETS[encoder.precision])

    def vectors(self, unique, training):
        """Trained layers over the stored states of distinct rows [U] -> [U, H], in
        ``buckets`` chunks of rows sorted by length, each padded only to its own longest
        text (one batch of mixed lengths padded to the longest wastes part of the work)."""
        order = tf.argsort(tf.gather(self.lengths, unique))
        count = tf.size(unique)
        parts = []
        for k in range(self.buckets):
            chunk = tf.gather(unique, order[k * count // self.buckets:
                                            (k + 1) * count // self.buckets])
            length = tf.reduce_max(tf.concat([tf.gather(self.lengths, chunk), [1]], 0))
            states = tf.cast(tf.gather(self.states, chunk)[:, :length], tf.float32)
            token_ids = tf.gather(self.tokens, chunk)[:, :length]
            parts.append(self.upper([states, token_ids], training=training))
        # row order[i] of the sorted concatenation is row i of unique: scatter back
        return tf.scatter_nd(order[:, None], tf.concat(parts, 0),
                             tf.stack([count, tf.shape(parts[0])[1]]))


def click_loss(head, interest, candidates, target_pos, click_neg, example_weights=None):
    """Loss of the click classifier ``head`` (num_classes=2) on [u, x, u*x]: target = click,
    random item = not."""
    u = tf.math.l2_normalize(interest, -1)
    pos = tf.math.l2_normalize(tf.gather(candidates, target_pos), -1)
    neg = tf.math.l2_normalize(tf.gather(candidates, click_neg), -1)
    feats = tf.concat([tf.concat([u, pos, u * pos], -1), tf.concat([u, neg, u * neg], -1)], 0)
    labels = tf.concat([tf.ones_like(target_pos), tf.zeros_like(click_neg)], 0)
    weights = None if example_weights is None else tf.concat([example_weights] * 2, 0) / 2
    return _mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels, head(feats)), weights)


class Trainer:
    """Builds the towers around a Recommender's encoder and trains them."""

    def __init__(self, recommender, items, histories, config=None, log=sys.stderr, cluster=None):
        self.rec = recommender
        self.cluster = cluster  # distributed.Cluster of a multi-worker run, or None
        self.config = config or TrainConfig()
        self.log = log
        self.items = list(items)
        self.examples, self.val_cases, self.test_cases, self.skipped = \
            split_for_training(histories)
        if not self.examples or not self.val_cases:
            raise ValueError("not enough behaviour to train on: need users with at least 3 "
                             "distinct items (one for training, validation and test each)")
        self.id_vocab = ({item.item_id: i for i, item in enumerate(self.items)}
                         if self.config.id_embeddings else {})
        self.examples = liked_examples(self.examples, self.val_cases, recommender.config.scoring,
                                       recommender.sentiment, recommender.encoder.pipeline)
        self.data = prepare_data(recommender.encoder, recommender.config, self.items,
                                 self.examples, self.val_cases, self.id_vocab, self.config,
                                 recommender.sentiment)
        self._build()

    def encode_rows(self, items_only=False):
        """Encoder vectors of the unit-table rows [M + T, H] (or the items' [M, H]) with the
        current weights."""
        enc, config, data = self.rec.encoder, self.rec.config, self.data
        if self.raw_table is not None:
            raw = self.raw_table.numpy()
            return raw[:len(self.items)] if items_only else raw
        items = enc.encode(data.item_texts, max_len=config.item_max_len, clean=False)
        if items_only:
            return items
        texts = enc.encode(data.distinct_texts, max_len=config.text_max_len, clean=False,
                           desc="encoding behaviour texts")
        return np.concatenate([items, texts])

    # -- model --------------------------------------------------------------------------------
    def _build(self):
        cfg, enc = self.config, self.rec.encoder
        keras.utils.set_random_seed(cfg.seed)  # Python, numpy and TF: unseeded Keras inits
        self.raw_table = None
        raw = self.encode_rows()
        tower = whitened_tower(raw[:len(self.items)], self.rec.config, num_ids=len(self.id_vocab))
        attention = user_tower(cfg.user_tower, tower.output_dim, cfg.attention_units,
                               cfg.sequence_heads)
        # None for a bfloat16 encoder: recommender() builds the saved towers around its
        # float32 twin.
        self.towers = build_towers(tower, attention, keras_encoder(enc),
                                   self.rec.config.scoring.dislike_weight)
        self.click_head = keras.layers.Dense(2, name="click_head")
        self.click_head.build((None, 3 * tower.output_dim))
        self.head_variables = (tower.trainable_variables + attention.trainable_variables
                               + self.towers.scorer.trainable_variables)
        if cfg.objective != "softmax":
            self.head_variables += self.click_head.trainable_variables
        self.encoder_variables = self._unfreeze_top_layers(cfg.train_layers)
        self.raw_table = None if self.encoder_variables else tf.constant(raw)
        data = self.data
        self._tokens, self._lengths = tf.constant(data.tokens), tf.constant(data.lengths)
        self.stored = None  # StoredStates: the frozen layers' output, kept (--frozen-states)
        if self.encoder_variables and cfg.frozen_states != "off":
            self.stored = StoredStates.build(enc, data, self._tokens, self._lengths,
                                             self._trained, cfg.frozen_states, self.log)
        self.optimizer = keras.optimizers.Adam(cfg.learning_rate)
        self.encoder_optimizer = keras.optimizers.Adam(cfg.encoder_learning_rate)
        # Create the Adam slots now, so --resume restores them instead of starting from zero.
        self.optimizer.build(self.head_variables)
        if self.encoder_variables:
            self.encoder_optimizer.build(self.encoder_variables)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        # The encoder goes into the training state only when some of it is trained.
        self.trained_parts = {"tower": tower, "attention": attention,
                              "scorer": self.towers.scorer}
        if self.encoder_variables:
            self.trained_parts["encoder"] = enc.model
        self.state = tf.train.Checkpoint(
            click_head=self.click_head, optimizer=self.optimizer,
            encoder_optimizer=self.encoder_optimizer, epoch=self.epoch, **self.trained_parts)
        self._id_rows = tf.constant(data.id_rows)
        self._log_q = tf.constant(data.log_q if cfg.logq_correction else
                                  np.zeros_like(data.log_q))
        spec = tf.TensorSpec
        self._train_step = tf.function(self._step, input_signature=[
            spec([None, None], tf.int32), spec([None, None], tf.float32),
            spec([None, None, None], tf.int32), spec([None], tf.int32), spec([None], tf.int32),
            spec([None, None], tf.bool), spec([None], tf.int32)])

    def _unfreeze_top_layers(self, n):
        """Mark only the top ``n`` transformer layers of the encoder trainable; their variables."""
        bert = self.rec.encoder.transformer
        if n:
            # Training changes the live weights, but the encode cache is keyed by the checkpoint
            # files' fingerprint: it would serve the pretrained vectors for the trained encoder.
            # (Vectors encoded before this point, with the files' weights, were fine to cache.)
            self.rec.encoder.cache = None
        self._trained = train_top_layers(bert, n)
        return list(bert.model.trainable_variables) if n else []

    def _raw(self, rows, training):
        """Encoder vectors of unit-table rows [R] -> [R, H] (each distinct row encoded once)."""
        if self.raw_table is not None:
            return tf.gather(self.raw_table, rows)
        unique, index = tf.unique(rows)
        # bert4keras builds some layers (dropout) while tracing: they take the encoder's policy
        with precision_policy(self.rec.encoder.precision):
            if self.stored is not None:  # only the trained layers run, on the stored states
                vectors = self.stored.vectors(unique, training)  # [U, H]
            else:
                length = tf.reduce_max(tf.gather(self._lengths, unique))
                token_ids = tf.gather(self._tokens, unique)[:, :length]  # [U, L]
                vectors = self.rec.encoder.model([token_ids, tf.zeros_like(token_ids)],
                                                 training=training)  # [U, H]
        return tf.gather(tf.cast(vectors, tf.float32), index)

    def _vectors(self, rows, training):
        """Unit-table rows (any shape) -> scoring vectors [..., D] through the item tower."""
        flat = tf.reshape(rows, [-1])
        out = self.towers.item_projector([self._raw(flat, training),
                                          tf.gather(self._id_rows, flat)], training=training)
        return tf.reshape(out, tf.concat([tf.shape(rows), [-1]], axis=0))

    def _step(self, unit_rows, unit_weights, unit_features, cand_rows, target_pos, cand_mask,
              click_neg, example_weights=None):
        """One optimisation step; returns (loss, in-batch top-1 accuracy). ``example_weights``
        [B] (a worker's shard, distributed.py): weighted sums instead of means over examples."""
        cfg = self.config
        variables = self.head_variables + self.encoder_variables
        with tf.GradientTape() as tape:
            units = self._vectors(unit_rows, True)  # [B, N, D]
            profile, _ = self.towers.user_encoder([units, unit_weights, unit_features],
                                                  training=True)  # [B, 2, D]
            candidates = self._vectors(cand_rows, True)  # [C, D]
            logits = self.towers.scorer([profile, candidates]) / cfg.temperature  # [B, C]
            interest = profile[:, 0]  # [B, D]
            logits -= tf.gather(self._log_q, cand_rows)[None, :]
            logits = tf.where(cand_mask, -1e9, logits)
            loss = _mean(tf.nn.sparse_softmax_cross_entropy_with_logits(target_pos, logits),
                         example_weights)
            if cfg.objective != "softmax":
                click = click_loss(self.click_head, interest, candidates, target_pos,
                                   click_neg, example_weights)
                loss = click if cfg.objective == "click" else loss + cfg.click_weight * click
        grads = tape.gradient(loss, variables)
        n_head = len(self.head_variables)
        self.optimizer.apply_gradients(zip(grads[:n_head], self.head_variables))
        if self.encoder_variables:
            self.encoder_optimizer.apply_gradients(zip(grads[n_head:], self.encoder_variables))
        accuracy = _mean(tf.cast(tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32),
                                          target_pos), tf.float32), example_weights)
        return loss, accuracy

    def _batch(self, indices, rng):
        """Step inputs for the examples at ``indices``."""
        return training_batch(self.data, indices, rng, len(self.items),
                              self.config.extra_negatives)

    # -- loop ---------------------------------------------------------------------------------
    def recommender(self):
        """A Recommender sharing the trained towers (index it before use). After training in
        bfloat16, its encoder is the float32 twin of the trained one (``as_float32``): the
        model that is saved, tested and exported."""
        encoder, towers = _float32_parts(self.rec.encoder, self.towers)
        return Recommender(encoder, self.rec.config, towers, self.id_vocab,
                           sentiment=self.rec.sentiment)

    def validate(self, cases):
        """Metrics of the current model on ``cases`` (full ranking, as in evaluation); the
        cases' behaviour texts must be rows of the unit table (the validation cases' are)."""
        table = self.towers.project(self.encode_rows(), self.data.id_rows)  # [M + T, D]
        items = table[:len(self.items)]
        scoring, data = self.rec.config.scoring, self.data

        def score(batch):
            units = [user_units(c.history, scoring, data.item_rows, data.text_rows,
                                data.text_opinion) for c in batch]
            rows, weights, features = pad_units(units)
            return self.towers.score_units(table, rows, weights, features, items)[2]
        return evaluate_scores(score, cases, self.items, k=self.config.k)

    def fit(self, out_dir, resume=False):
        """Train with early stopping, checkpointing every epoch under OUT/training/.

        Returns the history: one dict per epoch (loss, accuracy, validation metrics, seconds).
        """
        cfg, chief = self.config, self.cluster is None or self.cluster.is_chief
        state_dir = os.path.join(out_dir, STATE_DIR)
        save_dir = state_dir if chief else self.cluster.save_dir(state_dir)  # a temporary one
        manager = tf.train.CheckpointManager(self.state, os.path.join(save_dir, "last"), 1)
        # The best epoch's weights, also through a manager: each save is a new ckpt-N prefix and
        # the pointer file is replaced atomically, so a kill never leaves a half-written best.
        best = tf.train.Checkpoint(**self.trained_parts)
        best_manager = tf.train.CheckpointManager(best, os.path.join(save_dir, "best"), 1)
        history = _start(self, state_dir, resume, chief)
        best_ndcg = max((h["val_ndcg"] for h in history), default=-1.0)
        bad_epochs = _epochs_since_best(history)
        for epoch in range(int(self.epoch.numpy()), cfg.epochs):
            if bad_epochs >= cfg.patience:
                break
            record = self._epoch(epoch)
            history.append(record)
            if record["val_ndcg"] > best_ndcg:
                best_ndcg, bad_epochs = record["val_ndcg"], 0
                best_manager.save(checkpoint_number=epoch + 1)
            else:
                bad_epochs += 1
            print(f"epoch {epoch + 1}/{cfg.epochs}: loss {record['loss']:.4f}, val NDCG@{cfg.k} "
                  f"{record['val_ndcg']:.4f}, HR@{cfg.k} {record['val_hr']:.4f} "
                  f"({record['seconds']:.0f} s)", file=self.log)
            # History first, then the state that marks the epoch finished: a kill in between
            # leaves one history entry too many, which --resume drops and recomputes.
            if chief:
                write_json(os.path.join(state_dir, "history.json"), history)
            self.epoch.assign(epoch + 1)
            manager.save()
            if chief:
                plot_curves(history, os.path.join(state_dir, CURVES_NAME), cfg.k)
        if best_manager.latest_checkpoint:
            best.read(best_manager.latest_checkpoint).expect_partial()
        if not chief:
            self.cluster.cleanup()
        return history

    def _epoch(self, epoch):
        """One pass over the examples in the order of (seed, epoch), then validation."""
        cfg, started = self.config, time.time()
        n = len(self.examples)
        steps = math.ceil(n / cfg.batch_size)
        order = epoch_order(self.examples, cfg.seed, epoch,
                            batching_for(cfg, bool(self.encoder_variables)))
        rng = np.random.default_rng([cfg.seed, epoch, 1])
        if self.cluster is not None:  # this worker's shards; validation on the chief
            loss, accuracy, metrics = self.cluster.epoch(self, order, rng, steps)
        else:
            losses, accs = [], []
            with progress_bar(total=steps, desc=f"epoch {epoch + 1}", unit="step") as bar:
                for s in range(steps):
                    batch = self._batch(order[s * cfg.batch_size:(s + 1) * cfg.batch_size], rng)
                    loss, acc = self._train_step(*[tf.constant(x) for x in batch])
                    losses.append(float(loss))
                    accs.append(float(acc))
                    bar.update(1)
            loss, accuracy = float(np.mean(losses)), float(np.mean(accs))
            metrics = self.validate(self.val_cases)
        return {"epoch": epoch + 1, "loss": loss, "accuracy": accuracy, "val_hr": metrics["hr"],
                "val_ndcg": metrics["ndcg"], "val_mrr": metrics["mrr"],
                "seconds": round(time.time() - started, 2)}


def _float32_parts(encoder, towers):
    """(encoder, towers) as they are, or after training in bfloat16 the float32 twin of the
    trained encoder and the trained towers around it."""
    twin = encoder.as_float32()
    if twin is encoder:
        return encoder, towers
    return twin, build_towers(towers.item_tower, towers.interest, twin.model,
                              towers.dislike_weight)


def _start(trainer, state_dir, resume, chief=True):
    """A trainer's history so far: the last epoch's state restored for --resume, else [] (and
    a refusal to clobber an unfinished run). Every worker of a cluster reads the chief's
    ``state_dir``; only the chief (``chief``) writes there."""
    history_path = os.path.join(state_dir, "history.json")
    latest = tf.train.latest_checkpoint(os.path.join(state_dir, "last"))
    if resume:
        if not latest:
            raise ValueError(f"{state_dir}: no training state to resume; run without "
                             f"--resume to start")
        trainer.state.restore(latest).expect_partial()
        epochs = int(trainer.epoch.numpy())
        with open(history_path, encoding="utf-8") as f:
            history = json.load(f)[:epochs]  # epochs the state holds
        print(f"resuming after epoch {epochs}", file=trainer.log)
        return history
    if latest:
        raise ValueError(f"{state_dir} holds a training run already: pass --resume to "
                         f"continue it, or choose another --out")
    if chief:
        os.makedirs(state_dir, exist_ok=True)
        write_json(os.path.join(state_dir, "config.json"), dataclasses.asdict(trainer.config))
    return []


def _mean(values, weights=None):
    """Mean of per-example values [B], or their sum weighted by ``weights`` [B]."""
    return tf.reduce_mean(values) if weights is None else tf.reduce_sum(values * weights)


def _epochs_since_best(history):
    """Epochs since the best validation NDCG (for early stopping after a resume)."""
    if not history:
        return 0
    best = int(np.argmax([h["val_ndcg"] for h in history]))
    return len(history) - 1 - best


def plot_curves(history, path, k):
    """PNG with training loss and validation HR/NDCG@K per epoch (written atomically)."""
    import matplotlib  # noqa: PLC0415  (only the commands that plot pay for matplotlib)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(epochs, [h["loss"] for h in history], marker="o")
    left.set(title="training loss", xlabel="epoch", ylabel="sampled-softmax loss")
    right.plot(epochs, [h["val_ndcg"] for h in history], marker="o", label=f"NDCG@{k}")
    right.plot(epochs, [h["val_hr"] for h in history], marker="s", label=f"HR@{k}")
    right.set(title="validation (last-but-one item per user)", xlabel="epoch")
    right.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)


def train(model_path, items, histories, out_dir, config=None, resume=False, log=sys.stderr,
          cache_dir=None, overrides=None, cluster=None):
    """Fine-tune from a checkpoint or model directory and save a model directory at out_dir.

    Returns (history, test-split Recommender). The model directory keeps ``training/`` (state,
    history, curves) beside the model files. ``cache_dir``: the encode cache, used while the
    encoder is the checkpoint's (always with ``train_layers=0``). ``overrides``: settings of the
    model (scoring, text, ...) as for ``Recommender.load``; the model directory saves them.
    ``cluster``: a ``distributed.Cluster`` to train on with the other workers; the model is
    built in its scope, and only its chief writes out_dir (the others return an unindexed
    Recommender).
    """
    config = config or TrainConfig()
    with cluster.scope() if cluster is not None else contextlib.nullcontext():
        base = Recommender.load(model_path, zero_shot=True, cache_dir=cache_dir,
                                overrides=overrides, precision=config.precision)
        trainer = Trainer(base, items, histories, config, log=log, cluster=cluster)
    print(f"training on {len(trainer.examples)} examples from {len(trainer.val_cases)} users "
          f"({trainer.skipped} skipped), validating on their last-but-one items", file=log)
    history = trainer.fit(out_dir, resume=resume)
    if cluster is not None and not cluster.is_chief:
        return history, trainer.recommender()
    # The catalogue's vectors as trained, or (bfloat16 training) encoded again in float32
    raw = trainer.encode_rows(items_only=True) if config.precision == "float32" else None
    rec = trainer.recommender().index_items(items, raw=raw)
    rec.save(out_dir, keep=(STATE_DIR,))
    return history, rec


