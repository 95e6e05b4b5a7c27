"""SavedModel exports for TensorFlow Serving (``bert-rec export``).

``EXPORT_DIR/<name>/<version>/`` holds a SavedModel with explicit signatures that use only core
TensorFlow ops (``ServingModule``), the item index inside, and the preprocessing assets (vocab,
stopwords, user dictionary, bert_rec.json) in ``assets/``; ``EXPORT_DIR/models.config`` lists
every model exported into the folder, for ``tensorflow_model_server --model_config_file``.
The signatures call the model's own towers (``models.build_towers``), the same Keras models
``bert-rec recommend`` scores with.
"""

import json
import os
import shutil
import tempfile

import numpy as np

from . import model_dir
from .backend import tf
from .config import MODEL_CONFIG_NAME
from .recommend import Recommender
from .serving import PAD_SCORE
from .utils.atomic import staged_dir, write_text

# Names of the SavedModel's signature inputs (fixed: clients and bert_rec.serving use them).
USER_INPUTS = ("behavior_token_ids", "behavior_item_ids", "behavior_weights",
               "behavior_features")
USER_SPEC = [tf.TensorSpec([None, None, None], tf.int32, name="behavior_token_ids"),
             tf.TensorSpec([None, None], tf.string, name="behavior_item_ids"),
             tf.TensorSpec([None, None], tf.float32, name="behavior_weights"),
             tf.TensorSpec([None, None, 3], tf.int32, name="behavior_features")]
TOKEN_SPEC = [tf.TensorSpec([None, None], tf.int32, name="token_ids"),
              tf.TensorSpec([None, None], tf.int32, name="segment_ids")]


