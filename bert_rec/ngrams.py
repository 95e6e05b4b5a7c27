"""The n-gram half of the sentiment head: TF-IDF over jieba words + logistic regression.

A bag of word uni- and bigrams is what the classic sentiment baseline sees, and it is strong on
in-domain reviews. The sentiment head (sentiment.py) can stack BERT on it (``--ngrams``), by
stacked generalisation (Wolpert 1992): BERT's head and this model are trained on the same
training texts, each alone; then a logistic regression on the *validation* texts, which
neither saw, learns how much of each log-odds to trust (:func:`fit_blend`):
P(positive) = sigmoid(a·n-gram + b·BERT + c), a, b >= 0. Finally the n-gram model is fitted
again on the training and validation texts together (it is cheap and convex; BERT is not
retrained). Where BERT adds nothing, b goes to 0 and the head is the n-gram model.

An earlier version trained BERT on the residual of out-of-fold n-gram logits instead; on the
real reviews of bench/sentiment.py that scored level to 0.015 AUC *below* the TF-IDF baseline
(BERT's residual fitted the training domains), the blend 0.0017-0.0047 above it (README). Model
directories written by it have no ``blend`` and load with a = b = 1, c = 0, which is what
they computed.

scikit-learn (already a dependency for the baseline) does the fitting: its TfidfVectorizer and
LogisticRegression are the reference implementations the baseline uses, so the two agree
exactly. The fitted model is stored as plain arrays (``ngrams.npz``: terms, idf, coefficients),
never pickled; the blend is three numbers in sentiment.json.
"""

import os

import numpy as np

WEIGHTS_NAME = "ngrams.npz"
# the blend of models written before blending existed: n-gram + BERT log-odds (the residual)
RESIDUAL_BLEND = {"ngram": 1.0, "bert": 1.0, "bias": 0.0}


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


def fit_blend(ngram, bert, labels):
    """{"ngram": a, "bert": b, "bias": c}: the logistic regression of held-out labels on the
    two models' log-odds [N] each, with a, b >= 0 (a model that gets a negative weight is left
    out and the other fitted alone). Labels of one class only: the plain sum (a = b = 1)."""
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415
    labels = np.asarray(labels)
    if len(set(labels.tolist())) < 2:
        return dict(RESIDUAL_BLEND)
    features = np.c_[ngram, bert].astype(np.float64)
    for columns in ((0, 1), (0,), (1,)):
        model = LogisticRegression().fit(features[:, list(columns)], labels)
        if (model.coef_[0] >= 0).all():
            break
    weights = dict(zip(columns, model.coef_[0].tolist()))
    return {"ngram": float(weights.get(0, 0.0)), "bert": float(weights.get(1, 0.0)),
            "bias": float(model.intercept_[0])}
