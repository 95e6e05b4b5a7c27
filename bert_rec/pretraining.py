"""Masked-LM (+ optional next-sentence) pretraining of a Chinese BERT on your own item texts.

``bert-rec pretrain`` either continues a Google-format checkpoint that holds its pretraining
heads (domain-adaptive pretraining) or trains a small BERT from scratch with a vocabulary built
from the corpus, and writes the result as a Google-format checkpoint directory (with
``cls/predictions/*``, and ``cls/seq_relationship/*`` when trained with NSP) that
``load_bert`` / ``bert-rec recommend --model`` read like any other.

The corpus is what bert_rec encodes at inference: each item's feature text
(``Item.full_text()``) and the users' behaviour texts (comments, reviews, queries), plus any
plain-text corpus (``--corpus``, one text per line: how the shipped checkpoint learned general
Chinese), all cleaned by :class:`bert_rec.text.TextPipeline` into jieba words (stopwords
removed, negations and degree words kept) exactly as they are cleaned at inference.

Masked LM uses whole-word masking over those jieba words (:func:`mask_whole_words`): about 15%
of the tokens of a sequence are chosen, a word at a time, and each chosen token becomes
[MASK] (80%), a random token (10%) or stays (10%); the loss is the cross-entropy on the chosen
tokens only. Masks are drawn afresh every epoch (dynamic masking).

Next-sentence prediction (``nsp=True``) pairs an item's text with the text of the next item the
same user interacted with (50%) or of a random item (50%); without behaviours, an item's title is
paired with the rest of its own text or with another item's. As in Google's checkpoints, column
0 of the NSP head is P(is next).

Training is a plain ``tf.GradientTape`` loop (Adam with linear warm-up and decay, gradient
clipping) over length-bucketed, dynamically padded batches; one ``tf.function`` step traced once.
With ``precision="bfloat16"`` the model is built under Keras's mixed_bfloat16 policy: matmuls
and activations in bfloat16, variables, gradients, optimizer and losses in float32, so the
checkpoint written is the same float32 format.
"""

import dataclasses
import math
import os
import sys
import time

import numpy as np

from .backend import Tokenizer, build_transformer_model, keras, reset_initializer_counter, tf
from .checkpoint import (CheckpointError, bert_config, find_checkpoint, has_variable, load_bert,
                         save_checkpoint)
from .config import PretrainConfig
from .encoder import precision_policy
from .optimization import WarmupLinearDecay, bucketed_batches
from .tokenization import SPECIAL_TOKENS, build_char_vocab, load_tokenizer, pad_batch, read_vocab
from .utils.atomic import write_json
from .utils.progress import progress_bar

SUMMARY_NAME = "pretraining.json"
PAD, UNK, CLS, SEP, MASK = SPECIAL_TOKENS
MASK_RATE = 0.15
WARMUP_FRACTION = 0.1
NSP_IGNORE = -1  # nsp label of a single-text example (no NSP loss)


# ======================================================================================
# masking
# ======================================================================================
def mask_whole_words(word_token_ids, rng, vocab_size, special_ids, mask_rate=MASK_RATE, *,
                     mask_id):
    """Whole-word masking of one sequence given as words, each a list of token ids.

    Words are visited in random order and chosen until ``mask_rate`` of the eligible tokens
    are covered; the word that would overshoot is taken with the probability that makes the
    expected coverage exactly ``mask_rate``. Words holding a special id ([CLS], [SEP], [PAD],
    [UNK], [MASK] ...) are never chosen. Each chosen token becomes ``mask_id`` (80%), a random
    non-special token (10%) or stays (10%).

    Returns ``(input_ids, labels)``, int32 arrays of the flattened length: labels hold the
    original id at chosen positions and 0 elsewhere (so id 0 must be [PAD]).
    """
    special = np.unique(np.asarray(list(special_ids), dtype=np.int64))
    special_set = set(special.tolist())
    flat = [token for word in word_token_ids for token in word]
    input_ids = np.asarray(flat, dtype=np.int32)
    labels = np.zeros_like(input_ids)
    spans, start = [], 0
    for word in word_token_ids:
        end = start + len(word)
        if word and not special_set.intersection(word):
            spans.append((start, end))
        start = end
    target = mask_rate * sum(end - start for start, end in spans)
    chosen, covered = [], 0
    for index in rng.permutation(len(spans)):
        start, end = spans[index]
        size = end - start
        if covered + size > target:
            if rng.random() < (target - covered) / size:
                chosen.extend(range(start, end))
            break
        chosen.extend(range(start, end))
        covered += size
    if not chosen:
        return input_ids, labels
    chosen = np.asarray(chosen)
    labels[chosen] = input_ids[chosen]
    roll = rng.random(len(chosen))
    input_ids[chosen[roll < 0.8]] = mask_id
    swap = chosen[(roll >= 0.8) & (roll < 0.9)]
    input_ids[swap] = _random_regular_tokens(rng, len(swap), vocab_size, special)
    return input_ids, labels


