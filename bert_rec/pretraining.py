"""Masked-LM (+ optional next-sentence) pretraining of a Chinese BERT on your own item texts.

``bert-rec pretrain`` either continues a Google-format checkpoint that holds its pretraining
heads (domain-adaptive pretraining) or trains a small BERT from scratch with a vocabulary built
from the corpus, and writes the result as a Google-format checkpoint directory (with
``cls/predictions/*``, and ``cls/seq_relationship/*`` when trained with NSP) that
``load_bert`` / ``bert-rec recommend --model`` read like any other.

The corpus is what bert_rec encodes at inference: each item's feature text
(``Item.full_text()``) and the users' behaviour texts (comments, reviews, queries), cleaned by
:class:`bert_rec.text.TextPipeline` into jieba words (stopwords removed).

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
"""

import argparse
import dataclasses
import json
import math
import os
import sys
import time

import numpy as np

from .backend import Tokenizer, build_transformer_model, keras, reset_initializer_counter, tf
from .atomic import write_text
from .checkpoint import (CheckpointError, bert_config, find_checkpoint, has_variable, load_bert,
                         save_checkpoint)
from .progress import progress_bar
from .tokenization import SPECIAL_TOKENS, build_char_vocab, load_tokenizer, pad_batch
from .training_config import CONTINUE_LEARNING_RATE, SCRATCH_LEARNING_RATE

# The argparse definition lives in cli.py (parsing must not import TensorFlow).
from .cli import add_pretrain_parser as add_parser  # noqa: E402,F401

SUMMARY_NAME = "pretraining.json"
PAD, UNK, CLS, SEP, MASK = SPECIAL_TOKENS
MASK_RATE = 0.15
WARMUP_FRACTION = 0.1
NSP_IGNORE = -1  # nsp label of a single-text example (no NSP loss)
POOL_SIZE = 50   # batches' worth of examples sorted by length together (bucketing)


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

    Returns ``(item_words {item_id: words}, behaviour_words [words, ...])``.
    """
    if pipeline is None:
        from .text import TextPipeline  # noqa: PLC0415
        pipeline = TextPipeline()
    item_words = {}
    for item in items:
        words = pipeline.words(item.full_text())
        if words:
            item_words[item.item_id] = words
    behaviour_words = [words for words in (pipeline.words(b.text) for b in behaviors if b.text)
                       if words]
    return item_words, behaviour_words


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
def bucketed_batches(lengths, batch_size, rng):
    """Shuffled batches of example indices; examples of similar length share a batch."""
    order = rng.permutation(len(lengths))
    lengths = np.asarray(lengths)
    batches = []
    pool = batch_size * POOL_SIZE
    for start in range(0, len(order), pool):
        chunk = order[start:start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


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
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to ``peak`` over ``warmup`` steps, then linear decay to 0."""

    def __init__(self, peak, total_steps, warmup):
        self.peak = float(peak)
        self.total_steps = max(int(total_steps), 1)
        self.warmup = max(int(warmup), 1)

    def __call__(self, step):
        step = tf.cast(step, tf.float32) + 1.0
        up = step / self.warmup
        down = (self.total_steps - step + 1.0) / max(self.total_steps - self.warmup + 1, 1)
        return self.peak * tf.clip_by_value(tf.minimum(up, down), 0.0, 1.0)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup": self.warmup}


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
    logits = head(tf.gather_nd(sequence, positions))                     # [N, V]
    token_loss = tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits)
    masked = tf.cast(tf.size(targets), tf.float32)
    mlm_sum = tf.reduce_sum(token_loss)
    predicted = tf.argmax(logits, axis=-1, output_type=tf.int32)
    correct = tf.reduce_sum(tf.cast(tf.equal(predicted, targets), tf.float32))
    loss = mlm_sum / tf.maximum(masked, 1.0)
    zero = tf.constant(0.0)
    nsp_sum, nsp_n, nsp_ok = zero, zero, zero
    if nsp:
        nsp_probs = outputs[1]                                           # [B, 2]
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


