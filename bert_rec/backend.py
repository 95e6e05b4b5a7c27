"""The one module that acts at import time: Keras backend selection and bert4keras fixes.

bert4keras 0.11.5 was written for Keras 2.3 / TF 2.2-2.3. On TensorFlow 2.21 it needs the Keras 2
API (the ``tf_keras`` package) and four small fixes. Every other bert_rec module that touches
TensorFlow imports ``keras``, ``K`` and the bert4keras entry points from here, so the fixes are
applied exactly once and in one visible place.

Fixes (each has a test in tests/test_backend.py that fails without it):

1. Backend selection. ``TF_KERAS=1`` makes bert4keras use ``tf.keras``; ``TF_USE_LEGACY_KERAS=1``
   makes ``tf.keras`` mean ``tf_keras`` (Keras 2). bert4keras also puts ``tf.keras`` into
   ``sys.modules['keras']`` for good; we hand it ``tf_keras`` explicitly and restore whatever
   the user had (e.g. Keras 3) afterwards, so importing bert_rec works whatever was imported first.
2. Optimizers. ``bert4keras.optimizers`` subclasses the new Keras optimizer but calls the old
   ``_set_hyper`` API: it is imported with ``keras.optimizers.Optimizer`` pointing at the legacy
   class, and only during that import.
3. Random initialisation. bert4keras shares one unseeded ``TruncatedNormal`` instance between the
   Q/K/V/output kernels of an attention layer, and tf_keras returns identical values from repeated
   calls of an unseeded initializer, so all four kernels came out equal. ``SeededTruncatedNormal``
   draws a fresh seed per call from a counter, deterministic under ``tf.random.set_seed``.
4. Saving. ``save_weights_as_checkpoint`` needs a TF1 session and fails; ``write_bert_checkpoint``
   writes the same Google-named variables with ``tf.compat.v1.train.Saver`` in graph mode. The
   FeedForward layer stored its gelu activation as a function object that ``.h5`` loading can't
   read; its config now stores the registered name ``"gelu"``.
"""

import importlib
import itertools
import os
import sys
import warnings

os.environ["TF_KERAS"] = "1"
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402


def _import_bert4keras():
    """Import bert4keras against tf_keras, leaving sys.modules['keras'] as the user had it."""
    saved = {name: mod for name, mod in sys.modules.items()
             if name == "keras" or name.startswith("keras.")}
    had_tf_keras = "keras" in tf.__dict__
    old_tf_keras = tf.__dict__.get("keras")
    try:
        # bert4keras does `sys.modules['keras'] = tf.keras; import keras.backend`: make both
        # resolve to tf_keras even if tf.keras was already bound to Keras 3.
        setattr(tf, "keras", keras)
        for name in saved:
            del sys.modules[name]
        sys.modules["keras"] = keras
        sys.modules["keras.backend"] = keras.backend
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # distutils.util.strtobool
            b4k_backend = importlib.import_module("bert4keras.backend")
            importlib.import_module("bert4keras.layers")
            importlib.import_module("bert4keras.models")
            importlib.import_module("bert4keras.tokenizers")
            legacy = keras.optimizers.Optimizer
            keras.optimizers.Optimizer = keras.optimizers.legacy.Optimizer  # fix 2
            try:
                importlib.import_module("bert4keras.optimizers")
            finally:
                keras.optimizers.Optimizer = legacy
    finally:
        for name in [n for n in sys.modules if n == "keras" or n.startswith("keras.")]:
            del sys.modules[name]
        sys.modules.update(saved)
        if had_tf_keras:
            setattr(tf, "keras", old_tf_keras)
        else:
            delattr(tf, "keras")
    return b4k_backend


_b4k_backend = _import_bert4keras()
if _b4k_backend.keras is not keras:
    raise ImportError("bert4keras did not pick up tf_keras: import bert_rec (or bert_rec.backend) "
                      "before bert4keras, and install tf-keras==2.21.0 (requirements-nodeps.txt)")
K = keras.backend

from bert4keras import layers as b4k_layers  # noqa: E402
from bert4keras import models as b4k_models  # noqa: E402
from bert4keras.models import build_transformer_model  # noqa: E402,F401
from bert4keras.tokenizers import Tokenizer  # noqa: E402,F401


# --- fix 3: a fresh, reproducible seed for every initializer call --------------------------
_init_calls = itertools.count()


@keras.utils.register_keras_serializable(package="bert_rec")
class SeededTruncatedNormal(keras.initializers.Initializer):
    """TruncatedNormal(stddev) whose every call gets its own seed (global seed + call counter)."""

    def __init__(self, stddev=0.02, seed=None):
        self.stddev = stddev
        self.seed = seed

    def __call__(self, shape, dtype=None, **kwargs):
        call = next(_init_calls)
        base = self.seed
        if base is None:
            global_seed, _ = tf.compat.v1.random.get_seed(None)
            base = global_seed if global_seed is not None else np.random.randint(2**31 - 1)
        seed = (int(base) * 1_000_003 + call) % (2**31 - 1)
        return keras.initializers.TruncatedNormal(stddev=self.stddev, seed=seed)(
            shape, dtype=dtype or K.floatx())

    def get_config(self):
        return {"stddev": self.stddev, "seed": self.seed}


def reset_initializer_counter():
    """Restart the per-call seed counter (with tf.random.set_seed, rebuilds give equal weights)."""
    global _init_calls
    _init_calls = itertools.count()


b4k_models.Transformer.initializer = property(lambda self: SeededTruncatedNormal(stddev=0.02))


# --- fix 4a: FeedForward stores its activation by registered name -------------------------
def _feedforward_get_config(self):
    config = _original_ff_get_config(self)
    config["activation"] = [_activation_name(act) for act in self.activation]
    return config


def _activation_name(act):
    """The name keras.activations.get can resolve: 'gelu' for bert4keras's gelu functions."""
    if getattr(act, "__name__", None) in ("gelu_erf", "gelu_tanh"):
        return "gelu"
    return keras.activations.serialize(act)


_original_ff_get_config = b4k_layers.FeedForward.get_config
b4k_layers.FeedForward.get_config = _feedforward_get_config


# --- fix 4b: write Google-format checkpoints without a TF1 session -------------------------
def write_bert_checkpoint(transformer, prefix):
    """Write a bert4keras Transformer's weights to PREFIX.{index,data-*} with Google BERT names.

    Uses bert4keras's own ``variable_mapping()`` (and its transposition of
    cls/seq_relationship/output_weights), so ``build_transformer_model(config, prefix)`` reloads
    the weights exactly. Returns the list of variable names written.
    """
    mapping = {transformer.prefixed(k): v for k, v in transformer.variable_mapping().items()}
    named_values = {}
    for layer_name, names in mapping.items():
        if layer_name not in transformer.layers:
            continue
        # .weights, not .trainable_weights: frozen layers (training with train_layers) count too
        values = K.batch_get_value(transformer.layers[layer_name].weights)
        for name, value in zip(names, values):
            if name == "cls/seq_relationship/output_weights":
                value = value.T  # Google stores it [2, H]; bert4keras's Dense kernel is [H, 2]
            named_values[name] = value
    with tf.Graph().as_default():
        var_list = {name: tf.compat.v1.Variable(value, name=name.replace("/", "_"))
                    for name, value in named_values.items()}
        saver = tf.compat.v1.train.Saver(var_list=var_list)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            saver.save(sess, prefix, write_meta_graph=False, write_state=False)
    return sorted(named_values)


custom_objects = dict(b4k_layers.custom_objects)
custom_objects["SeededTruncatedNormal"] = SeededTruncatedNormal
