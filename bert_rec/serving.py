"""Client side of a TF Serving export: raw behaviour records -> the exact request.

The text pipeline, vocabulary and weights come from the export's own ``assets/`` (the files the
model was trained with), so a request built here is preprocessed exactly as ``bert-rec recommend``
preprocesses the same user. Bodies follow TF Serving's REST predict API in columnar form
(``{"signature_name": ..., "inputs": {...}}``); ``predict_request`` builds the gRPC
``PredictRequest`` (tensorflow-serving-api).

Importing this module loads no TensorFlow; the tokenizer (bert4keras's, which imports it) loads
when a request first needs token ids, and ``predict_request`` imports it for the protos.
"""

import dataclasses
import json
import os

import numpy as np

from .config import MODEL_CONFIG_NAME, ModelConfig
from .text import TextPipeline
from .units import pad_units, user_units

# Score of padding (fewer than k unseen items) and of unknown candidate ids in an export's
# answers: finite, since -inf is not JSON, and far below any cosine (which lies in [-1, 1]).
PAD_SCORE = -1e9
ITEM_IDS_ASSET = "item_vectors.ids"  # the export's item index, one id per line


def version_dir(export_path):
    """A SavedModel version folder: ``export_path`` itself, its newest ``<version>`` (a model
    folder) or its newest ``<name>/<version>`` (an export folder)."""
    if os.path.isfile(os.path.join(export_path, "saved_model.pb")):
        return export_path
    if any(v.isdigit() for v in os.listdir(export_path)):
        return latest_version(os.path.dirname(os.path.abspath(export_path)),
                              os.path.basename(os.path.abspath(export_path)))
    return latest_version(export_path)


def latest_version(export_dir, name=None):
    """The newest ``EXPORT_DIR/<name>/<version>`` directory (name: the only one if not given)."""
    if name is None:
        names = [n for n in sorted(os.listdir(export_dir))
                 if os.path.isdir(os.path.join(export_dir, n)) and not n.startswith(".")]
        if len(names) != 1:
            raise ValueError(f"{export_dir}: expected one model folder, found "
                             f"{', '.join(names) or 'none'}; pass the model name")
        name = names[0]
    base = os.path.join(export_dir, name)
    versions = [int(v) for v in os.listdir(base) if v.isdigit()] if os.path.isdir(base) else []
    if not versions:
        raise ValueError(f"{base}: no numbered SavedModel version folder; run bert-rec export")
    return os.path.join(base, str(max(versions)))


