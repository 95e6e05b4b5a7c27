"""Settings without Python: ``--config FILE`` (JSON) and ``--set KEY=VALUE`` (no TensorFlow).

A settings file has the shape of a model directory's ``bert_rec.json`` (``ModelConfig``: the
top-level model keys such as ``whitening``, a ``"text"`` and a ``"scoring"`` section) plus an
optional ``"train"`` section (``TrainConfig``); every key is optional::

    {"scoring": {"behavior_weights": {"click": 4}, "half_life_days": 7, "text_weight": 0.5},
     "text": {"user_dict_path": "userdict.txt"}, "whitening": "center",
     "train": {"epochs": 10, "learning_rate": 0.001}}

Keys and types are checked against the dataclass fields, so a field added to a config class is
a valid key without a change here; an unknown key is refused with the closest valid name.
Dict-valued settings (``behavior_weights``) are merged into the model's: name the entries you
change. Relative ``*_path`` values are relative to the settings file. Layers, each overriding the
one before: the model's saved settings (defaults for a checkpoint), the file, ``--set``, the
command's own flags (``--pooling``, ``--epochs``, ...).
"""

import dataclasses
import difflib
import json
import os
import types
import typing

from .config import FORMAT_VERSION, ModelConfig, TrainConfig

TRAIN_SECTION = "train"