class ServingModule(tf.Module):
    """The model and its item index as tf.functions with explicit, core-op-only signatures.

    User inputs, for B users with N behaviour units of L tokens each (see bert_rec.serving):
    ``behavior_token_ids`` int32 [B, N, L] (token ids of each unit's text; ignored for units
    whose item is in the index), ``behavior_item_ids`` string [B, N] (the unit's item id, ""
    for a behaviour text or padding), ``behavior_weights`` float32 [B, N] (signed: negative
    for a disliked behaviour; 0 = padding), ``behavior_features`` int32 [B, N, 3] (kind, age
    and gap buckets: units.py; read by the sequence tower). With a sentiment head the module
    also has a ``sentiment`` signature (token ids -> P(positive)), which a client uses to sign
    behaviour texts before the request.
    """

    def __init__(self, towers, item_ids, item_vectors, sentiment=None):
        super().__init__(name="bert_rec")
        # Variables are tracked explicitly; the Keras objects stay out of the object graph (set
        # around tf.Module's tracking) so the export holds plain TF functions only.
        object.__setattr__(self, "_towers", towers)
        object.__setattr__(self, "_sentiment", sentiment)
        self.model_variables = (list(towers.item_encoder.variables)
                                + list(towers.interest.variables)
                                + list(towers.scorer.variables))
        if sentiment is not None:
            self.sentiment_variables = list(sentiment.model.variables)
            self.sentiment = tf.function(self._sentiment_signature, input_signature=TOKEN_SPEC)
        self.item_ids = tf.constant(item_ids, tf.string)  # [M]
        self.item_vectors = tf.Variable(item_vectors, trainable=False, name="item_vectors")
        self.item_rows = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(self.item_ids, tf.range(len(item_ids))), -1)
        self.item_vector = tf.function(self._item_vector, input_signature=TOKEN_SPEC)
        self.user_vector = tf.function(self._user_vector, input_signature=USER_SPEC)
        self.score = tf.function(self._score, input_signature=USER_SPEC + [
            tf.TensorSpec([None, None], tf.string, name="candidate_item_ids")])
        self.recommend = tf.function(self._recommend, input_signature=USER_SPEC + [
            tf.TensorSpec([None, None], tf.string, name="exclude_item_ids"),
            tf.TensorSpec([], tf.int32, name="k")])

    @property
    def towers(self):
        return self._towers

    def signatures(self):
        found = {"serving_default": self.recommend, "recommend": self.recommend,
                 "item_vector": self.item_vector, "user_vector": self.user_vector,
                 "score": self.score}
        if self._sentiment is not None:
            found["sentiment"] = self.sentiment
        return found

    # -- building blocks ------------------------------------------------------------------------
    def _encode(self, token_ids, segment_ids):
        """[K, L] token ids -> [K, D] item vectors without id embeddings (new items, texts)."""
        no_id = tf.fill(tf.shape(token_ids)[:1], self.towers.num_ids)
        return self.towers.item_encoder([token_ids, segment_ids, no_id], training=False)

    def _sentiment_signature(self, token_ids, segment_ids):
        logits = self._sentiment.model([token_ids, segment_ids], training=False)  # [B, 2]
        return {"positive": tf.nn.softmax(logits)[:, 1]}

    def _units(self, token_ids, unit_item_ids, weights):
        """Unit vectors [B, N, D]: the index's vector for known items, else the encoder's."""
        shape = tf.shape(unit_item_ids)  # [B, N]
        rows = tf.reshape(self.item_rows.lookup(unit_item_ids), [-1])  # [B*N]
        flat_tokens = tf.reshape(token_ids, tf.stack([-1, tf.shape(token_ids)[2]]))
        need = tf.where((rows < 0) & (tf.reshape(weights, [-1]) > 0))[:, 0]  # [K]
        needed = tf.gather(flat_tokens, need)
        encoded = self._encode(needed, tf.zeros_like(needed))  # [K, D]
        known = tf.gather(self.item_vectors, tf.maximum(rows, 0))  # [B*N, D]
        vectors = tf.tensor_scatter_nd_update(known, need[:, None], encoded)
        return tf.reshape(vectors, tf.concat([shape, [-1]], axis=0))  # [B, N, D]

    def _profile(self, token_ids, unit_item_ids, weights, features):
        units = self._units(token_ids, unit_item_ids, weights)
        profile, _ = self.towers.user_encoder([units, weights, features], training=False)
        return profile  # [B, 2, D]

    # -- signatures -----------------------------------------------------------------------------
    def _item_vector(self, token_ids, segment_ids):
        return {"vector": self._encode(token_ids, segment_ids)}

    def _user_vector(self, behavior_token_ids, behavior_item_ids, behavior_weights,
                     behavior_features):
        profile = self._profile(behavior_token_ids, behavior_item_ids, behavior_weights,
                                behavior_features)
        return {"interest": profile[:, 0], "dislike": profile[:, 1],
                "query": self.towers.scorer.query(profile)}

    def _score(self, behavior_token_ids, behavior_item_ids, behavior_weights, behavior_features,
               candidate_item_ids):
        profile = self._profile(behavior_token_ids, behavior_item_ids, behavior_weights,
                                behavior_features)  # [B, 2, D]
        rows = self.item_rows.lookup(candidate_item_ids)  # [B, C]
        candidates = tf.gather(self.item_vectors, tf.maximum(rows, 0))  # [B, C, D]
        scores = self.towers.scorer([profile, candidates])  # [B, C]
        return {"scores": tf.where(rows >= 0, scores, PAD_SCORE)}  # unknown ids: finite sentinel

    def _recommend(self, behavior_token_ids, behavior_item_ids, behavior_weights,
                   behavior_features, exclude_item_ids, k):
        profile = self._profile(behavior_token_ids, behavior_item_ids, behavior_weights,
                                behavior_features)  # [B, 2, D]
        scores = self.towers.scorer([profile, self.item_vectors])  # [B, M]
        rows = self.item_rows.lookup(exclude_item_ids)  # [B, E]
        users = tf.broadcast_to(tf.range(tf.shape(rows)[0])[:, None], tf.shape(rows))
        hits = tf.cast(tf.where(rows >= 0), tf.int32)  # [H, 2] (user, position)
        index = tf.stack([tf.gather_nd(users, hits), tf.gather_nd(rows, hits)], axis=1)
        excluded = tf.scatter_nd(index, tf.ones(tf.shape(index)[:1]), tf.shape(scores))
        scores = tf.where(excluded > 0, -np.inf, scores)
        top = tf.math.top_k(scores, k=tf.minimum(k, tf.shape(scores)[1]))
        # Fewer than k unseen items: the tail is padded with "" and a finite sentinel (-inf is
        # not JSON), and num_valid [B] counts the real results.
        valid = top.values > -np.inf  # [B, k]
        return {"item_ids": tf.where(valid, tf.gather(self.item_ids, top.indices), ""),
                "scores": tf.where(valid, top.values, PAD_SCORE),
                "num_valid": tf.reduce_sum(tf.cast(valid, tf.int32), axis=1)}


