"""Fine-tuning (``bert-rec train``): a two-tower model on the user's own behaviour log.

User tower: the user's behaviour units (item vectors, behaviour-text vectors; see
``recommend.user_units``) -> ``AttentionPooling`` (log behaviour weights as prior). Item tower:
encoder vector -> ``ItemTower`` (affine map initialised to BERT-whitening + item-id embedding).
Both towers share the BERT encoder, whose top ``train_layers`` layers may be fine-tuned
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

import dataclasses
import json
import math
import os
import sys
import time

import numpy as np

from .atomic import save_figure, write_text
from .backend import keras, tf
from .evaluation import evaluate_scores, leave_last_out
from .layers import AttentionPooling, CosineSimilarity
from .progress import progress_bar
from .recommend import Recommender, pad_units, text_unit_rows, user_units, whitened_tower
from .tokenization import encode_texts
from .training_config import TrainConfig

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


class Trainer:
    """Builds the towers around a Recommender's encoder and trains them."""

    def __init__(self, recommender, items, histories, config=None, log=sys.stderr):
        self.rec = recommender
        self.config = config or TrainConfig()
        self.log = log
        self.items = list(items)
        self.examples, self.val_cases, self.test_cases, self.skipped = \
            split_for_training(histories)
        if not self.examples or not self.val_cases:
            raise ValueError("not enough behaviour to train on: need users with at least 3 "
                             "distinct items (one for training, validation and test each)")
        self.item_rows = {item.item_id: i for i, item in enumerate(self.items)}
        self.id_vocab = dict(self.item_rows) if self.config.id_embeddings else {}
        self._prepare_texts()
        self._build()

    # -- data ---------------------------------------------------------------------------------
    def _prepare_texts(self):
        """Token ids of every item text and distinct behaviour text: the unit table's rows."""
        rec, scoring = self.rec, self.rec.config.scoring
        pipeline = rec.encoder.pipeline
        M = len(self.items)
        # Validation histories hold every training history's behaviours.
        self.distinct_texts, self.text_rows = text_unit_rows(
            (b.text for c in self.val_cases for b in c.history), pipeline, offset=M)
        self.item_texts = pipeline.clean_many([item.full_text() for item in self.items])
        tok = rec.encoder.tokenizer
        max_pos = rec.encoder.max_position
        sequences = (encode_texts(tok, self.item_texts, min(rec.config.item_max_len, max_pos)) +
                     encode_texts(tok, self.distinct_texts,
                                  min(rec.config.text_max_len, max_pos)))
        self.lengths = np.array([len(s) for s in sequences], np.int32)  # [M + T]
        self.tokens = np.zeros((len(sequences), self.lengths.max()), np.int32)  # [M + T, L]
        for row, seq in enumerate(sequences):
            self.tokens[row, :len(seq)] = seq
        num_ids = len(self.id_vocab)
        self.id_rows = np.full(len(sequences), num_ids, np.int32)  # texts: no id embedding
        for item_id, row in self.id_vocab.items():
            self.id_rows[self.item_rows[item_id]] = row
        self.units = [user_units(ex.history, scoring, self.item_rows, self.text_rows)
                      for ex in self.examples]
        self.history_rows = [np.array(sorted({self.item_rows[b.item_id] for b in ex.history}))
                             for ex in self.examples]
        self.targets = np.array([self.item_rows[ex.target] for ex in self.examples], np.int32)
        counts = np.bincount(self.targets, minlength=M).astype(np.float64)
        batch = min(self.config.batch_size, len(self.examples))
        # Expected count of each item among a batch's candidates: in-batch + uniform negatives.
        expected = batch * counts / counts.sum() + self.config.extra_negatives / M
        self.log_q = np.log(np.maximum(expected, 1e-6)).astype(np.float32)  # [M]

    def _encode_rows_eval(self):
        """Encoder vectors of every unit-table row [M + T, H] with the current weights."""
        enc, config = self.rec.encoder, self.rec.config
        items = enc.encode(self.item_texts, max_len=config.item_max_len, clean=False)
        texts = enc.encode(self.distinct_texts, max_len=config.text_max_len, clean=False,
                           desc="encoding behaviour texts")
        return np.concatenate([items, texts])

    # -- model --------------------------------------------------------------------------------
    def _build(self):
        cfg, enc = self.config, self.rec.encoder
        keras.utils.set_random_seed(cfg.seed)  # Python, numpy and TF: unseeded Keras inits
        raw = self._encode_rows_eval()
        self.tower = whitened_tower(raw[:len(self.items)], self.rec.config,
                                    num_ids=len(self.id_vocab))
        dim = self.tower.output_dim
        self.attention = AttentionPooling(cfg.attention_units, name="interest_attention")
        self.attention([np.zeros((1, 1, dim), np.float32), np.ones((1, 1), np.float32)])
        self.cosine = CosineSimilarity(temperature=cfg.temperature, name="train_cosine")
        self.click_head = keras.layers.Dense(2, name="click_head")
        self.click_head.build((None, 3 * dim))
        self.head_variables = (self.tower.trainable_variables +
                               self.attention.trainable_variables)
        if cfg.objective != "softmax":
            self.head_variables += self.click_head.trainable_variables
        self.encoder_variables = self._unfreeze_top_layers(cfg.train_layers)
        self.raw_table = None if self.encoder_variables else tf.constant(raw)
        self.optimizer = keras.optimizers.Adam(cfg.learning_rate)
        self.encoder_optimizer = keras.optimizers.Adam(cfg.encoder_learning_rate)
        # Create the Adam slots now, so --resume restores them instead of starting from zero.
        self.optimizer.build(self.head_variables)
        if self.encoder_variables:
            self.encoder_optimizer.build(self.encoder_variables)
        self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False)
        # The encoder goes into the training state only when some of it is trained.
        self.trained_parts = {"tower": self.tower, "attention": self.attention}
        if self.encoder_variables:
            self.trained_parts["encoder"] = enc.model
        self.state = tf.train.Checkpoint(
            click_head=self.click_head, optimizer=self.optimizer,
            encoder_optimizer=self.encoder_optimizer, epoch=self.epoch, **self.trained_parts)
        self._tokens = tf.constant(self.tokens)
        self._lengths = tf.constant(self.lengths)
        self._id_rows = tf.constant(self.id_rows)
        self._log_q = tf.constant(self.log_q if cfg.logq_correction else np.zeros_like(self.log_q))
        spec = tf.TensorSpec
        self._train_step = tf.function(self._step, input_signature=[
            spec([None, None], tf.int32), spec([None, None], tf.float32), spec([None], tf.int32),
            spec([None], tf.int32), spec([None, None], tf.bool), spec([None], tf.int32)])

    def _unfreeze_top_layers(self, n):
        """Mark only the top ``n`` transformer layers of the encoder trainable; their variables."""
        bert = self.rec.encoder.transformer
        if n:
            # Training changes the live weights, but the encode cache is keyed by the checkpoint
            # files' fingerprint: it would serve the pretrained vectors for the trained encoder.
            # (Vectors encoded before this point, with the files' weights, were fine to cache.)
            self.rec.encoder.cache = None
        total = bert.num_hidden_layers
        for layer in bert.model.layers:
            layer.trainable = False
            name = layer.name
            if n and name.startswith("Transformer-"):
                index = int(name.split("-")[1])
                layer.trainable = index >= total - n
        return [v for v in bert.model.trainable_variables] if n else []

    def _raw(self, rows, training):
        """Encoder vectors of unit-table rows [R] -> [R, H] (each distinct row encoded once)."""
        if self.raw_table is not None:
            return tf.gather(self.raw_table, rows)
        unique, index = tf.unique(rows)
        length = tf.reduce_max(tf.gather(self._lengths, unique))
        token_ids = tf.gather(self._tokens, unique)[:, :length]  # [U, L]
        vectors = self.rec.encoder.model([token_ids, tf.zeros_like(token_ids)],
                                         training=training)  # [U, H]
        return tf.gather(vectors, index)

    def _vectors(self, rows, training):
        """Unit-table rows (any shape) -> scoring vectors [..., D] through the item tower."""
        flat = tf.reshape(rows, [-1])
        out = self.tower([self._raw(flat, training), tf.gather(self._id_rows, flat)])
        return tf.reshape(out, tf.concat([tf.shape(rows), [-1]], axis=0))

    def _step(self, unit_rows, unit_weights, cand_rows, target_pos, cand_mask, click_neg):
        """One optimisation step; returns (loss, in-batch top-1 accuracy)."""
        cfg = self.config
        variables = self.head_variables + self.encoder_variables
        with tf.GradientTape() as tape:
            units = self._vectors(unit_rows, True)  # [B, N, D]
            interest = self.attention([units, unit_weights])  # [B, D]
            candidates = self._vectors(cand_rows, True)  # [C, D]
            logits = self.cosine([interest, candidates])  # [B, C]
            logits -= tf.gather(self._log_q, cand_rows)[None, :]
            logits = tf.where(cand_mask, -1e9, logits)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
                target_pos, logits))
            if cfg.objective != "softmax":
                click = self._click_loss(interest, candidates, target_pos, click_neg)
                loss = click if cfg.objective == "click" else loss + cfg.click_weight * click
        grads = tape.gradient(loss, variables)
        n_head = len(self.head_variables)
        self.optimizer.apply_gradients(zip(grads[:n_head], self.head_variables))
        if self.encoder_variables:
            self.encoder_optimizer.apply_gradients(zip(grads[n_head:], self.encoder_variables))
        accuracy = tf.reduce_mean(tf.cast(
            tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), target_pos), tf.float32))
        return loss, accuracy

    def _click_loss(self, interest, candidates, target_pos, click_neg):
        """Click classifier (num_classes=2) on [u, x, u*x]: target = click, random item = not."""
        u = tf.math.l2_normalize(interest, -1)
        pos = tf.math.l2_normalize(tf.gather(candidates, target_pos), -1)
        neg = tf.math.l2_normalize(tf.gather(candidates, click_neg), -1)
        feats = tf.concat([tf.concat([u, pos, u * pos], -1), tf.concat([u, neg, u * neg], -1)], 0)
        labels = tf.concat([tf.ones_like(target_pos), tf.zeros_like(click_neg)], 0)
        return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(
            labels, self.click_head(feats)))

    def _batch(self, indices, rng):
        """Step inputs for the examples at ``indices``."""
        M = len(self.items)
        rows, weights = pad_units([(self.units[i][1], self.units[i][2]) for i in indices])
        targets = self.targets[indices]
        negatives = rng.integers(0, M, self.config.extra_negatives)
        cand = np.unique(np.concatenate([targets, negatives])).astype(np.int32)  # [C]
        pos = np.searchsorted(cand, targets).astype(np.int32)  # [B]
        mask = np.zeros((len(indices), len(cand)), bool)  # [B, C] the user's own history
        for b, i in enumerate(indices):
            hist = self.history_rows[i]
            mask[b] = np.isin(cand, hist)
        click_neg = rng.integers(0, len(cand), len(indices)).astype(np.int32)
        click_neg = np.where(click_neg == pos, (click_neg + 1) % len(cand), click_neg)
        return rows, weights, cand, pos, mask, click_neg

    # -- loop ---------------------------------------------------------------------------------
    def recommender(self):
        """A Recommender sharing the trained towers (for validation and saving)."""
        return Recommender(self.rec.encoder, self.rec.config, tower=self.tower,
                           pooling=self.attention, id_vocab=self.id_vocab)

    def validate(self, cases):
        """Metrics of the current model on ``cases`` (full ranking, as in evaluation)."""
        rec = self.recommender()
        raw = self._encode_rows_eval()[:len(self.items)] if self.encoder_variables else \
            self.raw_table.numpy()[:len(self.items)]
        rec.index_items(self.items, raw=raw)
        return evaluate_scores(lambda cs: rec.score([c.history for c in cs]), cases, self.items,
                               k=self.config.k)

    def fit(self, out_dir, resume=False):
        """Train with early stopping, checkpointing every epoch under OUT/training/.

        Returns the history: one dict per epoch (loss, accuracy, validation metrics, seconds).
        """
        cfg = self.config
        state_dir = os.path.join(out_dir, STATE_DIR)
        manager = tf.train.CheckpointManager(self.state, os.path.join(state_dir, "last"), 1)
        # The best epoch's weights, also through a manager: each save is a new ckpt-N prefix and
        # the pointer file is replaced atomically, so a kill never leaves a half-written best.
        best = tf.train.Checkpoint(**self.trained_parts)
        best_manager = tf.train.CheckpointManager(best, os.path.join(state_dir, "best"), 1)
        history = self._start(state_dir, manager, resume)
        best_ndcg = max((h["val_ndcg"] for h in history), default=-1.0)
        bad_epochs = _epochs_since_best(history)
        n = len(self.examples)
        steps = math.ceil(n / cfg.batch_size)
        for epoch in range(int(self.epoch.numpy()), cfg.epochs):
            if bad_epochs >= cfg.patience:
                break
            started = time.time()
            order = np.random.default_rng([cfg.seed, epoch]).permutation(n)
            rng = np.random.default_rng([cfg.seed, epoch, 1])
            losses, accs = [], []
            with progress_bar(total=steps, desc=f"epoch {epoch + 1}", unit="step") as bar:
                for s in range(steps):
                    batch = self._batch(order[s * cfg.batch_size:(s + 1) * cfg.batch_size], rng)
                    loss, acc = self._train_step(*[tf.constant(x) for x in batch])
                    losses.append(float(loss))
                    accs.append(float(acc))
                    bar.update(1)
            metrics = self.validate(self.val_cases)
            record = {"epoch": epoch + 1, "loss": float(np.mean(losses)),
                      "accuracy": float(np.mean(accs)), "val_hr": metrics["hr"],
                      "val_ndcg": metrics["ndcg"], "val_mrr": metrics["mrr"],
                      "seconds": round(time.time() - started, 2)}
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
            _write_json(os.path.join(state_dir, "history.json"), history)
            self.epoch.assign(epoch + 1)
            manager.save()
            plot_curves(history, os.path.join(state_dir, CURVES_NAME), cfg.k)
        # (a run started before the best weights went through a manager wrote best/ckpt)
        best.read(best_manager.latest_checkpoint or os.path.join(state_dir, "best", "ckpt")
                  ).expect_partial()
        return history

    def _start(self, state_dir, manager, resume):
        """Restore the last epoch's state for --resume; refuse to clobber an unfinished run."""
        history_path = os.path.join(state_dir, "history.json")
        if resume:
            if not manager.latest_checkpoint:
                raise ValueError(f"{state_dir}: no training state to resume; run without "
                                 f"--resume to start")
            self.state.restore(manager.latest_checkpoint).expect_partial()
            with open(history_path, encoding="utf-8") as f:
                history = json.load(f)[:int(self.epoch.numpy())]  # epochs the state holds
            print(f"resuming after epoch {int(self.epoch.numpy())}", file=self.log)
            return history
        if manager.latest_checkpoint:
            raise ValueError(f"{state_dir} holds a training run already: pass --resume to "
                             f"continue it, or choose another --out")
        os.makedirs(state_dir, exist_ok=True)
        _write_json(os.path.join(state_dir, "config.json"), dataclasses.asdict(self.config))
        return []


def _epochs_since_best(history):
    """Epochs since the best validation NDCG (for early stopping after a resume)."""
    if not history:
        return 0
    best = int(np.argmax([h["val_ndcg"] for h in history]))
    return len(history) - 1 - best


def _write_json(path, data):
    """Write JSON via a temporary file and an atomic rename."""
    write_text(path, json.dumps(data, indent=2) + "\n")


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
          cache_dir=None):
    """Fine-tune from a checkpoint or model directory and save a model directory at out_dir.

    Returns (history, test-split Recommender). The model directory keeps ``training/`` (state,
    history, curves) beside the model files. ``cache_dir``: the encode cache, used while the
    encoder is the checkpoint's (always with ``train_layers=0``).
    """
    config = config or TrainConfig()
    base = Recommender.load(model_path, zero_shot=True, cache_dir=cache_dir)
    trainer = Trainer(base, items, histories, config, log=log)
    print(f"training on {len(trainer.examples)} examples from {len(trainer.val_cases)} users "
          f"({trainer.skipped} skipped), validating on their last-but-one items", file=log)
    history = trainer.fit(out_dir, resume=resume)
    rec = trainer.recommender()
    rec.index_items(items)
    rec.save(out_dir, keep=(STATE_DIR,))
    return history, rec