def _random_regular_tokens(rng, n, vocab_size, special_sorted):
    """n ids drawn uniformly from range(vocab_size) minus the sorted special ids."""
    ids = rng.integers(0, vocab_size - len(special_sorted), size=n)
    for s in special_sorted:  # shift past each special id in increasing order
        ids = ids + (ids >= s)
    return ids


# ======================================================================================
# corpus and examples
# ======================================================================================
@dataclasses.dataclass
class Example:
    """One training sequence before masking: words (lists of ids) and their segment ids."""
    words: list          # [[CLS]], word pieces ..., [[SEP]] (and B's words, [[SEP]] for a pair)
    segments: list       # one segment id per token
    nsp_label: int = NSP_IGNORE  # 1: B follows A, 0: random B, -1: single text

    @property
    def length(self):
        return len(self.segments)


class _WordEncoder:
    """jieba word -> its token ids under the checkpoint's tokenizer (cached)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache = {}

    def __call__(self, words):
        out = []
        for word in words:
            ids = self.cache.get(word)
            if ids is None:
                ids = self.cache[word] = self.tokenizer.encode(word)[0][1:-1]
            if ids:
                out.append(list(ids))
        return out


def corpus_word_lists(items, behaviors=(), pipeline=None):
    """Cleaned word lists: item feature texts, then behaviour texts; empty ones dropped.

    Returns ``(item_words {item_id: words}, behavior_words [words, ...])``.
    """
    if pipeline is None:
        from .text import TextPipeline  # noqa: PLC0415
        pipeline = TextPipeline()
    item_words = {}
    for item in items:
        words = pipeline.words(item.full_text())
        if words:
            item_words[item.item_id] = words
    behavior_words = [words for words in (pipeline.words(b.text) for b in behaviors if b.text)
                       if words]
    return item_words, behavior_words


def _chunks(words, limit):
    """Split encoded words into runs of at most ``limit`` tokens at word boundaries."""
    runs, run, size = [], [], 0
    for word in words:
        word = word[:limit]
        if size + len(word) > limit and run:
            runs.append(run)
            run, size = [], 0
        run.append(word)
        size += len(word)
    if run:
        runs.append(run)
    return runs


def single_examples(encoded_texts, max_len, cls_id, sep_id):
    """``[CLS] words [SEP]`` examples; a text longer than ``max_len`` gives several."""
    examples = []
    for words in encoded_texts:
        for run in _chunks(words, max_len - 2):
            examples.append(Example([[cls_id]] + run + [[sep_id]],
                                    [0] * (sum(map(len, run)) + 2)))
    return examples


def _truncate_pair(a, b, limit):
    """Drop tokens from the end of the longer side until both fit in ``limit`` tokens."""
    a, b = [list(w) for w in a], [list(w) for w in b]
    sizes = [sum(map(len, a)), sum(map(len, b))]
    while sizes[0] + sizes[1] > limit:
        side = 0 if sizes[0] > sizes[1] else 1
        words = (a, b)[side]
        words[-1].pop()
        if not words[-1]:
            words.pop()
        sizes[side] -= 1
    return a, b


def pair_example(a, b, is_next, max_len, cls_id, sep_id):
    """``[CLS] A [SEP] B [SEP]`` with segment ids 0/1, truncated to ``max_len`` tokens."""
    a, b = _truncate_pair(a, b, max_len - 3)
    size_a, size_b = sum(map(len, a)), sum(map(len, b))
    return Example([[cls_id]] + a + [[sep_id]] + b + [[sep_id]],
                   [0] * (size_a + 2) + [1] * (size_b + 1), int(is_next))


def nsp_pairs(item_ids, behaviors, rng):
    """(A item, B item, is_next) from behaviour sequences: B is the user's next item 50% of
    the time, otherwise a random other item. ``item_ids`` are the items that have text."""
    from .data import group_by_user  # noqa: PLC0415
    known = set(item_ids)
    pool = sorted(known)
    pairs = []
    if len(pool) < 3:
        return pairs
    histories = group_by_user(behaviors)
    for user in sorted(histories):
        sequence = []
        for event in histories[user]:
            if event.item_id in known and (not sequence or sequence[-1] != event.item_id):
                sequence.append(event.item_id)
        for a, b in zip(sequence, sequence[1:]):
            if rng.random() < 0.5:
                pairs.append((a, b, 1))
            else:
                other = b
                while other in (a, b):
                    other = pool[rng.integers(len(pool))]
                pairs.append((a, other, 0))
    return pairs


def _title_rest_pairs(items, pipeline, encode, rng):
    """(title words, rest-of-text words, is_next) per item; the rest is another item's 50%."""
    halves = []
    for item in items:
        title = encode(pipeline.words(item.title))
        rest = encode(pipeline.words(" ".join(
            part for part in (item.text, item.category, *item.tags) if part)))
        if title and rest:
            halves.append((title, rest))
    pairs = []
    if len(halves) < 2:
        return pairs
    for index, (title, rest) in enumerate(halves):
        if rng.random() < 0.5:
            pairs.append((title, rest, 1))
        else:
            other = index
            while other == index:
                other = int(rng.integers(len(halves)))
            pairs.append((title, halves[other][1], 0))
    return pairs