def export(model_path, export_dir, name="bert_rec", version=None):
    """Write ``EXPORT_DIR/<name>/<version>/`` (SavedModel + assets), models.config and README.

    The item index is the catalogue stored in the model directory. Returns the version path.
    """
    rec = Recommender.load(model_path)
    if rec.towers is None:
        raise ValueError(f"{model_path}: no item tower saved (head.npz); save the model after "
                         f"index_items, e.g. with bert-rec train")
    ids, raw = model_dir.stored_catalogue(model_path)
    vectors = rec.towers.project(raw, [rec.id_vocab.get(i, rec.towers.num_ids) for i in ids])
    base = os.path.join(export_dir, name)
    os.makedirs(base, exist_ok=True)
    if version is None:
        existing = [int(v) for v in os.listdir(base) if v.isdigit()]
        version = max(existing, default=0) + 1
    target = os.path.join(base, str(version))
    with staged_dir(target) as staged, tempfile.TemporaryDirectory() as sources:
        module = ServingModule(rec.towers, ids, vectors, rec.sentiment)
        module.assets = [tf.saved_model.Asset(p) for p in _asset_files(model_path, sources)]
        tf.saved_model.save(module, staged, signatures=module.signatures())
    write_text(os.path.join(export_dir, "models.config"), models_config(export_dir))
    write_text(os.path.join(export_dir, "README.md"), _readme(name, version))
    return target


def _asset_files(model_path, src):
    """Copy the preprocessing files into the folder ``src`` and return their paths."""
    paths = []
    for name in (MODEL_CONFIG_NAME, "vocab.txt", model_dir.STOPWORDS_NAME,
                 model_dir.USER_DICT_NAME, "bert_config.json", "sentiment.json",
                 model_dir.ITEM_VECTOR_IDS_NAME):  # the index's ids: clients send ids only
        path = os.path.join(model_path, name)
        if os.path.isfile(path):
            shutil.copyfile(path, os.path.join(src, name))
            paths.append(os.path.join(src, name))
    return paths


def exported_models(export_dir):
    """Names of the model folders in ``export_dir`` that hold a numbered SavedModel version."""
    names = []
    for name in sorted(os.listdir(export_dir)):
        base = os.path.join(export_dir, name)
        if name.startswith(".") or not os.path.isdir(base):
            continue
        if any(v.isdigit() and os.path.isfile(os.path.join(base, v, "saved_model.pb"))
               for v in os.listdir(base)):
            names.append(name)
    return names


def models_config(export_dir):
    """models.config (text protobuf) listing every model exported into ``export_dir``, for
    ``tensorflow_model_server --model_config_file``."""
    entries = "".join("  config {\n"
                      f"    name: {json.dumps(name)}\n"
                      f"    base_path: {json.dumps('/models/' + name)}\n"
                      "    model_platform: \"tensorflow\"\n  }\n"
                      for name in exported_models(export_dir))
    return "model_config_list {\n" + entries + "}\n"


def _readme(name, version):
    return f"""# {name}: a bert_rec export for TensorFlow Serving

`{name}/{version}/` is a SavedModel; `{name}/<version>/assets/` holds the preprocessing files
(vocab.txt, stopwords.txt, bert_rec.json, ...) that `bert_rec.serving` uses to build requests.

Serve it with the stock image (from this folder):

    docker run -p 8501:8501 -p 8500:8500 -v "$PWD/{name}:/models/{name}" \\
        -e MODEL_NAME={name} tensorflow/serving

or with every model listed in models.config:

    docker run -p 8501:8501 -v "$PWD:/models" tensorflow/serving \\
        --model_config_file=/models/models.config

Signatures (all inputs int32 / float32 / string tensors, core TensorFlow ops only):

| signature | inputs | outputs |
|---|---|---|
| serving_default = recommend | behavior_token_ids [B,N,L] int32, behavior_item_ids [B,N] string, behavior_weights [B,N] float32 (signed: < 0 for disliked), behavior_features [B,N,3] int32, exclude_item_ids [B,E] string, k [] int32 | item_ids [B,k] string, scores [B,k] float32, num_valid [B] int32 |
| user_vector | the four behavior_* inputs | interest [B,D], dislike [B,D], query [B,D] |
| score | the four behavior_* inputs, candidate_item_ids [B,C] string | scores [B,C] ({PAD_SCORE:g} for unknown ids) |
| item_vector | token_ids [B,L] int32, segment_ids [B,L] int32 | vector [B,D] |
| sentiment (with a sentiment head) | token_ids [B,L] int32, segment_ids [B,L] int32 | positive [B] |

A user with fewer than k unseen items gets num_valid < k: the tail of item_ids is "" and of
scores {PAD_SCORE:g} (cosine scores lie in [-1, 1]; -inf would not be valid JSON).
Units whose item is in the index (assets/item_vectors.ids) need no token ids (send zeros).

Build a request body for some users (all without --user; --items only needed for items the
export lacks) with

    bert-rec request --export . --behaviors behaviors.jsonl --user ID ... -k 10 \\
        | curl -d @- http://localhost:8501/v1/models/{name}:predict
"""
