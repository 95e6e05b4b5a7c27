#!/usr/bin/env python
"""Sentiment head vs a jieba TF-IDF + logistic-regression baseline on REAL Chinese reviews.

Data: ../shared/data/sentiment-zh (82k labelled hotel, food-delivery and shopping reviews).
Their source states no licence: they are read from ../shared for measurement only, never
copied into the repository, and the weights trained here are thrown away (a temporary
directory). Without ../shared the benchmark says so and exits 0.

Splits, each trained and tested in this run with the same examples for both methods:
- ``held-out``: the three domains pooled, a seeded 10% test split;
- ``cross-domain (test X)``: trained on the two other domains, tested on X.
Training sets are capped at ``--max-train`` examples (seeded sample), test sets at
``--max-test``. bert_rec: ``SentimentClassifier`` on the shipped checkpoint, top
``--train-layers`` layers fine-tuned, best epoch by AUC on 5% of the training examples (with
``--ngrams`` stacked on the TF-IDF n-gram model: the two blended by a logistic regression on
the validation reviews, bert_rec/ngrams.py); with
``--adapt-epochs N`` the checkpoint first continues masked-LM pretraining on the training
reviews' text (domain-adaptive pretraining: ``bert-rec pretrain --init CKPT --corpus FILE``).
Baseline: scikit-learn TfidfVectorizer over the same jieba words (unigrams + bigrams,
sublinear tf) + LogisticRegression.

    .venv/bin/python bench/sentiment.py [--max-train 20000] [--epochs 2]
"""

import argparse
import gzip
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import ROOT, TINY, table, write_result  # noqa: E402

DATA = os.path.join(ROOT, "..", "shared", "data", "sentiment-zh")
DOMAINS = ("hotel", "waimai", "shopping")


