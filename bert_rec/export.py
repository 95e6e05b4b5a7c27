"""Whole Keras models beside a model directory, and SavedModel exports for TensorFlow Serving.

Keras files (written by ``Recommender.save``; load with
``tf_keras.models.load_model(path, custom_objects=bert_rec.custom_objects)``):

- ``item_encoder.h5``: ``token_ids [B, L], segment_ids [B, L], id_rows [B] -> item vector [B, D]``
  (BERT + pooling + item tower; ``id_rows`` = the item's row in ``item_ids.txt``, or its length
  for an item without an id embedding);
- ``user_scorer.h5``: ``unit_vectors [B, N, D], unit_weights [B, N], candidates [B, C, D] ->
  cosine scores [B, C]`` (interest pooling + cosine).

SavedModel for TF Serving (``bert-rec export``): ``EXPORT_DIR/<name>/<version>/`` with explicit
signatures that use only core TensorFlow ops (``ServingModule``), the item index inside, and the
preprocessing assets (vocab, stopwords, user dictionary, bert_rec.json) in ``assets/``.
"""

import json
import os
import shutil
import tempfile
import warnings

import numpy as np

from .backend import custom_objects as bert4keras_objects
from .backend import keras, tf
from .atomic import replace_dir, staging_dir, write_text
from .config import CONFIG_NAME
from .layers import custom_objects as layer_objects
from .recommend import Recommender

ITEM_ENCODER_NAME = "item_encoder.h5"
USER_SCORER_NAME = "user_scorer.h5"
custom_objects = {**bert4keras_objects, **layer_objects}

# Names of the SavedModel's signature inputs (fixed: clients and bert_rec.serving use them).
USER_INPUTS = ("behavior_token_ids", "behavior_item_ids", "behavior_weights")


# -- Keras model files ---------------------------------------------------------------------------
def build_keras_models(rec):
    """(item_encoder, user_scorer) functional Keras models sharing the recommender's layers."""
    token_ids = keras.Input((None,), dtype="int32", name="token_ids")
    segment_ids = keras.Input((None,), dtype="int32", name="segment_ids")
    id_rows = keras.Input((), dtype="int32", name="id_rows")
    raw = rec.encoder.model([token_ids, segment_ids])  # [B, H]
    item_vector = rec.tower([raw, id_rows])  # [B, D]
    item_encoder = keras.Model([token_ids, segment_ids, id_rows], item_vector,
                               name="item_encoder")
    dim = rec.tower.output_dim
    unit_vectors = keras.Input((None, dim), name="unit_vectors")
    unit_weights = keras.Input((None,), name="unit_weights")
    candidates = keras.Input((None, dim), name="candidates")
    interest = rec.pooling([unit_vectors, unit_weights])  # [B, D]
    scores = rec.cosine([interest, candidates])  # [B, C]
    user_scorer = keras.Model([unit_vectors, unit_weights, candidates], scores,
                              name="user_scorer")
    return item_encoder, user_scorer


def save_keras_models(rec, directory):
    """Write item_encoder.h5 and user_scorer.h5 into ``directory`` (a staging directory)."""
    for model in build_keras_models(rec):
        name = ITEM_ENCODER_NAME if model.name == "item_encoder" else USER_SCORER_NAME
        with warnings.catch_warnings():  # .h5 is asked for by name: no "legacy format" notice
            warnings.filterwarnings("ignore", message="You are saving your model as an HDF5")
            model.save(os.path.join(directory, name), save_format="h5", include_optimizer=False)


def load_keras_models(model_dir):
    """(item_encoder, user_scorer) from a model directory's .h5 files."""
    return tuple(keras.models.load_model(os.path.join(model_dir, name),
                                         custom_objects=custom_objects, compile=False)
                 for name in (ITEM_ENCODER_NAME, USER_SCORER_NAME))


