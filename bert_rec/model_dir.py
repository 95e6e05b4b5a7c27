"""A bert_rec model directory on disk: what it holds, how it is written and read.

A model directory (written atomically: built in a staging folder, then swapped in) holds

- ``bert_rec.json``: the ``ModelConfig`` (text, pooling, scoring settings);
- the encoder as a Google-format checkpoint (``bert_config.json``, ``vocab.txt``,
  ``bert_model.ckpt.*``), ``stopwords.txt`` and ``userdict.txt`` (if any);
- ``head.npz`` + ``head.json`` + ``item_ids.txt``: the item tower, the trained user tower (if
  any: its kind and settings in head.json), the dislike weight and the item-id vocabulary of
  the id embeddings;
- ``sentiment.npz`` + ``sentiment.json``: the sentiment head, if one was trained
  (``bert-rec train-sentiment``; see sentiment.py);
- ``item_vectors.npy`` / ``.keys`` / ``.ids``: the indexed catalogue's encoder vectors, keyed by
  (feature text, item max length, pooling), so unchanged items are not encoded again and a
  vector is never reused for another pooling or length;
- ``item_encoder.h5`` and ``user_scorer.h5``: the towers as whole Keras models
  (``tf_keras.models.load_model(path, custom_objects=bert_rec.custom_objects)``).
"""

import hashlib
import json
import os
import shutil
import warnings

import numpy as np

from .backend import custom_objects as bert4keras_objects
from .backend import keras
from .checkpoint import (BERT_CONFIG_NAME, CheckpointError, read_arrays, read_lines,
                         write_checkpoint_files)
from .config import MODEL_CONFIG_NAME, ModelConfig
from .layers import custom_objects as layer_objects
from .models import item_tower, user_tower
from .tokenization import read_vocab_tokens
from .utils.atomic import link_tree, staged_dir

HEAD_NAME = "head.npz"
HEAD_META_NAME = "head.json"
ITEM_IDS_NAME = "item_ids.txt"
ITEM_VECTORS_NAME = "item_vectors.npy"
ITEM_KEYS_NAME = "item_vectors.keys"
ITEM_VECTOR_IDS_NAME = "item_vectors.ids"
STOPWORDS_NAME = "stopwords.txt"
USER_DICT_NAME = "userdict.txt"
ITEM_ENCODER_NAME = "item_encoder.h5"
USER_SCORER_NAME = "user_scorer.h5"
custom_objects = {**bert4keras_objects, **layer_objects}


def is_model_dir(path):
    return os.path.isfile(os.path.join(path, MODEL_CONFIG_NAME))


def read_config(path):
    """The ``ModelConfig`` of a model directory or (defaults) of a Google checkpoint directory;
    a model directory's config points at its own stopword list and user dictionary."""
    if is_model_dir(path):
        config = ModelConfig.load(os.path.join(path, MODEL_CONFIG_NAME))
        return config.replace(text=_stored_text_files(path))
    if os.path.isfile(os.path.join(path, BERT_CONFIG_NAME)):
        return ModelConfig()
    raise CheckpointError(
        f"{path}: neither a bert_rec model directory ({MODEL_CONFIG_NAME}) nor a Google-format "
        f"checkpoint directory ({BERT_CONFIG_NAME}); pass one of those (see "
        f"checkpoints/README.md)")


def _stored_text_files(path):
    """Text-config changes pointing at the stopwords / user dictionary stored in ``path``."""
    changes = {}
    if os.path.isfile(os.path.join(path, STOPWORDS_NAME)):
        changes["stopwords_path"] = os.path.join(path, STOPWORDS_NAME)
    if os.path.isfile(os.path.join(path, USER_DICT_NAME)):
        changes["user_dict_path"] = os.path.join(path, USER_DICT_NAME)
    return changes


def has_head(path):
    return os.path.isfile(os.path.join(path, HEAD_NAME))


# -- the head -----------------------------------------------------------------------------------
def save_head(out_dir, towers, id_vocab):
    """Write head.npz (item tower, user tower weights, dislike weight), head.json (the user
    tower's kind and settings) and item_ids.txt."""
    tower = towers.item_tower
    arrays = {"tower_kernel": tower.kernel.numpy(), "tower_bias": tower.bias.numpy(),
              "tower_id_embeddings": tower.id_embeddings.numpy(),
              "dislike_weight": np.float32(towers.dislike_weight)}
    kind = _TOWER_KINDS.get(type(towers.interest).__name__, "weighted")
    if towers.trained:
        arrays.update({f"interest_{i}": w for i, w in enumerate(towers.interest.get_weights())})
    with open(os.path.join(out_dir, HEAD_NAME), "wb") as f:
        np.savez(f, **arrays)
    config = {k: v for k, v in towers.interest.get_config().items()
              if k in ("units", "heads")}
    with open(os.path.join(out_dir, HEAD_META_NAME), "w", encoding="utf-8") as f:
        json.dump({"user_tower": kind, "settings": config}, f, indent=2)
    with open(os.path.join(out_dir, ITEM_IDS_NAME), "w", encoding="utf-8") as f:
        f.writelines(item_id + "\n" for item_id in sorted(id_vocab, key=id_vocab.get))