# ======================================================================================
# batches
# ======================================================================================
def make_batch(examples, rng, vocab_size, special_ids, mask_id):
    """Mask and pad examples -> (token_ids, segment_ids, labels [B, L], nsp_labels [B]) int32."""
    inputs, labels = [], []
    for example in examples:
        ids, lab = mask_whole_words(example.words, rng, vocab_size, special_ids, mask_id=mask_id)
        inputs.append(ids)
        labels.append(lab)
    token_ids, _ = pad_batch(inputs)
    segment_ids, _ = pad_batch([e.segments for e in examples])
    label_ids, _ = pad_batch(labels)
    nsp = np.asarray([e.nsp_label for e in examples], dtype=np.int32)
    return token_ids, segment_ids, label_ids, nsp


# ======================================================================================
# model and training
# ======================================================================================
def training_model(transformer, nsp):
    """A keras Model over the transformer's inputs with outputs [MLM probs] (+ [NSP probs]):
    the pretraining heads as bert4keras builds them (what a reloaded checkpoint computes)."""
    model = transformer.model
    outputs = [model.get_layer(transformer.prefixed("MLM-Activation")).output]
    if nsp:
        outputs.append(model.get_layer(transformer.prefixed("NSP-Proba")).output)
    return keras.Model(model.inputs, outputs)


class MaskedLMHead:
    """bert4keras's MLM head layers (shared weights) applied to chosen positions only.

    Like Google's BERT, training gathers the ~15% masked positions before the head, so the
    vocabulary projection and softmax run on [N, H] instead of [B, L, H] (on a small model
    that projection is about as costly as the whole encoder); returns logits [N, V].
    """

    def __init__(self, transformer):
        def layer(name):
            return transformer.model.get_layer(transformer.prefixed(name))
        self.dense, self.norm = layer("MLM-Dense"), layer("MLM-Norm")
        self.embedding, self.bias = layer("Embedding-Token"), layer("MLM-Bias")
        # the encoder's last hidden states: what bert4keras feeds into MLM-Dense
        self.sequence_output = self.dense.input

    @property
    def trainable_weights(self):
        return [w for layer in (self.dense, self.norm, self.bias) for w in layer.trainable_weights]

    def __call__(self, hidden):                                          # [N, H]
        x = self.norm(self.dense(hidden))
        return self.bias(self.embedding(x, mode="dense"))                # [N, V]