# -- SavedModel ---------------------------------------------------------------------------------
class ServingModule(tf.Module):
    """The model and its item index as tf.functions with explicit, core-op-only signatures.

    User inputs, for B users with N behaviour units of L tokens each (see bert_rec.serving):
    ``behavior_token_ids`` int32 [B, N, L] (token ids of each unit's text; ignored for units
    whose item is in the index), ``behavior_item_ids`` string [B, N] (the unit's item id, ""
    for a behaviour text or padding), ``behavior_weights`` float32 [B, N] (0 = padding).
    """

    def __init__(self, rec, item_ids, item_vectors):
        super().__init__(name="bert_rec")
        encoder, tower, pooling, cosine = rec.encoder.model, rec.tower, rec.pooling, rec.cosine
        # Variables are tracked explicitly; the Keras objects stay out of the object graph so
        # the export holds plain TF functions only.
        self.encoder_variables = list(encoder.variables)
        self.head_variables = list(tower.variables) + list(pooling.variables)
        self.item_ids = tf.constant(item_ids, tf.string)  # [M]
        self.item_vectors = tf.Variable(item_vectors, trainable=False, name="item_vectors")
        self.item_rows = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(self.item_ids, tf.range(len(item_ids))), -1)
        num_ids = tower.num_ids

        def encode(token_ids):
            """[K, L] token ids -> [K, D] vectors without id embeddings."""
            raw = encoder([token_ids, tf.zeros_like(token_ids)], training=False)  # [K, H]
            return tower([raw, tf.fill(tf.shape(token_ids)[:1], num_ids)])

        def units(token_ids, unit_item_ids, weights):
            """Unit vectors [B, N, D]: the index's vector for known items, else the encoder's."""
            shape = tf.shape(unit_item_ids)  # [B, N]
            rows = tf.reshape(self.item_rows.lookup(unit_item_ids), [-1])  # [B*N]
            flat_tokens = tf.reshape(token_ids, tf.stack([-1, tf.shape(token_ids)[2]]))
            need = tf.where((rows < 0) & (tf.reshape(weights, [-1]) > 0))[:, 0]  # [K]
            encoded = encode(tf.gather(flat_tokens, need))  # [K, D]
            known = tf.gather(self.item_vectors, tf.maximum(rows, 0))  # [B*N, D]
            vectors = tf.tensor_scatter_nd_update(known, need[:, None], encoded)
            return tf.reshape(vectors, tf.concat([shape, [-1]], axis=0))  # [B, N, D]

        def interest(token_ids, unit_item_ids, weights):
            return pooling([units(token_ids, unit_item_ids, weights), weights])  # [B, D]

        def all_scores(token_ids, unit_item_ids, weights):
            return cosine([interest(token_ids, unit_item_ids, weights), self.item_vectors])

        user_spec = [tf.TensorSpec([None, None, None], tf.int32, name="behavior_token_ids"),
                     tf.TensorSpec([None, None], tf.string, name="behavior_item_ids"),
                     tf.TensorSpec([None, None], tf.float32, name="behavior_weights")]

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32, name="token_ids"),
                                      tf.TensorSpec([None, None], tf.int32, name="segment_ids")])
        def item_vector(token_ids, segment_ids):
            raw = encoder([token_ids, segment_ids], training=False)
            return {"vector": tower([raw, tf.fill(tf.shape(token_ids)[:1], num_ids)])}

        @tf.function(input_signature=user_spec)
        def user_vector(behavior_token_ids, behavior_item_ids, behavior_weights):
            return {"interest": interest(behavior_token_ids, behavior_item_ids, behavior_weights)}

        @tf.function(input_signature=user_spec + [
            tf.TensorSpec([None, None], tf.string, name="candidate_item_ids")])
        def score(behavior_token_ids, behavior_item_ids, behavior_weights, candidate_item_ids):
            u = interest(behavior_token_ids, behavior_item_ids, behavior_weights)  # [B, D]
            rows = self.item_rows.lookup(candidate_item_ids)  # [B, C]
            candidates = tf.gather(self.item_vectors, tf.maximum(rows, 0))  # [B, C, D]
            scores = cosine([u, candidates])  # [B, C]
            return {"scores": tf.where(rows >= 0, scores, -np.inf)}  # unknown ids: -inf

        @tf.function(input_signature=user_spec + [
            tf.TensorSpec([None, None], tf.string, name="exclude_item_ids"),
            tf.TensorSpec([], tf.int32, name="k")])
        def recommend(behavior_token_ids, behavior_item_ids, behavior_weights, exclude_item_ids,
                      k):
            scores = all_scores(behavior_token_ids, behavior_item_ids, behavior_weights)  # [B, M]
            rows = self.item_rows.lookup(exclude_item_ids)  # [B, E]
            users = tf.broadcast_to(tf.range(tf.shape(rows)[0])[:, None], tf.shape(rows))
            hits = tf.cast(tf.where(rows >= 0), tf.int32)  # [H, 2] (user, position)
            index = tf.stack([tf.gather_nd(users, hits), tf.gather_nd(rows, hits)], axis=1)
            excluded = tf.scatter_nd(index, tf.ones(tf.shape(index)[:1]), tf.shape(scores))
            scores = tf.where(excluded > 0, -np.inf, scores)
            top = tf.math.top_k(scores, k=tf.minimum(k, tf.shape(scores)[1]))
            return {"item_ids": tf.gather(self.item_ids, top.indices), "scores": top.values}

        self.item_vector = item_vector
        self.user_vector = user_vector
        self.score = score
        self.recommend = recommend

    def signatures(self):
        return {"serving_default": self.recommend, "recommend": self.recommend,
                "item_vector": self.item_vector, "user_vector": self.user_vector,
                "score": self.score}


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


