"""Google-format BERT checkpoint directories: validate, load with bert4keras, create tiny ones.

A checkpoint directory holds ``bert_config.json``, ``vocab.txt`` and ``bert_model.ckpt.index`` +
``bert_model.ckpt.data-*`` (the layout of bert-base-chinese, chinese-roberta-wwm-ext, RBT3,
SimBERT, ...). ``load_bert`` is the loader users run on real checkpoints; the tiny checkpoints
the tests and demo use go through the same code.
"""

import dataclasses
import glob
import json
import os
import zipfile

import numpy as np

from .backend import build_transformer_model, reset_initializer_counter, tf, write_bert_checkpoint
from .tokenization import read_vocab_tokens, write_vocab
from .utils.atomic import staged_dir

BERT_CONFIG_NAME = "bert_config.json"
VOCAB_NAME = "vocab.txt"
CKPT_PREFIX = "bert_model.ckpt"
REQUIRED_CONFIG_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                        "intermediate_size")
WORD_EMBEDDINGS = "bert/embeddings/word_embeddings"


class CheckpointError(ValueError):
    """A checkpoint directory that can't be used; the message says what is wrong and what to do."""


@dataclasses.dataclass(frozen=True)
class CheckpointFiles:
    """Paths of one checkpoint directory, with its parsed config."""
    directory: str
    config_path: str
    vocab_path: str
    ckpt_prefix: str
    config: dict

    @property
    def hidden_size(self):
        return int(self.config["hidden_size"])

    @property
    def max_position(self):
        return int(self.config.get("max_position_embeddings", 512))


def find_checkpoint(directory):
    """Validate a Google-format checkpoint directory and return its CheckpointFiles."""
    if not os.path.isdir(directory):
        raise CheckpointError(f"{directory}: not a directory. Pass the folder that holds "
                              f"{BERT_CONFIG_NAME}, {VOCAB_NAME} and {CKPT_PREFIX}.* "
                              f"(see checkpoints/README.md)")
    config_path = os.path.join(directory, BERT_CONFIG_NAME)
    vocab_path = os.path.join(directory, VOCAB_NAME)
    for path in (config_path, vocab_path):
        if not os.path.isfile(path):
            raise CheckpointError(f"{directory}: missing {os.path.basename(path)}. A Google-format "
                                  f"BERT checkpoint has {BERT_CONFIG_NAME}, {VOCAB_NAME} and "
                                  f"{CKPT_PREFIX}.index/.data-*; copy the whole folder")
    config = _read_config(config_path)
    vocab_lines = _count_lines(vocab_path)
    if vocab_lines != int(config["vocab_size"]):
        raise CheckpointError(f"{vocab_path} has {vocab_lines} lines but {BERT_CONFIG_NAME} says "
                              f"vocab_size {config['vocab_size']}: pass the vocab that came with "
                              f"the checkpoint")
    ckpt_prefix = _find_ckpt_prefix(directory)
    _check_variables(ckpt_prefix, config)
    return CheckpointFiles(directory, config_path, vocab_path, ckpt_prefix, config)


def _count_lines(path):
    """Lines of vocab.txt; a file in another encoding is a CheckpointError."""
    try:
        return len(read_vocab_tokens(path))
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def _read_config(path):
    """Parse bert_config.json and check the keys BERT needs."""
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e}); restore the file from the "
                              f"checkpoint's archive") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object of BERT hyper-parameters")
    missing = [k for k in REQUIRED_CONFIG_KEYS if k not in config]
    if missing:
        raise CheckpointError(f"{path}: missing {', '.join(missing)}; this is not a BERT config "
                              f"(bert_rec loads BERT/RoBERTa-style Google checkpoints)")
    return config


def _find_ckpt_prefix(directory):
    """The checkpoint prefix: bert_model.ckpt, else the only *.ckpt*.index in the folder."""
    preferred = os.path.join(directory, CKPT_PREFIX)
    if os.path.isfile(preferred + ".index"):
        prefix = preferred
    else:
        indexes = sorted(glob.glob(os.path.join(directory, "*.index")))
        if len(indexes) != 1:
            found = ", ".join(os.path.basename(p) for p in indexes) or "none"
            raise CheckpointError(f"{directory}: expected one checkpoint {CKPT_PREFIX}.index, "
                                  f"found {found}; keep only the checkpoint you want to load")
        prefix = indexes[0][:-len(".index")]
    if not glob.glob(glob.escape(prefix) + ".data-*"):
        raise CheckpointError(f"{prefix}.index has no {os.path.basename(prefix)}.data-* file "
                              f"beside it: copy the data file(s) too")
    return prefix


def _check_variables(prefix, config):
    """Read the checkpoint's variable list: readable, BERT-named, shapes matching the config."""
    try:
        reader = tf.train.load_checkpoint(prefix)
        shapes = reader.get_variable_to_shape_map()
        dtypes = reader.get_variable_to_dtype_map()
    except (tf.errors.OpError, ValueError) as e:
        raise CheckpointError(f"{prefix}: cannot read the checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0]}); the files may be truncated: copy them "
                              f"again") from None
    if WORD_EMBEDDINGS not in shapes:
        raise CheckpointError(f"{prefix}: no variable {WORD_EMBEDDINGS}; this is not a BERT "
                              f"checkpoint in Google's format")
    needed = sum(int(np.prod(shape)) * dtypes[name].size for name, shape in shapes.items())
    stored = sum(os.path.getsize(p) for p in glob.glob(glob.escape(prefix) + ".data-*"))
    if stored < needed:
        raise CheckpointError(f"{prefix}.data-*: {stored} bytes on disk but the index lists "
                              f"{needed} bytes of weights; the file is truncated (an interrupted "
                              f"download or copy?): copy it again")
    expected = [int(config["vocab_size"]), int(config["hidden_size"])]
    if list(shapes[WORD_EMBEDDINGS]) != expected:
        raise CheckpointError(f"{prefix}: {WORD_EMBEDDINGS} has shape {shapes[WORD_EMBEDDINGS]} "
                              f"but {BERT_CONFIG_NAME} implies {expected}: the config and the "
                              f"weights come from different models")
    layers = len({name.split("/")[2] for name in shapes if name.startswith("bert/encoder/layer_")})
    if layers != int(config["num_hidden_layers"]):
        raise CheckpointError(f"{prefix}: the checkpoint has {layers} transformer layers but "
                              f"{BERT_CONFIG_NAME} says num_hidden_layers "
                              f"{config['num_hidden_layers']}: the config and the weights come "
                              f"from different models")