class Trainer:
    """The optimizer and training step of one transformer (a tf.function traced once)."""

    def __init__(self, transformer, nsp, learning_rate, total_steps, warmup):
        self.nsp = nsp
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

    def _train_step(self, token_ids, segment_ids, labels, nsp_labels):
        with tf.GradientTape() as tape:
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
    """What :func:`run_pretraining` produced: the summary and the trained model in memory."""
    summary: dict
    transformer: object   # bert4keras Transformer (its .model has all heads)
    model: object         # keras Model: [MLM probs] (+ [NSP probs] with nsp)
    config: dict
    vocab_tokens: list
    trainer: object = None  # the Trainer (optimizer, traced training step)


def pretrain(items, behaviors=(), out_dir=None, init_checkpoint=None, hidden_size=128,
             num_layers=2, num_heads=2, max_len=64, epochs=3, batch_size=32, learning_rate=None,
             nsp=False, seed=0, min_count=2, log=None, command=None, pipeline=None):
    """Pretrain (MLM, + NSP with ``nsp=True``) and write a checkpoint to ``out_dir``.

    ``init_checkpoint``: a checkpoint directory to continue (it must hold cls/predictions/*;
    its vocabulary and architecture are kept, the size arguments are ignored); None trains a
    ``num_layers`` x ``hidden_size`` BERT from scratch with a vocabulary built from the corpus
    (characters and ASCII words seen ``min_count`` times). ``learning_rate`` defaults to 1e-3
    from scratch and 5e-5 when continuing. Returns the summary dict also written to
    ``out_dir/pretraining.json``.
    """
    return run_pretraining(items, behaviors, out_dir, init_checkpoint=init_checkpoint,
                           hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads,
                           max_len=max_len, epochs=epochs, batch_size=batch_size,
                           learning_rate=learning_rate, nsp=nsp, seed=seed, min_count=min_count,
                           log=log, command=command, pipeline=pipeline).summary