def batch_stats(head, outputs, labels, nsp_labels, nsp):
    """Losses and counts of one batch: (loss, mlm_sum, masked, correct, nsp_sum, nsp_n, nsp_ok)."""
    sequence = outputs[0]                                                # [B, L, H]
    positions = tf.where(labels > 0)                                     # [N, 2]
    targets = tf.gather_nd(labels, positions)                            # [N]
    logits = tf.cast(head(tf.gather_nd(sequence, positions)), tf.float32)  # [N, V]
    token_loss = tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits)
    masked = tf.cast(tf.size(targets), tf.float32)
    mlm_sum = tf.reduce_sum(token_loss)
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    correct = tf.reduce_sum(tf.cast(tf.equal(predicted, targets), tf.float32))
    loss = mlm_sum / tf.maximum(masked, 1.0)
    zero = tf.constant(0.0)
    nsp_sum, nsp_n, nsp_ok = zero, zero, zero
    if nsp:
        nsp_probs = tf.cast(outputs[1], tf.float32)                      # [B, 2]
        nsp_weights = tf.cast(nsp_labels >= 0, tf.float32)               # [B]
        # column 0 = "is next" (Google's convention); single texts (-1) are weighted out
        target = tf.cast(tf.not_equal(nsp_labels, 1), tf.int32)
        nsp_picked = tf.gather(nsp_probs, target, batch_dims=1)          # [B]
        nsp_loss = -tf.math.log(tf.clip_by_value(nsp_picked, 1e-7, 1.0))
        nsp_n = tf.reduce_sum(nsp_weights)
        nsp_sum = tf.reduce_sum(nsp_loss * nsp_weights)
        nsp_pred = tf.argmax(nsp_probs, axis=-1, output_type=tf.int32)
        nsp_ok = tf.reduce_sum(tf.cast(tf.equal(nsp_pred, target), tf.float32) * nsp_weights)
        loss = loss + nsp_sum / tf.maximum(nsp_n, 1.0)
    return loss, mlm_sum, masked, correct, nsp_sum, nsp_n, nsp_ok


_SIGNATURE = [tf.TensorSpec([None, None], tf.int32, name="token_ids"),
              tf.TensorSpec([None, None], tf.int32, name="segment_ids"),
              tf.TensorSpec([None, None], tf.int32, name="labels"),
              tf.TensorSpec([None], tf.int32, name="nsp_labels")]


class MLMTrainer:
    """The optimizer, training step and evaluation step of one transformer (traced once each)."""

    def __init__(self, transformer, nsp, learning_rate, total_steps, warmup, precision="float32"):
        self.nsp = nsp
        # bert4keras creates its attention-dropout layer inside call(): trace under the policy
        self.precision = precision
        self.head = MaskedLMHead(transformer)
        outputs = [self.head.sequence_output]
        if nsp:
            outputs.append(transformer.model.get_layer(transformer.prefixed("NSP-Proba")).output)
        self.model = keras.Model(transformer.model.inputs, outputs)  # encoder (+ NSP head)
        variables = self.model.trainable_variables + self.head.trainable_weights
        seen = set()
        self.variables = [v for v in variables if not (id(v) in seen or seen.add(id(v)))]
        self.optimizer = keras.optimizers.Adam(
            learning_rate=WarmupLinearDecay(learning_rate, total_steps, warmup),
            epsilon=1e-6, global_clipnorm=1.0)
        self.optimizer.build(self.variables)
        self.train_step = tf.function(self._train_step, input_signature=_SIGNATURE)
        self.eval_step = tf.function(self._eval_step, input_signature=_SIGNATURE)

    def _eval_step(self, token_ids, segment_ids, labels, nsp_labels):
        with precision_policy(self.precision):
            outputs = self.model([token_ids, segment_ids], training=False)
        if not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        return batch_stats(self.head, outputs, labels, nsp_labels, self.nsp)

    def _train_step(self, token_ids, segment_ids, labels, nsp_labels):
        with tf.GradientTape() as tape, precision_policy(self.precision):
            outputs = self.model([token_ids, segment_ids], training=True)
            if not isinstance(outputs, (list, tuple)):
                outputs = [outputs]
            stats = batch_stats(self.head, outputs, labels, nsp_labels, self.nsp)
        grads = tape.gradient(stats[0], self.variables)
        self.optimizer.apply_gradients(zip(grads, self.variables))
        return stats