class ServingClient:
    """Builds requests for one export's signatures."""

    def __init__(self, export_path):
        self.path = version_dir(export_path)
        assets = os.path.join(self.path, "assets")
        self.config = ModelConfig.load(os.path.join(assets, MODEL_CONFIG_NAME))
        text = dataclasses.replace(
            self.config.text, stopwords_path=os.path.join(assets, "stopwords.txt"),
            extra_stopwords_path=None,
            user_dict_path=_existing(os.path.join(assets, "userdict.txt")))
        self.pipeline = TextPipeline(text)
        self.vocab_path = os.path.join(assets, "vocab.txt")
        self._tokenizer = None
        self._sentiment = None  # the export's sentiment signature, loaded when first needed
        with open(os.path.join(assets, "bert_config.json"), encoding="utf-8") as f:
            self.max_position = int(json.load(f).get("max_position_embeddings", 512))
        # Items the export's index holds: a request sends only their ids. None: an export from
        # before the list was saved, whose requests carry every item's tokens.
        self.export_items = _read_ids(os.path.join(assets, ITEM_IDS_ASSET))

    def user_inputs(self, histories, items_by_id=None):
        """Time-sorted behaviour lists [B] -> behavior_token_ids / _item_ids / _weights /
        _features.

        Units are exactly ``units.user_units``'s: each of the latest ``max_history``
        behaviours gives its item (by id; token ids only for an item the export's index lacks,
        whose text must be in ``items_by_id``) and, when its text cleans to something, the text;
        weights are signed by ratings and, when the export has a sentiment head, by the texts'
        sentiment.
        """
        items_by_id = items_by_id or {}
        sources, item_rows = [], {}
        for behaviors in histories:
            for b in behaviors:
                if b.item_id not in item_rows:
                    item_rows[b.item_id] = len(sources)
                    sources.append(("item", b.item_id))
        raw_texts = sorted({b.text for behaviors in histories for b in behaviors if b.text})
        text_rows = {}
        for raw, cleaned in zip(raw_texts, self.pipeline.clean_many(raw_texts)):
            if cleaned:
                text_rows[raw] = len(sources)
                sources.append(("text", cleaned))
        tokens = self._source_tokens(sources, items_by_id)
        opinion = self.text_opinions(text_rows, sources)
        units = [user_units(h, self.config.scoring, item_rows, text_rows, opinion)
                 for h in histories]
        rows, weights, features = pad_units(units)  # [B, N], [B, N], [B, N, 3]
        length = max(max((len(tokens[r]) for r in rows.ravel()), default=1), 1)
        token_ids = np.zeros(rows.shape + (length,), np.int32)  # [B, N, L]
        item_ids = np.full(rows.shape, "", dtype=object)  # [B, N]
        for (b, n), row in np.ndenumerate(rows):
            if weights[b, n] != 0:
                token_ids[b, n, :len(tokens[row])] = tokens[row]
                kind, value = sources[row]
                item_ids[b, n] = value if kind == "item" else ""
        return {"behavior_token_ids": token_ids, "behavior_item_ids": item_ids,
                "behavior_weights": weights, "behavior_features": features}

    def text_opinions(self, text_rows, sources):
        """Raw text -> 2 P(positive) - 1 from the export's ``sentiment`` signature, run
        locally (None when the export has no sentiment head or no texts)."""
        meta_path = os.path.join(self.path, "assets", "sentiment.json")
        if not text_rows or not os.path.isfile(meta_path):
            return None
        import tensorflow as tf  # noqa: PLC0415  (only exports with a sentiment head)
        if self._sentiment is None:
            self._sentiment = tf.saved_model.load(self.path).signatures["sentiment"]
        with open(meta_path, encoding="utf-8") as f:
            max_len = min(int(json.load(f)["max_len"]), self.max_position)
        rows = sorted(set(text_rows.values()))
        token_ids, _ = _pad([sources[r][1] for r in rows], self.encode, max_len)
        positive = self._sentiment(token_ids=tf.constant(token_ids),
                                   segment_ids=tf.zeros_like(token_ids))["positive"].numpy()
        by_row = dict(zip(rows, 2 * positive - 1))
        return {raw: float(by_row[row]) for raw, row in text_rows.items()}

    def encode(self, texts, max_len):
        """Cleaned texts -> token-id lists with the export's vocabulary (loads the tokenizer)."""
        from .tokenization import encode_texts, load_tokenizer  # noqa: PLC0415  (TensorFlow)
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.vocab_path)
        return encode_texts(self._tokenizer, texts, max_len)

    def _source_tokens(self, sources, items_by_id):
        """Token ids of each unit source: item feature texts and cleaned behaviour texts."""
        item_len = min(self.config.item_max_len, self.max_position)
        text_len = min(self.config.text_max_len, self.max_position)
        known = self.export_items or frozenset()
        items = [value for kind, value in sources if kind == "item" and value not in known]
        missing = [i for i in items if i not in items_by_id]
        if missing:
            where = ("neither in the export's catalogue nor in the items file" if known else
                     "not in the items file")
            raise ValueError(f"behaviours refer to item(s) {', '.join(missing[:5])} that are "
                             f"{where}: pass --items with the catalogue the behaviours come from")
        item_texts = self.pipeline.clean_many([items_by_id[i].full_text() for i in items])
        item_tokens = iter(self.encode(item_texts, item_len))
        texts = [value for kind, value in sources if kind == "text"]
        text_tokens = iter(self.encode(texts, text_len))
        return [[] if kind == "item" and value in known else
                next(item_tokens) if kind == "item" else next(text_tokens)
                for kind, value in sources]

    def recommend_inputs(self, histories, items_by_id=None, k=10):
        """Inputs of the ``recommend`` / ``serving_default`` signature."""
        inputs = self.user_inputs(histories, items_by_id)
        seen = [list(dict.fromkeys(b.item_id for b in h)) if self.config.scoring.exclude_seen
                else [] for h in histories]
        width = max((len(s) for s in seen), default=0)
        exclude = np.full((len(histories), max(width, 1)), "", dtype=object)  # [B, E]
        for b, items in enumerate(seen):
            exclude[b, :len(items)] = items
        inputs.update(exclude_item_ids=exclude, k=np.int32(k))
        return inputs


def rest_body(inputs, signature="serving_default"):
    """TF Serving REST predict body in columnar form."""
    return {"signature_name": signature,
            "inputs": {name: np.asarray(value).tolist() for name, value in inputs.items()}}


def recommendations(response):
    """[(item_id, score), ...] per user from a ``recommend`` answer: the REST columnar
    ``{"outputs": {...}}`` or row ``{"predictions": [...]}`` form; padding dropped."""
    if "outputs" in response:
        out = response["outputs"]
        rows = zip(out["item_ids"], out["scores"], out.get("num_valid", [None] * len(
            out["scores"])))
    else:
        rows = ((p["item_ids"], p["scores"], p.get("num_valid")) for p in response["predictions"])
    result = []
    for ids, scores, valid in rows:
        if valid is None:  # an export from before num_valid: padding scored -inf
            valid = sum(s > PAD_SCORE for s in scores)
        result.append([(str(i), float(s)) for i, s in zip(ids[:valid], scores[:valid])])
    return result


def predict_request(inputs, model_name, signature="serving_default"):
    """The gRPC ``tensorflow.serving.PredictRequest`` for the same inputs."""
    import tensorflow as tf  # noqa: PLC0415
    from tensorflow_serving.apis import predict_pb2  # noqa: PLC0415
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature
    for name, value in inputs.items():
        value = np.asarray(value)
        if value.dtype == object:
            value = value.astype(bytes) if value.size else np.zeros(value.shape, dtype=bytes)
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value))
    return request


def _pad(texts, encode, max_len):
    """Cleaned texts -> (token ids [N, L] int32, lengths [N]), zero-padded."""
    sequences = encode(texts, max_len)
    lengths = np.array([len(seq) for seq in sequences])
    token_ids = np.zeros((len(texts), max(lengths.max(), 1)), np.int32)
    for i, seq in enumerate(sequences):
        token_ids[i, :len(seq)] = seq
    return token_ids, lengths


def _existing(path):
    return path if os.path.isfile(path) else None


def _read_ids(path):
    """The ids listed in ``path``, one a line (None if there is no such file)."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return frozenset(line.rstrip("\n") for line in f if line.strip())