def run_pretraining(items, behaviors=(), out_dir=None, *, init_checkpoint=None, hidden_size=128,
                    num_layers=2, num_heads=2, max_len=64, epochs=3, batch_size=32,
                    learning_rate=None, nsp=False, seed=0, min_count=2, log=None, command=None,
                    pipeline=None):
    """:func:`pretrain`, returning a :class:`PretrainingResult` (summary + in-memory model)."""
    log = log if log is not None else sys.stderr
    if not out_dir:
        raise ValueError("pretrain needs an output directory (out_dir)")
    for name, value, low in (("epochs", epochs, 1), ("batch_size", batch_size, 1),
                             ("max_len", max_len, 8), ("min_count", min_count, 1)):
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    started = time.time()
    items, behaviors = list(items), list(behaviors)
    if pipeline is None:
        from .text import TextPipeline  # noqa: PLC0415
        pipeline = TextPipeline()
    item_words, behaviour_words = corpus_word_lists(items, behaviors, pipeline)
    if not item_words and not behaviour_words:
        raise ValueError("no text to pretrain on: every item and behaviour text is empty "
                         "after cleaning")

    # --- vocabulary and model --------------------------------------------------------
    tf.random.set_seed(seed)
    reset_initializer_counter()
    if init_checkpoint:
        files = find_checkpoint(init_checkpoint)
        with open(files.vocab_path, encoding="utf-8") as f:
            vocab_tokens = [line.rstrip("\r\n") for line in f]
        if max_len > files.max_position:
            print(f"max_len {max_len} > the checkpoint's max_position_embeddings "
                  f"{files.max_position}: using {files.max_position}", file=log)
            max_len = files.max_position
        prefix = files.ckpt_prefix
        if nsp and not has_variable(prefix, "cls/seq_relationship/output_bias"):
            raise CheckpointError(f"{prefix}: has no next-sentence head (cls/seq_relationship/*), "
                                  f"so it can't be pretrained with NSP; rerun without --nsp")
        # Keep every head the checkpoint has, trained or not, so the output loses nothing.
        keep_nsp = nsp or has_variable(prefix, "cls/seq_relationship/output_bias")
        keep_pool = keep_nsp or has_variable(prefix, "bert/pooler/dense/kernel")
        transformer = load_bert(files, with_pool=keep_pool, with_mlm=True, with_nsp=keep_nsp,
                                return_keras_model=False)
        config = dict(files.config)
        tokenizer = load_tokenizer(files.vocab_path)
        learning_rate = learning_rate or CONTINUE_LEARNING_RATE
    else:
        texts = [" ".join(w) for w in item_words.values()] + [" ".join(w) for w in
                                                              behaviour_words]
        vocab_tokens = build_char_vocab(texts, min_count=min_count, word_pieces=True)
        config = bert_config(len(vocab_tokens), hidden_size=hidden_size,
                             num_hidden_layers=num_layers, num_attention_heads=num_heads,
                             max_position_embeddings=max_len)
        # The pooler is kept (untrained without NSP) so pooling='pooler' can load the output.
        transformer = build_transformer_model(with_pool=True, with_mlm=True, with_nsp=nsp,
                                              return_keras_model=False, **config)
        tokenizer = Tokenizer({t: i for i, t in enumerate(vocab_tokens)}, do_lower_case=True)
        learning_rate = learning_rate or SCRATCH_LEARNING_RATE
    vocab = {t: i for i, t in enumerate(vocab_tokens)}
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing or vocab[PAD] != 0:
        raise CheckpointError(f"the vocabulary must hold {', '.join(SPECIAL_TOKENS)} with [PAD] "
                              f"as id 0 (missing: {', '.join(missing) or 'none'})")
    special_ids = sorted({vocab[t] for t in SPECIAL_TOKENS}
                         | {i for t, i in vocab.items() if t.startswith("[unused")})
    cls_id, sep_id, mask_id = vocab[CLS], vocab[SEP], vocab[MASK]
    vocab_size = len(vocab_tokens)

    # --- examples --------------------------------------------------------------------
    rng = np.random.default_rng(seed)
    encode = _WordEncoder(tokenizer)
    encoded_items = {item_id: ids for item_id, ids in
                     ((item_id, encode(words)) for item_id, words in item_words.items()) if ids}
    encoded_behaviours = [ids for ids in map(encode, behaviour_words) if ids]
    corpus = {"items": len(items), "item_texts": len(item_words),
              "behaviour_texts": len(behaviour_words)}
    if nsp:
        pairs = [(encoded_items[a], encoded_items[b], label)
                 for a, b, label in nsp_pairs(list(encoded_items), behaviors, rng)]
        corpus["nsp_source"] = "behaviour sequences"
        if not pairs:
            pairs = _title_rest_pairs(items, pipeline, encode, rng)
            corpus["nsp_source"] = "title / rest of text"
        if not pairs:
            raise ValueError("nsp: no sentence pairs (need behaviour sequences or items with "
                             "both a title and other text)")
        examples = [pair_example(a, b, label, max_len, cls_id, sep_id) for a, b, label in pairs]
        examples += single_examples(encoded_behaviours, max_len, cls_id, sep_id)
        corpus["nsp_pairs"] = len(pairs)
        corpus["nsp_positive"] = sum(label for _, _, label in pairs)
    else:
        examples = single_examples(list(encoded_items.values()) + encoded_behaviours, max_len,
                                   cls_id, sep_id)
    lengths = [e.length for e in examples]
    corpus.update(examples=len(examples), tokens=int(sum(lengths)),
                  unk_tokens=sum(t == vocab[UNK] for e in examples for w in e.words for t in w))

    # --- training --------------------------------------------------------------------
    model = training_model(transformer, nsp)
    steps_per_epoch = math.ceil(len(examples) / batch_size)
    total_steps = steps_per_epoch * epochs
    warmup = max(1, int(WARMUP_FRACTION * total_steps))
    trainer = Trainer(transformer, nsp, learning_rate, total_steps, warmup)
    print(f"pretraining {'from ' + init_checkpoint if init_checkpoint else 'from scratch'}: "
          f"{len(examples)} sequences ({corpus['tokens']} tokens), vocab {vocab_size}, "
          f"{config['num_hidden_layers']} layers x hidden {config['hidden_size']}, "
          f"max_len {max_len}, {epochs} epochs x {steps_per_epoch} steps, lr {learning_rate:g}"
          f"{', with NSP' if nsp else ''}", file=log)
    history = []
    with progress_bar(total=total_steps, desc="pretraining", unit="step") as bar:
        for epoch in range(1, epochs + 1):
            epoch_start = time.time()
            meter = _Meter()
            for rows in bucketed_batches(lengths, batch_size, rng):
                batch = make_batch([examples[i] for i in rows], rng, vocab_size, special_ids,
                                   mask_id)
                stats = trainer.train_step(*(tf.constant(a) for a in batch))
                meter.add(stats)
                bar.update(1)
            result = meter.result()
            result = {"epoch": epoch, **{k: round(v, 5) if isinstance(v, float) else v
                                         for k, v in result.items()},
                      "seconds": round(time.time() - epoch_start, 2)}
            history.append(result)
            extra = (f", nsp loss {result['nsp_loss']:.4f} acc {result['nsp_accuracy']:.3f}"
                     if "nsp_loss" in result else "")
            print(f"epoch {epoch}/{epochs}: loss {result['loss']:.4f}, masked-LM loss "
                  f"{result['mlm_loss']:.4f}, masked-token accuracy {result['mlm_accuracy']:.3f}"
                  f"{extra} ({result['seconds']:.1f} s)", file=log)

    # --- output ----------------------------------------------------------------------
    out_dir = save_checkpoint(transformer, config, vocab_tokens, out_dir)
    summary = {
        "out_dir": out_dir,
        "init_checkpoint": init_checkpoint or None,
        "vocab_size": vocab_size,
        "config": config,
        "corpus": corpus,
        "nsp": bool(nsp),
        "max_len": max_len,
        "epochs": epochs,
        "batch_size": batch_size,
        "steps": total_steps,
        "warmup_steps": warmup,
        "learning_rate": learning_rate,
        "mask_rate": MASK_RATE,
        "seed": seed,
        "min_count": min_count,
        "history": history,
        "final": {k: v for k, v in history[-1].items() if k not in ("epoch", "seconds")},
        "seconds": round(time.time() - started, 1),
        "command": command,
    }
    # out_dir is where the file lies: leave it out, so a copied checkpoint holds no stale path.
    _write_json({k: v for k, v in summary.items() if k != "out_dir"},
                os.path.join(out_dir, SUMMARY_NAME))
    print(f"wrote {out_dir} (final loss {summary['final']['loss']:.4f}, masked-token accuracy "
          f"{summary['final']['mlm_accuracy']:.3f}, {summary['seconds']:.0f} s)", file=log)
    return PretrainingResult(summary, transformer, model, config, vocab_tokens, trainer)