class _Meter:
    """Sums of batch statistics -> epoch means."""

    def __init__(self):
        self.sums = np.zeros(6)

    def add(self, stats):
        self.sums += np.asarray([float(s) for s in stats[1:]])

    def result(self):
        mlm_sum, masked, correct, nsp_sum, nsp_n, nsp_ok = self.sums
        out = {"mlm_loss": mlm_sum / max(masked, 1), "mlm_accuracy": correct / max(masked, 1),
               "masked_tokens": int(masked)}
        out["loss"] = out["mlm_loss"]
        if nsp_n:
            out["nsp_loss"] = nsp_sum / nsp_n
            out["nsp_accuracy"] = nsp_ok / nsp_n
            out["loss"] += out["nsp_loss"]
        return out


# ======================================================================================
# the whole job
# ======================================================================================
@dataclasses.dataclass
class PretrainingResult:
    """What :func:`run_pretraining` produced: the summary and the trained model in memory.

    After ``precision="bfloat16"`` the in-memory model computes in bfloat16: call it inside
    ``encoder.precision_policy("bfloat16")`` (bert4keras makes its attention dropout layer at
    call time), or reload the float32 checkpoint written to ``out_dir``."""
    summary: dict
    transformer: object   # bert4keras Transformer (its .model has all heads)
    model: object         # keras Model: [MLM probs] (+ [NSP probs] with nsp)
    config: dict          # bert_config.json
    vocab_tokens: list
    trainer: object = None  # the MLMTrainer (optimizer, traced steps)


@dataclasses.dataclass
class _Vocab:
    """The vocabulary of a run and the ids masking needs."""
    tokens: list
    tokenizer: object
    special_ids: list
    cls_id: int
    sep_id: int
    mask_id: int

    @property
    def size(self):
        return len(self.tokens)


def pretrain(items, behaviors=(), out_dir=None, config=None, corpus=(), **kwargs):
    """Pretrain (MLM, + NSP with ``config.nsp``) and write a checkpoint to ``out_dir``.

    ``config`` is a :class:`~bert_rec.config.PretrainConfig` (keyword arguments build one);
    ``corpus``: extra plain texts (e.g. :func:`read_corpus` lines) trained on as single texts.
    Returns the summary dict also written to ``out_dir/pretraining.json``.
    """
    return run_pretraining(items, behaviors, out_dir, config, corpus=corpus, **kwargs).summary


