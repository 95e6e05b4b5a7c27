"""bert_rec: understand users' behaviour with a Chinese BERT and turn it into recommendations.

Importing the package is cheap: TensorFlow loads only when a TF-backed name is first used
(``bert_rec.Recommender``), through ``bert_rec.backend``.
"""

import importlib

__version__ = "0.1.0"

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
