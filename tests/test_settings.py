"""Settings without Python: --config FILE, --set KEY=VALUE, bert-rec config show, scripts."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from bert_rec import settings
from bert_rec.cli import build_parser, main
from bert_rec.commands import _train_flags, requested_settings
from bert_rec.config import ModelConfig, TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "data", "sample")
SHIPPED_CKPT = os.path.join(ROOT, "checkpoints", "tiny-bert-zh")
DATA_ARGS = ["--items", os.path.join(SAMPLE, "items.jsonl"),
             "--behaviors", os.path.join(SAMPLE, "behaviors.jsonl")]


def _write(path, data):
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return str(path)


# -- the loader (no TensorFlow) -------------------------------------------------------------------
def test_unknown_keys_are_refused_with_the_closest_name(tmp_path):
    path = _write(tmp_path / "s.json", {"scoring": {"half_life": 7}})
    with pytest.raises(ValueError, match=r"unknown setting 'scoring.half_life'; did you mean "
                                         r"'scoring.half_life_days'\?"):
        settings.load_file(path)
    path = _write(tmp_path / "s.json", {"whitenning": "center"})
    with pytest.raises(ValueError, match=r"did you mean 'whitening'\?"):
        settings.load_file(path)
    path = _write(tmp_path / "s.json", {"train": {"epoch": 3}})
    with pytest.raises(ValueError, match=r"'train.epoch'; did you mean 'train.epochs'\?"):
        settings.load_file(path)


@pytest.mark.parametrize("data, message", [
    ({"scoring": {"half_life_days": "7"}}, "scoring.half_life_days must be a number"),
    ({"scoring": {"exclude_seen": 1}}, "scoring.exclude_seen must be true or false"),
    ({"scoring": 3}, "scoring must be a JSON object"),
    ({"train": {"epochs": 2.5}}, "train.epochs must be an integer"),
    ({"train": {"epochs": 0}}, "epochs must be >= 1, got 0 \\(in 'train'\\)"),
    ({"whitening": "sphere"}, "whitening must be one of none, center, whiten"),
    ({"scoring": {"behavior_weights": {"click": -1}}}, "weights must be finite numbers >= 0"),
    ({"format_version": 9}, "format_version 9"),
    ([1, 2], "expected a JSON object of settings, got a list"),
])
def test_bad_values_are_one_line_errors(tmp_path, data, message):
    path = _write(tmp_path / "s.json", data)
    with pytest.raises(ValueError, match=message) as info:
        settings.load_file(path)
    assert str(info.value).startswith(f"--config {path}: ") and "\n" not in str(info.value)


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ValueError, match="cannot read it"):
        settings.load_file(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{'scoring': 1}", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        settings.load_file(str(bad))


def test_paths_are_relative_to_the_file_and_must_exist(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "dict.txt").write_text("红烧肉 10\n", encoding="utf-8")
    path = _write(tmp_path / "conf" / "s.json", {"text": {"user_dict_path": "dict.txt"}})
    changes = settings.load_file(path)
    assert changes["text"]["user_dict_path"] == str(tmp_path / "conf" / "dict.txt")
    path = _write(tmp_path / "conf" / "s.json", {"text": {"stopwords_path": "nope.txt"}})
    with pytest.raises(ValueError, match="text.stopwords_path: no such file"):
        settings.load_file(path)


def test_dict_settings_merge_into_the_models():
    base = ModelConfig()
    changes = settings.parse_assignments(["scoring.behavior_weights.purchase=5",
                                          "scoring.behavior_weights.view=0.5"])
    overrides = settings.model_overrides(base, changes)
    assert set(overrides) == {"scoring"}
    weights = base.replace(**overrides).scoring.behavior_weights
    assert weights == {"view": 0.5, "click": 2.0, "rate": 3.0, "comment": 3.0, "purchase": 5}
    assert settings.model_overrides(base, {}) == {}


def test_set_values_are_json_else_text():
    changes = settings.parse_assignments(["whitening=center", "scoring.max_history=20",
                                          "train.objective=both", "whitening_dim=null"])
    assert changes == {"whitening": "center", "scoring": {"max_history": 20},
                       "train": {"objective": "both"}, "whitening_dim": None}
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        settings.parse_assignments(["half_life_days"])


def test_new_dataclass_fields_need_no_change_to_the_loader():
    """The loader reads the fields of the dataclasses, so a field added later is a valid key."""
    @dataclasses.dataclass(frozen=True)
    class Future:
        dislike_weight: float = 1.0
        polarity: str = "signed"
        extra: dict = dataclasses.field(default_factory=dict)
        limit: int | None = None

    got = settings.apply(Future(), {"dislike_weight": 2, "polarity": "none",
                                    "extra": {"a": 1}, "limit": 3}, "f")
    assert got == Future(2.0, "none", {"a": 1}, 3) and isinstance(got.dislike_weight, float)
    with pytest.raises(ValueError, match="did you mean 'dislike_weight'"):
        settings.apply(Future(), {"dislike_weights": 2}, "f")
    with pytest.raises(ValueError, match="limit must be an integer or null"):
        settings.apply(Future(), {"limit": "3"}, "f")


def test_layers_flags_over_set_over_file(tmp_path):
    path = _write(tmp_path / "s.json", {"train": {"epochs": 3, "batch_size": 16, "seed": 5},
                                        "scoring": {"half_life_days": 3}})
    args = build_parser().parse_args(
        ["train", "--model", "M", *DATA_ARGS, "--out", "O", "--config", path,
         "--set", "train.batch_size=8", "train.seed=6", "--seed", "7", "--no-logq"])
    changes = requested_settings(args, {"train": _train_flags(args)})
    config = settings.train_config(changes)
    assert (config.epochs, config.batch_size, config.seed, config.logq_correction) == \
        (3, 8, 7, False)
    assert dataclasses.replace(config, epochs=30, batch_size=128, seed=0,
                               logq_correction=True) == TrainConfig()  # the rest: defaults
    assert changes["scoring"] == {"half_life_days": 3}


# -- through the command line ---------------------------------------------------------------------
def test_recommend_with_config_equals_python_settings(tmp_path, capsys):
    """A settings file gives what the same settings give in Python, and they change the result."""
    from bert_rec.data import group_by_user, read_behaviors, read_items
    from bert_rec.recommend import Recommender
    scoring = {"behavior_weights": {"view": 0.0, "comment": 10.0}, "half_life_days": 2.0,
               "text_weight": 3.0, "max_history": 8}
    path = _write(tmp_path / "s.json", {"scoring": scoring, "whitening": "center"})
    out = tmp_path / "r.jsonl"
    argv = ["recommend", "--model", SHIPPED_CKPT, *DATA_ARGS, "--user", "u0002", "-k", "5",
            "--format", "json", "--output", str(out)]
    assert main(argv + ["--config", path]) == 0
    configured = json.loads(out.read_text(encoding="utf-8"))
    items, _ = read_items(os.path.join(SAMPLE, "items.jsonl"))
    behaviors, _ = read_behaviors(os.path.join(SAMPLE, "behaviors.jsonl"))
    # the file's weights are merged into the defaults; in Python the dict is taken as given
    python_scoring = {**scoring, "behavior_weights": {"view": 0.0, "click": 2.0, "rate": 3.0,
                                                      "comment": 10.0}}
    rec = Recommender.load(SHIPPED_CKPT, overrides={"scoring": python_scoring,
                                                    "whitening": "center"})
    want = rec.index_items(items).recommend({"u0002": group_by_user(behaviors)["u0002"]}, k=5)
    assert [i["item_id"] for i in configured["items"]] == [r.item_id for r in want[0].items]
    assert [i["score"] for i in configured["items"]] == pytest.approx(
        [r.score for r in want[0].items], abs=1e-6)
    assert main(argv) == 0
    default = json.loads(out.read_text(encoding="utf-8"))
    assert [i["item_id"] for i in default["items"]] != [i["item_id"] for i in configured["items"]]
    capsys.readouterr()


def test_bad_config_stops_before_reading_data(tmp_path, capsys):
    path = _write(tmp_path / "s.json", {"scoring": {"halflife_days": 7}})
    argv = ["recommend", "--model", SHIPPED_CKPT, "--items", str(tmp_path / "none.jsonl"),
            "--behaviors", str(tmp_path / "none.jsonl"), "--config", path]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "did you mean 'scoring.half_life_days'" in err


def _script(name, *argv):
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, os.path.join(ROOT, "scripts", name), *argv],
                          capture_output=True, text=True, env=env, timeout=900)


def test_train_and_evaluate_scripts_with_a_settings_file(tiny_ckpt, tmp_path):
    """scripts/train.py and scripts/evaluate.py; the model saves the effective settings, which
    config show prints and which are themselves a valid settings file."""
    sys.path.insert(0, os.path.dirname(__file__))
    from test_cli import _write_jsonl
    from test_training import _dataset
    items, histories = _dataset()
    data = ["--items", _write_jsonl(tmp_path / "items.jsonl", [
        {"item_id": i.item_id, "title": i.title} for i in items]),
        "--behaviors", _write_jsonl(tmp_path / "behaviors.jsonl", [
            {"user_id": b.user_id, "item_id": b.item_id, "behavior": b.behavior,
             "timestamp": b.timestamp} for h in histories.values() for b in h])]
    conf = _write(tmp_path / "s.json", {
        "scoring": {"half_life_days": 3.5, "behavior_weights": {"click": 5}},
        "train": {"epochs": 1, "batch_size": 16, "extra_negatives": 8, "k": 5, "seed": 3}})
    out = str(tmp_path / "model")
    result = _script("train.py", "--model", tiny_ckpt, *data, "--out", out, "--config", conf,
                     "--patience", "2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "best epoch 1: validation NDCG@5" in result.stderr
    shown = subprocess.run([sys.executable, "-m", "bert_rec.cli", "config", "show", "--model",
                            out], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": ROOT})
    assert shown.returncode == 0, shown.stderr[-2000:]
    effective = json.loads(shown.stdout)
    assert effective["scoring"]["half_life_days"] == 3.5
    assert effective["scoring"]["behavior_weights"]["click"] == 5
    assert effective["train"]["epochs"] == 1 and effective["train"]["patience"] == 2
    assert effective["train"]["seed"] == 3
    again = tmp_path / "again.json"
    again.write_text(shown.stdout, encoding="utf-8")
    result = _script("evaluate.py", "--model", out, *data, "-k", "5", "--format", "json",
                     "--config", str(again))
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["users_evaluated"] == 16