def has_variable(prefix, name):
    """Whether the checkpoint at ``prefix`` holds variable ``name``."""
    return name in dict(tf.train.list_variables(prefix))


def load_bert(files, with_pool=False, with_mlm=False, with_nsp=False, load_weights=True,
              return_keras_model=True, **overrides):
    """Build bert4keras's BERT from a CheckpointFiles and load its weights.

    ``with_pool`` adds the pooler (needed for ``pooling='pooler'`` and the NSP head),
    ``with_mlm`` the masked-LM head (the checkpoint must hold cls/predictions/*).
    """
    if with_mlm and load_weights and not has_variable(files.ckpt_prefix,
                                                      "cls/predictions/output_bias"):
        raise CheckpointError(f"{files.ckpt_prefix}: has no masked-LM head (cls/predictions/*), "
                              f"so it can't be loaded with_mlm; use a checkpoint saved with "
                              f"its pretraining heads (e.g. from bert-rec pretrain)")
    configs = {**files.config, **overrides}
    try:
        return build_transformer_model(
            checkpoint_path=files.ckpt_prefix if load_weights else None,
            with_pool=with_pool or with_nsp, with_nsp=with_nsp, with_mlm=with_mlm,
            return_keras_model=return_keras_model, **configs)
    except (tf.errors.OpError, ValueError) as e:
        if isinstance(e, CheckpointError):
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{files.ckpt_prefix}: cannot load the weights ({first}); the "
                              f"files are damaged or do not match {BERT_CONFIG_NAME}: copy the "
                              f"checkpoint again") from None


def bert_config(vocab_size, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=None, max_position_embeddings=128):
    """A bert_config.json dict in Google's format."""
    return {
        "attention_probs_dropout_prob": 0.1,
        "directionality": "bidi",
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size or 4 * hidden_size,
        "max_position_embeddings": max_position_embeddings,
        "num_attention_heads": num_attention_heads,
        "num_hidden_layers": num_hidden_layers,
        "type_vocab_size": 2,
        "vocab_size": vocab_size,
    }


def write_checkpoint_files(transformer, config, vocab_tokens, directory):
    """Write bert_config.json, vocab.txt and bert_model.ckpt.* into an existing directory."""
    if len(vocab_tokens) != config["vocab_size"]:
        raise ValueError(f"{len(vocab_tokens)} vocab tokens but vocab_size {config['vocab_size']}")
    with open(os.path.join(directory, BERT_CONFIG_NAME), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2, sort_keys=True)
        f.write("\n")
    write_vocab(vocab_tokens, os.path.join(directory, VOCAB_NAME))
    write_bert_checkpoint(transformer, os.path.join(directory, CKPT_PREFIX))


MODEL_FILE_HINT = "the model directory is damaged or incomplete: save or train the model again"


def read_arrays(path, hint=MODEL_FILE_HINT):
    """{name: array} from an .npz (or the array of an .npy) file, never unpickling anything.

    A missing, truncated or foreign file is a one-line CheckpointError naming it.
    """
    try:
        with open(path, "rb") as f:
            data = np.load(f, allow_pickle=False)
            if isinstance(data, np.ndarray):
                return data
            with data:
                return {name: data[name] for name in data.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        reason = str(e).splitlines()[0] if str(e).strip() else type(e).__name__
        if isinstance(e, FileNotFoundError):
            reason = "missing"
        elif "pickle" in reason:
            reason = "it holds pickled Python objects, which bert_rec never loads"
        raise CheckpointError(f"{path}: cannot read ({reason}); {hint}") from None


def read_lines(path, hint=MODEL_FILE_HINT):
    """The lines (without line ends) of a UTF-8 text file of a model directory."""
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\r\n") for line in f]
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing; {hint}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read ({e}); {hint}") from None


def save_checkpoint(transformer, config, vocab_tokens, out_dir):
    """Write a bert4keras Transformer as a Google-format checkpoint directory, atomically.

    Files go to a temporary sibling folder that is renamed over ``out_dir`` at the end, so an
    interrupted write never leaves a half-written checkpoint where the old one was.
    """
    with staged_dir(out_dir) as tmp:
        write_checkpoint_files(transformer, config, vocab_tokens, tmp)
    return os.path.abspath(out_dir)


def create_random_checkpoint(out_dir, vocab_tokens, seed=0, with_heads=True, **config_kwargs):
    """A randomly initialised BERT (MLM + NSP heads by default) written as a checkpoint dir."""
    config = bert_config(len(vocab_tokens), **config_kwargs)
    tf.random.set_seed(seed)
    reset_initializer_counter()
    transformer = build_transformer_model(
        with_pool=with_heads, with_nsp=with_heads, with_mlm=with_heads,
        return_keras_model=False, **config)
    return save_checkpoint(transformer, config, vocab_tokens, out_dir)
