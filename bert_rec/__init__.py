"""bert_rec: understand users' behaviour with a Chinese BERT and turn it into recommendations.

Importing the package is cheap: TensorFlow loads only when a TF-backed name is first used
(``bert_rec.Recommender``), through ``bert_rec.backend``.
"""

import importlib
import importlib.util
import sys

__version__ = "0.1.0"

# The stack pip cannot install as bert_rec's requirements (see requirements-nodeps.txt and the
# README, "Installing with pip"): module -> what to run. tests/test_install.py keeps the pins
# equal to the requirement files.
TENSORFLOW_INSTALL = ("pip install tensorflow-cpu==2.21.0 (or 'tensorflow[and-cuda]==2.21.0' for "
                      "a GPU)")
NODEPS_INSTALL = "pip install --no-deps tf-keras==2.21.0 bert4keras==0.11.5"
STACK = {"tensorflow": TENSORFLOW_INSTALL, "tf_keras": NODEPS_INSTALL,
         "bert4keras": NODEPS_INSTALL}


class MissingDependencyError(ImportError):
    """Part of bert_rec's TensorFlow stack is not installed."""


def _findable(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken install counts as missing
        return False


def _check_stack():
    """Stop ``import bert_rec`` with one line saying what to install, before any command can
    end in a traceback deep inside TensorFlow (finding a module does not import it)."""
    missing = [name for name in STACK if not _findable(name)]
    if not missing:
        return
    steps = " && ".join(dict.fromkeys(STACK[name] for name in missing))
    error = MissingDependencyError(
        f"{', '.join(missing)} not installed; run: {steps} (pip cannot install tf-keras and "
        f"bert4keras as requirements of bert_rec: theirs conflict with TensorFlow 2.21, though "
        f"they work; see the README, 'Installing with pip')", name=missing[0])
    previous = sys.excepthook

    def one_line(kind, value, traceback):  # uncaught (a command, `python -c`): no traceback
        if isinstance(value, MissingDependencyError):
            print(f"bert_rec: error: {value}", file=sys.stderr)
        else:
            previous(kind, value, traceback)
    sys.excepthook = one_line
    raise error


_check_stack()

_LAZY = {
    "Recommender": "recommend",
    "TextEncoder": "encoder",
    "ModelConfig": "config",
    "ScoringConfig": "config",
    "TextConfig": "text",
    "TextPipeline": "text",
    "read_items": "data",
    "read_behaviors": "data",
    "find_checkpoint": "checkpoint",
}


def load_model(path, **kwargs):
    """A Recommender from a bert_rec model directory or a Google-format checkpoint directory."""
    from .recommend import Recommender  # noqa: PLC0415  (TensorFlow loads here)
    return Recommender.load(path, **kwargs)


def save_model(model, path):
    """Write a Recommender as a model directory (atomically); returns the path."""
    return model.save(path)


def __getattr__(name):
    if name == "custom_objects":  # for tf_keras.models.load_model on the .h5 files
        from .model_dir import custom_objects  # noqa: PLC0415
        return custom_objects
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'bert_rec' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
