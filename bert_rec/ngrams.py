"""The n-gram half of the sentiment head: TF-IDF over jieba words + logistic regression.

A bag of word uni- and bigrams is what the classic sentiment baseline sees, and it is strong on
in-domain reviews. The sentiment head (sentiment.py) can stack BERT on it: this model's logit
is a fixed offset and BERT is fine-tuned to add what the n-grams miss (the residual), so
P(positive) = sigmoid(n-gram logit + BERT logit). The offsets BERT trains against are
out-of-fold (each training text scored by a model fitted without it, K-fold cross-fitting), so
BERT learns from the n-gram model's real errors rather than from its fit to its own training
texts; at inference the model fitted on every training text is used.

scikit-learn (already a dependency for the baseline) does the fitting: its TfidfVectorizer and
LogisticRegression are the reference implementations the baseline uses, so the two agree
exactly. The fitted model is stored as plain arrays (``ngrams.npz``: terms, idf, coefficients),
never pickled.
"""

import os

import numpy as np

WEIGHTS_NAME = "ngrams.npz"
FOLDS = 5


def _vectorizer(vocabulary=None):
    from sklearn.feature_extraction.text import TfidfVectorizer  # noqa: PLC0415
    # documents are lists of cleaned words: no tokenising or lower-casing of our own
    return TfidfVectorizer(analyzer=lambda words: _terms(words), vocabulary=vocabulary,
                           min_df=1 if vocabulary is not None else 2, sublinear_tf=True)


def _terms(words):
    """Unigrams and bigrams (joined by a space) of one text's words."""
    return list(words) + [f"{a} {b}" for a, b in zip(words, words[1:])]


class NgramLogit:
    """TF-IDF (word uni+bigrams, min_df 2, sublinear tf) + L2 logistic regression (C=1)."""

    def __init__(self, terms, idf, coef, intercept):
        self.vectorizer = _vectorizer({t: i for i, t in enumerate(terms)})
        self.vectorizer.idf_ = np.asarray(idf, np.float64)
        self.coef = np.asarray(coef, np.float64)            # [T]
        self.intercept = float(intercept)

    @classmethod
    def fit(cls, word_lists, labels):
        """Fit on lists of cleaned words and 0/1 labels."""
        from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
        vectorizer = _vectorizer()
        features = vectorizer.fit_transform(word_lists)
        model = LogisticRegression(max_iter=2000).fit(features, np.asarray(labels))
        terms = vectorizer.get_feature_names_out()
        return cls(terms, vectorizer.idf_, model.coef_[0], model.intercept_[0])

    def logit(self, word_lists):
        """log-odds of positive [N]."""
        if not len(word_lists):
            return np.zeros(0, np.float32)
        features = self.vectorizer.transform(word_lists)
        return (features @ self.coef + self.intercept).astype(np.float32)

    def save(self, directory):
        # terms as one UTF-8 block, newline-separated (cleaned words hold no whitespace)
        terms = "\n".join(self.vectorizer.get_feature_names_out()).encode("utf-8")
        with open(os.path.join(directory, WEIGHTS_NAME), "wb") as f:
            np.savez(f, terms=np.frombuffer(terms, np.uint8), idf=self.vectorizer.idf_,
                     coef=self.coef, intercept=np.float64(self.intercept))

    @classmethod
    def load(cls, directory):
        from .checkpoint import read_arrays  # noqa: PLC0415
        arrays = read_arrays(os.path.join(directory, WEIGHTS_NAME))
        terms = arrays["terms"].tobytes().decode("utf-8").split("\n")
        return cls(terms, arrays["idf"], arrays["coef"], float(arrays["intercept"]))


def out_of_fold_logits(word_lists, labels, folds=FOLDS, seed=0):
    """(model fitted on everything, logits [N] of each text from a model fitted without it)."""
    labels = np.asarray(labels)
    order = np.random.default_rng([seed, 3]).permutation(len(labels))
    logits = np.zeros(len(labels), np.float32)
    for part in np.array_split(order, folds):
        keep = np.setdiff1d(order, part)
        if len(set(labels[keep].tolist())) < 2:  # a fold too small to hold both labels
            continue
        model = NgramLogit.fit([word_lists[i] for i in keep], labels[keep])
        logits[part] = model.logit([word_lists[i] for i in part])
    return NgramLogit.fit(word_lists, labels), logits