def load_file(path):
    """The changes a settings file asks for, as a nested dict (keys and types checked)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise ValueError(f"--config {path}: cannot read it ({e.strerror or e}); pass an "
                         f"existing JSON settings file") from None
    except ValueError as e:
        raise ValueError(f"--config {path}: not valid JSON ({e}); fix the file (JSON, UTF-8)"
                         ) from None
    if not isinstance(data, dict):
        raise ValueError(f"--config {path}: expected a JSON object of settings, got "
                         f"{_kind(data)}")
    data = _resolve_paths(data, os.path.dirname(os.path.abspath(path)), f"--config {path}")
    check(data, f"--config {path}")
    return data


def parse_assignments(assignments, where="--set"):
    """``["scoring.half_life_days=7", ...]`` -> nested changes; values are JSON, else text."""
    changes = {}
    for assignment in assignments or ():
        key, sep, raw = assignment.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{where} {assignment!r}: expected KEY=VALUE, e.g. "
                             f"scoring.half_life_days=7")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        *parents, last = key.strip().split(".")
        node = changes
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"{where} {assignment!r}: {part} is set twice")
        node[last] = value
    changes = _resolve_paths(changes, os.getcwd(), where)
    check(changes, where)
    return changes


def merge(*layers):
    """Deep merge of nested change dicts, later layers winning."""
    out = {}
    for layer in layers:
        for key, value in (layer or {}).items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                value = merge(out[key], value)
            out[key] = value
    return out


def check(changes, where):
    """Raise a one-line ValueError unless ``changes`` fit ModelConfig / TrainConfig."""
    model_part, train_part = split(changes)
    if "format_version" in model_part and model_part["format_version"] != FORMAT_VERSION:
        raise ValueError(f"{where}: format_version {model_part['format_version']!r}, but this "
                         f"bert_rec reads version {FORMAT_VERSION}; remove the key")
    apply(ModelConfig(), model_part, where, extra=(TRAIN_SECTION,))
    if not isinstance(train_part, dict):
        raise ValueError(f"{where}: '{TRAIN_SECTION}' must be a JSON object of training "
                         f"settings, got {_kind(train_part)}")
    apply(TrainConfig(), train_part, where, prefix=TRAIN_SECTION + ".")


def split(changes):
    """(model changes, train changes) of a nested change dict."""
    model_part = {k: v for k, v in (changes or {}).items() if k != TRAIN_SECTION}
    return model_part, (changes or {}).get(TRAIN_SECTION, {})


def apply(config, changes, where, prefix="", extra=()):
    """A copy of dataclass ``config`` with nested ``changes`` applied, keys and types checked.

    Nested dataclass fields take a dict of their own changes; dict fields are merged. ``extra``:
    keys allowed at this level that belong to something else (skipped).
    """
    names = [f.name for f in dataclasses.fields(config)]
    hints = typing.get_type_hints(type(config))
    updates = {}
    for key, value in changes.items():
        if key in extra:
            continue
        if key not in names:
            raise ValueError(_unknown_key(where, prefix, key, names))
        current = getattr(config, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ValueError(f"{where}: {prefix}{key} must be a JSON object of settings, "
                                 f"got {_kind(value)}")
            updates[key] = apply(current, value, where, prefix=f"{prefix}{key}.")
        elif isinstance(current, dict) and isinstance(value, dict):
            updates[key] = {**current, **value}
        else:
            updates[key] = _typed(hints.get(key), value, where, prefix + key)
    try:
        return dataclasses.replace(config, **updates)
    except (TypeError, ValueError) as e:
        section = f" (in '{prefix.rstrip('.')}')" if prefix else ""
        raise ValueError(f"{where}: {e}{section}") from None


def model_overrides(base, changes, where="settings"):
    """``Recommender.load`` overrides that turn ModelConfig ``base`` into ``base`` + the model
    part of ``changes``: the top-level fields that differ."""
    effective = apply(base, split(changes)[0], where, extra=(TRAIN_SECTION,))
    return {f.name: getattr(effective, f.name) for f in dataclasses.fields(effective)
            if getattr(effective, f.name) != getattr(base, f.name)}


def train_config(changes, where="settings", base=None):
    """The ``TrainConfig``: ``base`` (default: the defaults) + the train part of ``changes``."""
    return apply(base or TrainConfig(), split(changes)[1], where, prefix=TRAIN_SECTION + ".")


def show(model_config, train=None):
    """The settings as the JSON text ``bert-rec config show`` prints (a valid settings file)."""
    data = model_config.to_dict()
    if train is not None:
        data[TRAIN_SECTION] = dataclasses.asdict(train)
    return json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True) + "\n"


# -- helpers --------------------------------------------------------------------------------------
def _unknown_key(where, prefix, key, names):
    close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
    hint = f"did you mean '{prefix}{close[0]}'? " if close else ""
    return (f"{where}: unknown setting '{prefix}{key}'; {hint}valid keys"
            f"{' in ' + prefix.rstrip('.') if prefix else ''}: {', '.join(sorted(names))}")


def _typed(hint, value, where, name):
    """``value`` checked against the field's type hint (ints become floats for float fields)."""
    options = (typing.get_args(hint)
               if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,))
    for option in options:
        ok, converted = _fits(option, value)
        if ok:
            return converted
    wanted = " or ".join(_TYPE_NAMES.get(o, getattr(o, "__name__", str(o))) for o in options)
    raise ValueError(f"{where}: {name} must be {wanted}, got {_kind(value)} "
                     f"{json.dumps(value, ensure_ascii=False)[:40]}")


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
               dict: "a JSON object", type(None): "null", list: "a list"}


def _fits(option, value):
    """(whether ``value`` is of type ``option``, the value to store)."""
    if option is None or option is typing.Any:
        return True, value
    if option is type(None):
        return value is None, value
    if option is bool:
        return isinstance(value, bool), value
    if option is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if option is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    base = typing.get_origin(option) or option
    if isinstance(base, type):
        if base is tuple and isinstance(value, list):
            return True, tuple(value)
        return isinstance(value, base), value
    return True, value


def _kind(value):
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value),
                                                                      type(value).__name__)


def _resolve_paths(changes, folder, where, prefix=""):
    """Relative ``*_path`` strings made absolute against ``folder``, at any depth; each must
    name an existing file."""
    out = {}
    for key, value in changes.items():
        if isinstance(value, dict):
            value = _resolve_paths(value, folder, where, f"{prefix}{key}.")
        elif str(key).endswith("_path") and isinstance(value, str) and value:
            value = os.path.normpath(os.path.join(folder, os.path.expanduser(value)))
            if not os.path.isfile(value):
                raise ValueError(f"{where}: {prefix}{key}: no such file {value} (relative paths "
                                 f"are relative to the settings file; --set: to the current "
                                 f"folder)")
        out[key] = value
    return out