def run_pretraining(items, behaviors=(), out_dir=None, config=None, *, corpus=(), log=None,
                    command=None, pipeline=None, **config_kwargs):
    """:func:`pretrain`, returning a :class:`PretrainingResult` (summary + in-memory model)."""
    config = config or PretrainConfig(**config_kwargs)
    log = log if log is not None else sys.stderr
    if not out_dir:
        raise ValueError("pretrain needs an output directory (out_dir)")
    started = time.time()
    items, behaviors = list(items), list(behaviors)
    if pipeline is None:
        from .text import TextPipeline  # noqa: PLC0415
        pipeline = TextPipeline()
    item_words, single_words = corpus_word_lists(items, behaviors, pipeline)
    behavior_texts = len(single_words)
    single_words += [words for words in map(pipeline.words, corpus) if words]
    single_words, holdout_words = _split_holdout(single_words, config)
    if not item_words and not single_words:
        raise ValueError("no text to pretrain on: every item, behaviour and corpus text is "
                         "empty after cleaning")
    with precision_policy(config.precision):  # layers take the policy when they are built
        transformer, bert_cfg, vocab = _build_model(config, item_words, single_words)
    max_len = min(config.max_len, int(bert_cfg["max_position_embeddings"]))
    if max_len < config.max_len:
        print(f"max_len {config.max_len} > the checkpoint's max_position_embeddings "
              f"{max_len}: using {max_len}", file=log)
    rng = np.random.default_rng(config.seed)
    encode = _WordEncoder(vocab.tokenizer)
    examples, corpus_stats = _make_examples(items, behaviors, item_words, single_words, encode,
                                            vocab, config, max_len, pipeline, rng)
    holdout = single_examples([ids for ids in map(encode, holdout_words) if ids], max_len,
                              vocab.cls_id, vocab.sep_id)
    corpus_stats["behavior_texts"] = behavior_texts
    corpus_stats["corpus_texts"] = len(corpus)
    corpus_stats["holdout_texts"] = len(holdout_words)

    model = training_model(transformer, config.nsp)
    steps_per_epoch = math.ceil(len(examples) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup = max(1, int(WARMUP_FRACTION * total_steps))
    trainer = MLMTrainer(transformer, config.nsp, config.peak_learning_rate, total_steps, warmup,
                         config.precision)
    source = "from " + config.init_checkpoint if config.init_checkpoint else "from scratch"
    print(f"pretraining {source}: {len(examples)} sequences ({corpus_stats['tokens']} tokens), "
          f"vocab {vocab.size}, {bert_cfg['num_hidden_layers']} layers x hidden "
          f"{bert_cfg['hidden_size']}, max_len {max_len}, {config.epochs} epochs x "
          f"{steps_per_epoch} steps, lr {config.peak_learning_rate:g}"
          f"{', with NSP' if config.nsp else ''}"
          f"{', in bfloat16' if config.precision == 'bfloat16' else ''}", file=log)
    history = _train(trainer, examples, holdout, vocab, config, rng, total_steps, log)

    out_dir = save_checkpoint(transformer, bert_cfg, vocab.tokens, out_dir)
    summary = {
        "out_dir": out_dir, "settings": dataclasses.asdict(config), "vocab_size": vocab.size,
        "config": bert_cfg, "corpus": corpus_stats, "max_len": max_len, "steps": total_steps,
        "warmup_steps": warmup, "learning_rate": config.peak_learning_rate,
        "mask_rate": MASK_RATE, "seed": config.seed, "history": history,
        "final": {k: v for k, v in history[-1].items() if k not in ("epoch", "seconds")},
        "seconds": round(time.time() - started, 1), "command": command}
    _write_summary(summary, log)
    return PretrainingResult(summary, transformer, model, bert_cfg, vocab.tokens, trainer)


def _write_summary(summary, log):
    """pretraining.json in the checkpoint directory, and the closing log line."""
    # out_dir is where the file lies: leave it out, so a copied checkpoint holds no stale path.
    write_json(os.path.join(summary["out_dir"], SUMMARY_NAME),
               {k: v for k, v in summary.items() if k != "out_dir"})
    final = summary["final"]
    held = (f", held-out masked-token accuracy {final['heldout_mlm_accuracy']:.3f}"
            if "heldout_mlm_accuracy" in final else "")
    print(f"wrote {summary['out_dir']} (final loss {final['loss']:.4f}, masked-token accuracy "
          f"{final['mlm_accuracy']:.3f}{held}, {summary['seconds']:.0f} s)", file=log)


def read_corpus(paths):
    """Lines of plain-text corpus files (``.txt`` or ``.txt.gz``, UTF-8), blank lines skipped."""
    import gzip  # noqa: PLC0415
    lines = []
    for path in paths:
        opener = gzip.open if str(path).endswith(".gz") else open
        number = 0
        try:
            with opener(path, "rt", encoding="utf-8") as f:
                for number, line in enumerate(f, 1):
                    line = line.strip()
                    if line:
                        lines.append(line)
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} line {number + 1}: not UTF-8 ({e.reason}); save the "
                             f"corpus as UTF-8 text, one text per line") from None
        except (OSError, EOFError) as e:
            raise ValueError(f"{path}: cannot read the corpus ({e}); pass a UTF-8 .txt or "
                             f".txt.gz file, one text per line") from None
    return lines