def export(model_dir, export_dir, name="bert_rec", version=None):
    """Write ``EXPORT_DIR/<name>/<version>/`` (SavedModel + assets), models.config and README.

    The item index is the catalogue stored in the model directory. Returns the version path.
    """
    rec = Recommender.load(model_dir)
    ids, raw = rec.stored_catalogue()
    if rec.tower is None:
        raise ValueError(f"{model_dir}: no item tower saved (head.npz); save the model after "
                         f"index_items, e.g. with bert-rec train")
    id_rows = [rec.id_vocab.get(item_id, rec.tower.num_ids) for item_id in ids]
    vectors = rec.project(raw, id_rows)  # [M, D]
    base = os.path.join(export_dir, name)
    os.makedirs(base, exist_ok=True)
    if version is None:
        existing = [int(v) for v in os.listdir(base) if v.isdigit()]
        version = max(existing, default=0) + 1
    target = os.path.join(base, str(version))
    staged = staging_dir(target)
    try:
        with tempfile.TemporaryDirectory() as sources:
            module = ServingModule(rec, ids, vectors)
            module.assets = [tf.saved_model.Asset(p) for p in _asset_files(model_dir, sources)]
            tf.saved_model.save(module, staged, signatures=module.signatures())
        replace_dir(staged, target)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise
    write_text(os.path.join(export_dir, "models.config"), _models_config(export_dir, name))
    write_text(os.path.join(export_dir, "README.md"), _readme(name, version))
    return target


def _asset_files(model_dir, src):
    """Copy the preprocessing files into the folder ``src`` and return their paths."""
    paths = []
    for name in (CONFIG_NAME, "vocab.txt", "stopwords.txt", "userdict.txt", "bert_config.json"):
        path = os.path.join(model_dir, name)
        if os.path.isfile(path):
            shutil.copyfile(path, os.path.join(src, name))
            paths.append(os.path.join(src, name))
    return paths


def _models_config(export_dir, name):
    """models.config (text protobuf) for ``tensorflow_model_server --model_config_file``."""
    return ("model_config_list {\n  config {\n"
            f"    name: {json.dumps(name)}\n"
            f"    base_path: {json.dumps('/models/' + name)}\n"
            "    model_platform: \"tensorflow\"\n  }\n}\n")


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
| serving_default = recommend | behavior_token_ids [B,N,L] int32, behavior_item_ids [B,N] string, behavior_weights [B,N] float32, exclude_item_ids [B,E] string, k [] int32 | item_ids [B,k] string, scores [B,k] float32 |
| user_vector | the three behavior_* inputs | interest [B,D] |
| score | the three behavior_* inputs, candidate_item_ids [B,C] string | scores [B,C] (-inf for unknown ids) |
| item_vector | token_ids [B,L] int32, segment_ids [B,L] int32 | vector [B,D] |

Build a request body for one user with

    bert-rec request --export . --items items.jsonl --behaviors behaviors.jsonl --user ID -k 10 \\
        | curl -d @- http://localhost:8501/v1/models/{name}:predict
"""