def load(folder):
    """{domain: (texts, labels)} from the sentiment-zh files."""
    out = {}
    for domain in DOMAINS:
        with gzip.open(os.path.join(folder, f"{domain}.jsonl.gz"), "rt", encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        out[domain] = ([r["text"] for r in rows], np.array([int(r["label"]) for r in rows]))
    return out


def _take(texts, labels, n, rng):
    if len(texts) <= n:
        return list(texts), np.asarray(labels)
    pick = np.sort(rng.choice(len(texts), n, replace=False))
    return [texts[i] for i in pick], np.asarray(labels)[pick]


def splits(data, max_train, max_test, seed=0):
    """[(name, (train texts, labels), (test texts, labels))]."""
    rng = np.random.default_rng(seed)
    texts = [t for d in DOMAINS for t in data[d][0]]
    labels = np.concatenate([data[d][1] for d in DOMAINS])
    order = rng.permutation(len(texts))
    n_test = len(texts) // 10
    test, train = order[:n_test], order[n_test:]
    out = [("held-out (all domains)",
            _take([texts[i] for i in train], labels[train], max_train, rng),
            _take([texts[i] for i in test], labels[test], max_test, rng))]
    for target in DOMAINS:
        rest = [d for d in DOMAINS if d != target]
        tr_texts = [t for d in rest for t in data[d][0]]
        tr_labels = np.concatenate([data[d][1] for d in rest])
        out.append((f"cross-domain (test {target})", _take(tr_texts, tr_labels, max_train, rng),
                    _take(*data[target], max_test, rng)))
    return out


def tfidf_baseline(train, test, words):
    """(accuracy, AUC, seconds) of TF-IDF + logistic regression."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from bert_rec.sentiment import roc_auc
    started = time.time()
    vectorizer = TfidfVectorizer(tokenizer=words, lowercase=False, token_pattern=None,
                                 ngram_range=(1, 2), min_df=2, sublinear_tf=True)
    model = LogisticRegression(max_iter=2000).fit(vectorizer.fit_transform(train[0]), train[1])
    positive = model.predict_proba(vectorizer.transform(test[0]))[:, 1]
    return (float(((positive >= 0.5) == test[1]).mean()), roc_auc(test[1], positive),
            time.time() - started)


def adapted_checkpoint(texts, args, work):
    """The checkpoint after ``--adapt-epochs`` of masked-LM on the training reviews (their text
    only: domain-adaptive pretraining, as ``bert-rec pretrain --init CKPT --corpus FILE``)."""
    from bert_rec.config import PretrainConfig
    from bert_rec.pretraining import pretrain
    out = os.path.join(work, "adapted")
    config = PretrainConfig(init_checkpoint=args.checkpoint, epochs=args.adapt_epochs,
                            max_len=args.max_len, batch_size=64, learning_rate=1e-4)
    pretrain([], (), out, config, corpus=texts, log=sys.stderr)
    return out


def bert_rec(train, test, args, work):
    """(accuracy, AUC, seconds, best epoch) of the sentiment head fine-tuned on ``train``."""
    from bert_rec.config import SentimentConfig
    from bert_rec.sentiment import train_sentiment
    started = time.time()
    checkpoint = args.checkpoint
    if args.adapt_epochs:
        checkpoint = adapted_checkpoint(train[0], args, work)
    config = SentimentConfig(train_layers=args.train_layers, epochs=args.epochs,
                             batch_size=args.batch_size, learning_rate=args.learning_rate,
                             max_len=args.max_len, truncation=args.truncation,
                             ngrams=args.ngrams,
                             validation_fraction=0.05)
    clf = train_sentiment(checkpoint, train[0], train[1], os.path.join(work, "m"), config,
                          log=sys.stderr)
    metrics = clf.evaluate(test[0], test[1])
    validation = dict(clf.meta["validation"])
    if clf.ngrams is not None:  # how much of each model's log-odds the stacked head uses
        validation["blend"] = clf.blend
    return metrics["accuracy"], metrics["auc"], time.time() - started, validation


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DATA)
    parser.add_argument("--checkpoint", default=TINY)
    parser.add_argument("--max-train", type=int, default=20_000)
    parser.add_argument("--max-test", type=int, default=4_000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--train-layers", type=int, default=-1)
    parser.add_argument("--max-len", type=int, default=128)
    parser.add_argument("--truncation", choices=("head", "head_tail"), default="head",
                        help="how a review longer than --max-len tokens is cut")
    parser.add_argument("--ngrams", action="store_true",
                        help="the head stacked on n-grams (SentimentConfig.ngrams)")
    parser.add_argument("--splits", nargs="+", metavar="NAME",
                        help="only the splits whose names contain one of these words "
                             "(e.g. held-out hotel)")
    parser.add_argument("--out", default="sentiment",
                        help="result name: bench/results/NAME.json (default sentiment)")
    parser.add_argument("--adapt-epochs", type=int, default=0,
                        help="first continue masked-LM pretraining on the training reviews' text")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.data):
        print(f"bench/sentiment.py: {args.data} not found (the reviews are read from ../shared "
              f"for measurement only); skipped", file=sys.stderr)
        return 0
    os.environ.setdefault("BERT_REC_PROGRESS", "0")
    import tempfile
    from bert_rec.text import TextPipeline
    words = TextPipeline().words
    rows, figures = [], {}
    for name, train, test in splits(load(args.data), args.max_train, args.max_test):
        if args.splits and not any(word in name for word in args.splits):
            continue
        print(f"{name}: {len(train[0])} training, {len(test[0])} test reviews", file=sys.stderr)
        base = tfidf_baseline(train, test, words)
        with tempfile.TemporaryDirectory(prefix="bert_rec-sentiment-") as work:
            ours = bert_rec(train, test, args, work)  # its weights are deleted with `work`
        rows.append([name, len(train[0]), len(test[0]), base[0], base[1], ours[0], ours[1],
                     ours[2]])
        figures[name] = {"train": len(train[0]), "test": len(test[0]),
                         "tfidf_accuracy": base[0], "tfidf_auc": base[1],
                         "bert_rec_accuracy": ours[0], "bert_rec_auc": ours[1],
                         "bert_rec_seconds": ours[2], "bert_rec_validation": ours[3]}
    print()
    ours = "bert_rec + n-grams" if args.ngrams else "bert_rec"
    table(["split", "train", "test", "TF-IDF+LR acc", "TF-IDF+LR AUC", f"{ours} acc",
           f"{ours} AUC", f"{ours} s"], rows)
    summary = None  # the headline figures: every split, under the default result name
    if not args.splits and args.out == "sentiment":
        summary = {"sentiment_auc_heldout": figures["held-out (all domains)"]["bert_rec_auc"],
                   "sentiment_auc_vs_tfidf_min": min(f["bert_rec_auc"] - f["tfidf_auc"]
                                                     for f in figures.values())}
    write_result(args.out, {"settings": vars(args), "splits": figures}, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
