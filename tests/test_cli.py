"""The bert-rec command line on the bundled sample data and on bad input."""

import json
import os
import subprocess
import sys

import pytest

from bert_rec.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "data", "sample")
SHIPPED_CKPT = os.path.join(ROOT, "checkpoints", "tiny-bert-zh")
DATA_ARGS = ["--items", os.path.join(SAMPLE, "items.jsonl"),
             "--behaviors", os.path.join(SAMPLE, "behaviors.jsonl")]


def _history(user):
    with open(os.path.join(SAMPLE, "behaviors.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return [r for r in rows if r["user_id"] == user]


def test_recommend_json_on_sample_data(tmp_path, capsys):
    out = tmp_path / "recs.jsonl"
    code = main(["recommend", "--model", SHIPPED_CKPT, *DATA_ARGS, "--user", "u0001", "u0002",
                 "-k", "5", "--format", "json", "--output", str(out)])
    assert code == 0
    results = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["user_id"] for r in results] == ["u0001", "u0002"]
    for result in results:
        history = _history(result["user_id"])
        seen = {r["item_id"] for r in history}
        assert len(result["items"]) == 5
        scores = [i["score"] for i in result["items"]]
        assert scores == sorted(scores, reverse=True)
        for item in result["items"]:
            assert set(item) == {"item_id", "score", "title", "because"}
            assert item["item_id"] not in seen
            assert item["because"] and all(b["item_id"] in seen for b in item["because"])
            assert set(item["because"][0]) == {"item_id", "behavior", "text", "share",
                                               "polarity"}
            assert all(b["polarity"] in ("positive", "negative", "neutral")
                       for b in item["because"])
            assert sum(b["share"] for b in item["because"] if b["share"] > 0) > 0
    assert "recommended for 2 user(s)" in capsys.readouterr().err


def test_recommend_table_via_script():
    """The thin wrapper in scripts/ runs the same command and prints readable blocks."""
    env = {**os.environ, "PYTHONPATH": ROOT}
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", "recommend.py"), "--model", SHIPPED_CKPT,
         *DATA_ARGS, "--user", "u0003", "-k", "3"],
        capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "user u0003:" in result.stdout
    assert result.stdout.count("%") >= 3  # every recommendation shows behaviour shares


def test_unknown_user_is_a_clear_error(capsys):
    code = main(["recommend", "--model", SHIPPED_CKPT, *DATA_ARGS, "--user", "nobody"])
    assert code == 2
    err = capsys.readouterr().err
    assert "no behaviours for user(s) nobody" in err and "u0001" in err


def test_bad_rows_are_reported_with_line_numbers(tmp_path, capsys):
    items = tmp_path / "items.csv"
    items.write_text("item_id,title,text\nv1,红烧肉,家常菜\nv2,篮球,比赛\n", encoding="utf-8")
    behaviors = tmp_path / "behaviors.csv"
    behaviors.write_text("user_id,item_id,behavior,timestamp,rating,text\n"
                         "u1,v1,click,2024-03-01T10:00:00Z,,\n"
                         "u1,v2,rate,2024-03-01T11:00:00Z,five,\n", encoding="utf-8")
    args = ["recommend", "--model", SHIPPED_CKPT, "--items", str(items),
            "--behaviors", str(behaviors), "-k", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "behaviors.csv line 3, field 'rating'" in err and "--on-error skip" in err
    assert main(args + ["--on-error", "skip"]) == 0
    captured = capsys.readouterr()
    assert "skipped 1" in captured.err and "user u1:" in captured.out


def test_bad_model_directory(tmp_path, capsys):
    assert main(["recommend", "--model", str(tmp_path), *DATA_ARGS]) == 2
    assert "neither a bert_rec model directory" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--help"], ["recommend", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 0
    assert "bert-rec" in capsys.readouterr().out


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    return str(path)


def test_train_then_evaluate_json_and_plot(tiny_ckpt, tmp_path, capsys):
    sys.path.insert(0, os.path.dirname(__file__))
    from test_training import _dataset
    items, histories = _dataset()
    items_path = _write_jsonl(tmp_path / "items.jsonl", [
        {"item_id": i.item_id, "title": i.title, "category": i.category} for i in items])
    behaviors_path = _write_jsonl(tmp_path / "behaviors.jsonl", [
        {"user_id": b.user_id, "item_id": b.item_id, "behavior": b.behavior,
         "timestamp": b.timestamp, **({"text": b.text} if b.text else {})}
        for h in histories.values() for b in h])
    data = ["--items", items_path, "--behaviors", behaviors_path]
    out = str(tmp_path / "model")
    assert main(["train", "--model", tiny_ckpt, *data, "--out", out, "--epochs", "2",
                 "--batch-size", "16", "--extra-negatives", "8", "-k", "5"]) == 0
    assert os.path.isfile(os.path.join(out, "training", "training_curves.png"))
    assert "best epoch" in capsys.readouterr().err
    plot = str(tmp_path / "eval.png")
    assert main(["evaluate", "--model", out, *data, "-k", "5", "--format", "json",
                 "--plot", plot]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["k"] == 5 and report["users_evaluated"] == 16 and report["users_skipped"] == 0
    assert set(report["results"]) == {"bert_rec", "popularity", "itemknn", "tfidf", "zero_shot"}
    for metrics in report["results"].values():
        assert set(metrics) == {"hr", "ndcg", "mrr", "coverage", "disliked"}
        assert all(0.0 <= v <= 1.0 for v in metrics.values())
    with open(plot, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # the trained directory also serves recommend
    assert main(["recommend", "--model", out, *data, "--user", "u0", "-k", "2"]) == 0
    assert "user u0:" in capsys.readouterr().out