def _split_holdout(single_words, config):
    """(training texts, held-out texts): ``config.holdout_texts`` single texts drawn at random."""
    n = config.holdout_texts
    if not n:
        return single_words, []
    if n >= len(single_words):
        raise ValueError(f"holdout_texts {n}: only {len(single_words)} corpus/behaviour texts to "
                         f"hold out from; ask for fewer")
    held = set(np.random.default_rng([config.seed, 7]).choice(len(single_words), n,
                                                               replace=False).tolist())
    return ([w for i, w in enumerate(single_words) if i not in held],
            [w for i, w in enumerate(single_words) if i in held])


def _build_model(config, item_words, single_words):
    """(transformer with MLM head, bert_config dict, _Vocab): continued or from scratch."""
    tf.random.set_seed(config.seed)
    reset_initializer_counter()
    if config.init_checkpoint:
        files = find_checkpoint(config.init_checkpoint)
        tokens = list(read_vocab(files.vocab_path))
        prefix = files.ckpt_prefix
        has_nsp = has_variable(prefix, "cls/seq_relationship/output_bias")
        if config.nsp and not has_nsp:
            raise CheckpointError(f"{prefix}: has no next-sentence head (cls/seq_relationship/*), "
                                  f"so it can't be pretrained with NSP; rerun without --nsp")
        # Keep every head the checkpoint has, trained or not, so the output loses nothing.
        keep_pool = has_nsp or has_variable(prefix, "bert/pooler/dense/kernel")
        transformer = load_bert(files, with_pool=keep_pool, with_mlm=True, with_nsp=has_nsp,
                                return_keras_model=False)
        bert_cfg = dict(files.config)
        tokenizer = load_tokenizer(files.vocab_path)
    else:
        texts = [" ".join(w) for w in item_words.values()] + [" ".join(w) for w in single_words]
        tokens = build_char_vocab(texts, min_count=config.min_count, max_size=config.max_vocab,
                                  word_pieces=True)
        bert_cfg = bert_config(len(tokens), hidden_size=config.hidden_size,
                               num_hidden_layers=config.num_layers,
                               num_attention_heads=config.num_heads,
                               max_position_embeddings=config.max_position or config.max_len)
        # The pooler is kept (untrained without NSP) so pooling='pooler' can load the output.
        transformer = build_transformer_model(with_pool=True, with_mlm=True, with_nsp=config.nsp,
                                              return_keras_model=False, **bert_cfg)
        tokenizer = Tokenizer({t: i for i, t in enumerate(tokens)}, do_lower_case=True)
    ids = {t: i for i, t in enumerate(tokens)}
    missing = [t for t in SPECIAL_TOKENS if t not in ids]
    if missing or ids[PAD] != 0:
        raise CheckpointError(f"the vocabulary must hold {', '.join(SPECIAL_TOKENS)} with [PAD] "
                              f"as id 0 (missing: {', '.join(missing) or 'none'})")
    special = sorted({ids[t] for t in SPECIAL_TOKENS} | {i for t, i in ids.items()
                                                        if t.startswith("[unused")})
    return transformer, bert_cfg, _Vocab(tokens, tokenizer, special, ids[CLS], ids[SEP], ids[MASK])