_TOWER_KINDS = {"AttentionPooling": "attention", "SequenceAttentionPooling": "sequence"}


def load_head(path, default_dislike_weight=0.5):
    """(ItemTower, trained user tower or None, dislike weight, id vocab) from a model
    directory's head files."""
    head_path = os.path.join(path, HEAD_NAME)
    arrays = read_arrays(head_path)
    ids_path = os.path.join(path, ITEM_IDS_NAME)
    id_vocab = {line: i for i, line in enumerate(read_lines(ids_path)) if line.strip()}
    kernel = arrays["tower_kernel"]  # [H, D]
    if len(id_vocab) != len(arrays["tower_id_embeddings"]):
        raise ValueError(f"{ids_path} lists {len(id_vocab)} items but {head_path} has "
                         f"{len(arrays['tower_id_embeddings'])} id embeddings: the files come "
                         f"from different saves; save the model again")
    tower = item_tower(kernel.shape[0], kernel.shape[1], num_ids=len(id_vocab))
    tower.set_weights([kernel, arrays["tower_bias"], arrays["tower_id_embeddings"]])
    dislike = float(arrays.get("dislike_weight", default_dislike_weight))
    return tower, _load_user_tower(path, arrays, kernel.shape[1]), dislike, id_vocab


def _load_user_tower(path, arrays, dim):
    """The trained user tower of head.npz (None for a zero-shot head)."""
    if "attention_kernel" in arrays:  # a head written before head.json existed
        layer = user_tower("attention", dim, arrays["attention_kernel"].shape[1])
        layer.set_weights([arrays["attention_kernel"], arrays["attention_bias"],
                           arrays["attention_query"]])
        return layer
    meta_path = os.path.join(path, HEAD_META_NAME)
    if not os.path.isfile(meta_path):
        return None
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    if meta.get("user_tower", "weighted") == "weighted":
        return None
    layer = user_tower(meta["user_tower"], dim, **meta.get("settings", {}))
    weights = [arrays[f"interest_{i}"] for i in range(len(layer.get_weights()))]
    layer.set_weights(weights)
    return layer


# -- stored item vectors ----------------------------------------------------------------------
def item_vector_key(text, max_len, pooling):
    """Key of an item's stored encoder vector: SHA-1 of its feature text, length cap and pooling."""
    data = f"{pooling}\0{max_len}\0{text}".encode("utf-8", "surrogatepass")
    return hashlib.sha1(data).hexdigest()


def stored_item_vectors(path, dim):
    """{item_vector_key: encoder vector [H]} saved in a model directory ({} if none)."""
    if not path:
        return {}
    vectors_path = os.path.join(path, ITEM_VECTORS_NAME)
    keys_path = os.path.join(path, ITEM_KEYS_NAME)
    if not (os.path.isfile(vectors_path) and os.path.isfile(keys_path)):
        return {}
    hint = f"delete {ITEM_VECTORS_NAME} and {ITEM_KEYS_NAME} to re-encode the items"
    vectors = read_arrays(vectors_path, hint=hint)
    keys = [line.strip() for line in read_lines(keys_path, hint=hint)]
    if len(keys) != len(vectors) or vectors.shape[1:] != (dim,):
        raise ValueError(f"{vectors_path} does not match {keys_path} or the encoder: the "
                         f"files come from different saves; delete both to re-encode")
    return dict(zip(keys, vectors))


def stored_catalogue(path):
    """(item ids, encoder vectors [M, H]) of the catalogue saved in a model directory."""
    ids_path = os.path.join(path or "", ITEM_VECTOR_IDS_NAME)
    if not os.path.isfile(ids_path):
        raise ValueError(f"{path}: no indexed catalogue saved ({ITEM_VECTOR_IDS_NAME}); save the "
                         f"model after index_items(items), e.g. with bert-rec train")
    ids = read_lines(ids_path)
    vectors = read_arrays(os.path.join(path, ITEM_VECTORS_NAME))
    if len(ids) != len(vectors):
        raise ValueError(f"{ids_path} lists {len(ids)} items but {ITEM_VECTORS_NAME} has "
                         f"{len(vectors)} rows: the files come from different saves")
    return ids, vectors