def _write_json(data, path):
    """Write JSON atomically (atomic.write_text)."""
    write_text(path, json.dumps(data, ensure_ascii=False, indent=2) + "\n")


# ======================================================================================
# command line
# ======================================================================================
def cmd_pretrain(args):
    """Read the inputs and run :func:`pretrain` with the parsed arguments."""
    from .data import DEFAULT_BEHAVIORS, read_behaviors, read_items  # noqa: PLC0415
    items, report = read_items(args.items, on_error=args.on_error)
    print(report.summary(), file=sys.stderr)
    behaviors = []
    if args.behaviors:
        names = tuple(DEFAULT_BEHAVIORS) + tuple(getattr(args, "behavior_names", None) or ())
        behaviors, report = read_behaviors(args.behaviors, on_error=args.on_error,
                                           behaviors=names,
                                           item_ids={item.item_id for item in items})
        print(report.summary(), file=sys.stderr)
    command = {k: v for k, v in vars(args).items() if k != "func" and not callable(v)}
    command["argv"] = sys.argv[1:]
    pretrain(items, behaviors, args.out, init_checkpoint=args.init,
             hidden_size=args.hidden_size, num_layers=args.layers, num_heads=args.heads,
             max_len=args.max_len, epochs=args.epochs, batch_size=args.batch_size,
             learning_rate=args.learning_rate, nsp=args.nsp, seed=args.seed,
             min_count=args.min_count, command=command)
    return 0


def main(argv=None):
    """``python -m bert_rec.pretraining ARGS`` = ``bert-rec pretrain ARGS``."""
    from .data import InputError  # noqa: PLC0415
    parser = argparse.ArgumentParser(prog="python -m bert_rec.pretraining")
    sub = parser.add_subparsers(metavar="COMMAND")
    add_parser(sub)
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "pretrain":
        argv = ["pretrain"] + argv
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except (InputError, ValueError, FileNotFoundError) as e:
        print(f"bert-rec pretrain: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bert-rec pretrain: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