def _make_examples(items, behaviors, item_words, single_words, encode, vocab, config, max_len,
                   pipeline, rng):
    """Training sequences (single texts, or NSP pairs + single texts) and corpus counts."""
    encoded_items = {item_id: ids for item_id, ids in
                     ((item_id, encode(words)) for item_id, words in item_words.items()) if ids}
    encoded_singles = [ids for ids in map(encode, single_words) if ids]
    stats = {"items": len(items), "item_texts": len(item_words)}
    if config.nsp:
        pairs = [(encoded_items[a], encoded_items[b], label)
                 for a, b, label in nsp_pairs(list(encoded_items), behaviors, rng)]
        stats["nsp_source"] = "behaviour sequences"
        if not pairs:
            pairs = _title_rest_pairs(items, pipeline, encode, rng)
            stats["nsp_source"] = "title / rest of text"
        if not pairs:
            raise ValueError("nsp: no sentence pairs (need behaviour sequences or items with "
                             "both a title and other text)")
        examples = [pair_example(a, b, label, max_len, vocab.cls_id, vocab.sep_id)
                    for a, b, label in pairs]
        examples += single_examples(encoded_singles, max_len, vocab.cls_id, vocab.sep_id)
        stats["nsp_pairs"] = len(pairs)
        stats["nsp_positive"] = sum(label for _, _, label in pairs)
    else:
        examples = single_examples(list(encoded_items.values()) + encoded_singles, max_len,
                                   vocab.cls_id, vocab.sep_id)
    unk = vocab.tokenizer.token_to_id(UNK)
    stats.update(examples=len(examples), tokens=int(sum(e.length for e in examples)),
                 unk_tokens=sum(t == unk for e in examples for w in e.words for t in w))
    return examples, stats


def _train(trainer, examples, holdout, vocab, config, rng, total_steps, log):
    """The epochs: dynamic masking, length-bucketed batches; returns one dict per epoch."""
    lengths = [e.length for e in examples]
    history = []
    with progress_bar(total=total_steps, desc="pretraining", unit="step") as bar:
        for epoch in range(1, config.epochs + 1):
            epoch_start = time.time()
            meter = _Meter()
            for rows in bucketed_batches(lengths, config.batch_size, rng):
                batch = make_batch([examples[i] for i in rows], rng, vocab.size,
                                   vocab.special_ids, vocab.mask_id)
                meter.add(trainer.train_step(*(tf.constant(a) for a in batch)))
                bar.update(1)
            result = {"epoch": epoch, **meter.result()}
            if holdout:
                result.update({f"heldout_{k}": v for k, v in
                               _evaluate(trainer, holdout, vocab, config).items()
                               if k in ("mlm_loss", "mlm_accuracy", "masked_tokens")})
            result = {k: round(v, 5) if isinstance(v, float) else v for k, v in result.items()}
            result["seconds"] = round(time.time() - epoch_start, 2)
            history.append(result)
            print(_epoch_line(result, config.epochs), file=log)
    return history


def _evaluate(trainer, examples, vocab, config):
    """Masked-LM loss and accuracy on held-out examples, masked the same way every epoch."""
    rng = np.random.default_rng([config.seed, 11])  # the same masks at every evaluation
    meter = _Meter()
    order = np.argsort([e.length for e in examples], kind="stable")
    for start in range(0, len(order), config.batch_size):
        batch = make_batch([examples[i] for i in order[start:start + config.batch_size]], rng,
                           vocab.size, vocab.special_ids, vocab.mask_id)
        meter.add(trainer.eval_step(*(tf.constant(a) for a in batch)))
    return meter.result()


def _epoch_line(result, epochs):
    """One log line per epoch."""
    extra = (f", nsp loss {result['nsp_loss']:.4f} acc {result['nsp_accuracy']:.3f}"
             if "nsp_loss" in result else "")
    if "heldout_mlm_accuracy" in result:
        extra += (f"; held out: masked-LM loss {result['heldout_mlm_loss']:.4f}, accuracy "
                  f"{result['heldout_mlm_accuracy']:.3f}")
    return (f"epoch {result['epoch']}/{epochs}: loss {result['loss']:.4f}, masked-LM loss "
            f"{result['mlm_loss']:.4f}, masked-token accuracy {result['mlm_accuracy']:.3f}"
            f"{extra} ({result['seconds']:.1f} s)")