# -- writing ------------------------------------------------------------------------------------
def save(rec, out_dir, keep=(), keras_models=True):
    """Write a Recommender as a model directory at ``out_dir``, atomically; returns its path.

    Entries of an existing ``out_dir`` named in ``keep`` are carried over. A zero-shot model
    indexed on a catalogue keeps its fitted whitening. With ``keras_models``, also writes the
    ``.h5`` files.
    """
    encoder, towers = rec.encoder, rec.towers
    with staged_dir(out_dir, keep=keep) as tmp:
        vocab = read_vocab_tokens(encoder.files.vocab_path)
        write_checkpoint_files(encoder.transformer, encoder.files.config, vocab, tmp)
        text = encoder.pipeline.config
        with open(os.path.join(tmp, STOPWORDS_NAME), "w", encoding="utf-8") as f:
            f.writelines(word + "\n" for word in sorted(encoder.pipeline.stopwords))
        if text.user_dict_path:
            shutil.copyfile(text.user_dict_path, os.path.join(tmp, USER_DICT_NAME))
        if towers is not None:
            save_head(tmp, towers, rec.id_vocab)
        if rec.sentiment is not None:
            rec.sentiment.save_head(tmp)
        if rec.catalogue is not None:
            _save_item_vectors(tmp, rec.catalogue, rec.config)
        if keras_models and towers is not None:
            save_keras_models(towers, tmp)
        rec.config.replace(text=dict(stopwords_path=None, extra_stopwords_path=None,
                                     user_dict_path=None)).save(
            os.path.join(tmp, MODEL_CONFIG_NAME))
    return os.path.abspath(out_dir)


def _save_item_vectors(directory, catalogue, config):
    """The catalogue's encoder vectors, their keys and item ids."""
    with open(os.path.join(directory, ITEM_VECTORS_NAME), "wb") as f:
        np.save(f, catalogue.raw, allow_pickle=False)
    with open(os.path.join(directory, ITEM_KEYS_NAME), "w", encoding="utf-8") as f:
        f.writelines(item_vector_key(item.full_text(), config.item_max_len, config.pooling)
                     + "\n" for item in catalogue.items)
    with open(os.path.join(directory, ITEM_VECTOR_IDS_NAME), "w", encoding="utf-8") as f:
        f.writelines(item.item_id + "\n" for item in catalogue.items)


def derive(src, out_dir, add, replaced=(), config=None):
    """Write a model directory at ``out_dir`` holding ``src`` plus what ``add(directory)`` writes.

    ``src`` is a model directory (all its files are carried over, hard-linked where possible;
    those named in ``replaced`` are left out, as ``add`` writes them anew) or a Google
    checkpoint directory (it becomes a model directory with ``config``, default settings if
    None). Atomic like every directory bert_rec writes; ``out_dir`` may be ``src`` itself.
    """
    from .text import TextPipeline  # noqa: PLC0415
    with staged_dir(out_dir) as tmp:
        os.rmdir(tmp)
        link_tree(src, tmp)
        for name in replaced:  # unlinked, never written through: they are src's files too
            if os.path.exists(os.path.join(tmp, name)):
                os.unlink(os.path.join(tmp, name))
        if not is_model_dir(src):
            config = config or ModelConfig()
            with open(os.path.join(tmp, STOPWORDS_NAME), "w", encoding="utf-8") as f:
                stopwords = TextPipeline(config.text).stopwords
                f.writelines(word + "\n" for word in sorted(stopwords))
            config.replace(text=dict(stopwords_path=None, extra_stopwords_path=None,
                                     user_dict_path=None)).save(
                os.path.join(tmp, MODEL_CONFIG_NAME))
        add(tmp)
    return os.path.abspath(out_dir)


# -- whole Keras models -------------------------------------------------------------------------
def save_keras_models(towers, directory):
    """Write item_encoder.h5 and user_scorer.h5 into ``directory`` (a staging directory)."""
    for model, name in ((towers.item_encoder, ITEM_ENCODER_NAME),
                        (towers.user_scorer, USER_SCORER_NAME)):
        with warnings.catch_warnings():  # .h5 is asked for by name: no "legacy format" notice
            warnings.filterwarnings("ignore", message="You are saving your model as an HDF5")
            model.save(os.path.join(directory, name), save_format="h5", include_optimizer=False)


def load_keras_models(model_dir):
    """(item_encoder, user_scorer) Keras models from a model directory's .h5 files."""
    models = []
    for name in (ITEM_ENCODER_NAME, USER_SCORER_NAME):
        path = os.path.join(model_dir, name)
        if not os.path.isfile(path):
            raise CheckpointError(f"{path}: missing; save the model with its Keras files "
                                  f"(bert-rec train writes them)")
        models.append(keras.models.load_model(path, custom_objects=custom_objects,
                                              compile=False))
    return tuple(models)
