"""bert-rec recommend --engine ray: a real two-node local Ray cluster gives the single-process
path's top-10, scores and explanations for every user of the sample data, survives a killed
actor without writing anything twice or losing anything, and a rerun replaces the output."""

import glob
import json
import os
import secrets
import subprocess
import sys

import numpy as np
import pytest

from bert_rec.data import InputError, read_behaviors, read_items
from bert_rec.ray_engine import SUCCESS, bucket_of, part_files, read_output
from bert_rec.utils.net import free_ports

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "data", "sample")
TINY = os.path.join(ROOT, "checkpoints", "tiny-bert-zh")
BIN = os.path.dirname(sys.executable)
TIMEOUT = 600  # seconds, for any one command below
# Ray 2.60 clusters authenticate with a token by default: the test cluster's nodes and drivers
# share one, as a real cluster's would (README 'Scaling out').
AUTH = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


def _table(rows):
    """A Parquet table of JSON rows (every key of any row a column: pyarrow's from_pylist
    takes the columns from the first row only)."""
    import pyarrow as pa
    keys = list(dict.fromkeys(k for r in rows for k in r))
    return pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows])


def _run(args, env=None):
    return subprocess.run(args, capture_output=True, text=True, timeout=TIMEOUT, check=False,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **AUTH, **(env or {})})


@pytest.fixture(scope="module")
def cluster():
    """A head node and a second node, both on 127.0.0.1, one CPU each; stopped afterwards."""
    ray = os.path.join(BIN, "ray")
    port, = free_ports(1)
    common = ["--num-cpus", "1", "--object-store-memory", str(300 * 2**20),
              "--disable-usage-stats"]
    try:
        head = _run([ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port",
                     str(port), "--include-dashboard", "false", *common])
        assert head.returncode == 0, head.stderr[-2000:]
        second = _run([ray, "start", "--address", f"127.0.0.1:{port}", "--node-ip-address",
                       "127.0.0.1", *common])
        assert second.returncode == 0, second.stderr[-2000:]
        yield f"127.0.0.1:{port}"
    finally:
        _run([ray, "stop", "--force"])


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The single-process path's results on the sample data: {user_id: record}."""
    out = str(tmp_path_factory.mktemp("single") / "single.jsonl")
    done = _run([os.path.join(BIN, "bert-rec"), "recommend", "--model", TINY, "--items",
                 os.path.join(SAMPLE, "items.jsonl"), "--behaviors",
                 os.path.join(SAMPLE, "behaviors.jsonl"), "--format", "json", "--output", out])
    assert done.returncode == 0, done.stderr[-2000:]
    with open(out, encoding="utf-8") as f:
        return {r["user_id"]: r for r in map(json.loads, f)}


def _ray_recommend(address, items, behaviors, out, env=None, cache=None):
    return _run([os.path.join(BIN, "bert-rec"), "recommend", "--model", TINY, "--items", items,
                 "--behaviors", behaviors, "--format", "json", "--output", out, "--engine",
                 "ray", "--ray-address", address, "--num-actors", "2",
                 *(["--cache-dir", cache] if cache else ["--no-cache"])], env)


def _assert_same(ray_results, single, tie=2e-5):
    """Same users, scores (1e-5) and explanations; the same top-10 order except where two
    items' scores are within ``tie``: the actors run TensorFlow on one thread, the single
    process on two, so the float sums differ in the last bits and a near tie may swap two
    neighbours (or the 10th and 11th items)."""
    assert set(ray_results) == set(single)
    swapped = 0
    for user, expected in single.items():
        got = ray_results[user]
        np.testing.assert_allclose([i["score"] for i in got["items"]],
                                   [i["score"] for i in expected["items"]], atol=1e-5)
        scores = {i["item_id"]: i["score"] for i in expected["items"]}
        last = expected["items"][-1]["score"]
        for a, b in zip(got["items"], expected["items"]):
            if a["item_id"] != b["item_id"]:
                swapped += 1
                assert abs(scores.get(a["item_id"], last) - b["score"]) <= tie, (user, a, b)
        by_id = {i["item_id"]: i for i in expected["items"]}
        for a in got["items"]:
            b = by_id.get(a["item_id"])
            if b is None:
                continue
            assert [(x["item_id"], x["behavior"], x["polarity"]) for x in a["because"]] == \
                [(x["item_id"], x["behavior"], x["polarity"]) for x in b["because"]]
            np.testing.assert_allclose([x["share"] for x in a["because"]],
                                       [x["share"] for x in b["because"]], atol=1e-5)
    assert swapped <= 0.02 * 10 * len(single), swapped  # near ties are rare


def test_two_node_cluster_matches_single_process_and_survives_a_killed_actor(
        cluster, single, tmp_path):
    """Items split into three part files (JSONL, Parquet, JSONL), behaviours into two; the first
    scoring call kills its actor (BERT_REC_RAY_FAIL_ONCE): Ray restarts it and retries the
    group, and every user is written exactly once with the single-process results."""
    import pyarrow.parquet as pq
    items_dir, behaviors_dir = tmp_path / "items", tmp_path / "behaviors"
    items_dir.mkdir()
    behaviors_dir.mkdir()
    with open(os.path.join(SAMPLE, "items.jsonl"), encoding="utf-8") as f:
        item_lines = f.readlines()
    third = len(item_lines) // 3
    (items_dir / "part-0.jsonl").write_text("".join(item_lines[:third]), encoding="utf-8")
    rows = [json.loads(line) for line in item_lines[third:2 * third]]
    pq.write_table(_table(rows), items_dir / "part-1.parquet")
    (items_dir / "part-2.jsonl").write_text("".join(item_lines[2 * third:]), encoding="utf-8")
    (items_dir / "_ignored.txt").write_text("not a part file", encoding="utf-8")
    with open(os.path.join(SAMPLE, "behaviors.jsonl"), encoding="utf-8") as f:
        lines = f.readlines()
    half = len(lines) // 2
    (behaviors_dir / "part-0.jsonl").write_text("".join(lines[:half]), encoding="utf-8")
    (behaviors_dir / "part-1.jsonl").write_text("".join(lines[half:]), encoding="utf-8")

    out = str(tmp_path / "out")
    marker = str(tmp_path / "killed-once")
    cache = str(tmp_path / "cache")  # empty: the actors encode everything themselves
    done = _ray_recommend(cluster, str(items_dir), str(behaviors_dir), out,
                          env={"BERT_REC_RAY_FAIL_ONCE": marker}, cache=cache)
    assert done.returncode == 0, done.stderr[-3000:]
    assert os.path.exists(marker)  # an actor really died mid-run
    assert os.path.exists(os.path.join(out, SUCCESS))
    _assert_same(read_output(out), single)  # read_output refuses a user written twice
    stored = glob.glob(os.path.join(cache, "*", "seg-*.keys"))
    assert stored  # the actors added their vectors to the encode cache

    # a rerun into the same folder replaces it: no part of the earlier run survives
    stale = os.path.join(out, "part-99999.jsonl")
    with open(stale, "w", encoding="utf-8") as f:
        f.write('{"user_id": "nobody", "items": []}\n')
    again = _ray_recommend(cluster, os.path.join(SAMPLE, "items.jsonl"),
                           os.path.join(SAMPLE, "behaviors.jsonl"), out, cache=cache)
    assert again.returncode == 0, again.stderr[-3000:]
    assert not os.path.exists(stale)
    _assert_same(read_output(out), single)  # from the warm cache: nothing new to store
    assert sorted(glob.glob(os.path.join(cache, "*", "seg-*.keys"))) == sorted(stored)
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n or ".old-" in n]


def test_bad_row_on_ray_names_the_part_file_and_line(cluster, tmp_path):
    behaviors = tmp_path / "behaviors"
    behaviors.mkdir()
    with open(os.path.join(SAMPLE, "behaviors.jsonl"), encoding="utf-8") as f:
        lines = f.readlines()[:50]
    lines[6] = '{"user_id": "u1", "item_id": "nope", "behavior": "click", "timestamp": 1}\n'
    (behaviors / "part-0.jsonl").write_text("".join(lines), encoding="utf-8")
    out = str(tmp_path / "out")
    done = _ray_recommend(cluster, os.path.join(SAMPLE, "items.jsonl"), str(behaviors), out)
    assert done.returncode != 0
    assert "part-0.jsonl" in done.stderr and "line 7" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    assert not os.path.exists(out)


def test_part_files_and_buckets(tmp_path):
    (tmp_path / "b.csv").write_text("x", encoding="utf-8")
    (tmp_path / "a.jsonl.gz").write_bytes(b"")
    (tmp_path / "_SUCCESS").write_text("", encoding="utf-8")
    (tmp_path / ".hidden.jsonl").write_text("", encoding="utf-8")
    (tmp_path / "notes.txt").write_text("", encoding="utf-8")
    assert [os.path.basename(p) for p in part_files(str(tmp_path), "items")] == [
        "a.jsonl.gz", "b.csv"]
    assert part_files(str(tmp_path / "b.csv"), "items") == [str(tmp_path / "b.csv")]
    with pytest.raises(InputError, match="no such file or folder"):
        part_files(str(tmp_path / "missing"), "items")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no items part files"):
        part_files(str(empty), "items")
    assert bucket_of("u0001", 8) == bucket_of("u0001", 8)  # stable across processes
    assert len({bucket_of(f"u{i}", 8) for i in range(100)}) == 8


def test_read_output_refuses_unfinished_or_doubled_runs(tmp_path):
    (tmp_path / "part-00000.jsonl").write_text('{"user_id": "a", "items": []}\n',
                                               encoding="utf-8")
    with pytest.raises(InputError, match="did not finish"):
        read_output(str(tmp_path))
    (tmp_path / SUCCESS).write_text("", encoding="utf-8")
    assert list(read_output(str(tmp_path))) == ["a"]
    (tmp_path / "part-00001.jsonl").write_text('{"user_id": "a", "items": []}\n',
                                               encoding="utf-8")
    with pytest.raises(ValueError, match="written twice"):
        read_output(str(tmp_path))


def test_parquet_input_reads_like_jsonl(tmp_path):
    import pyarrow.parquet as pq
    path = os.path.join(SAMPLE, "behaviors.jsonl")
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f.readlines()[:200]]
    pq.write_table(_table(rows), tmp_path / "b.parquet")
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                              for r in rows), encoding="utf-8")
    from_parquet, _ = read_behaviors(str(tmp_path / "b.parquet"))
    from_jsonl, _ = read_behaviors(str(tmp_path / "b.jsonl"))
    strip = [(b.user_id, b.item_id, b.behavior, b.timestamp, b.rating, b.text, b.line)
             for b in from_jsonl]
    assert [(b.user_id, b.item_id, b.behavior, b.timestamp, b.rating, b.text, b.line)
            for b in from_parquet] == strip
    items_rows = [{"item_id": "a", "title": "标题", "tags": ["x", "y"]}, {"title": "无编号"}]
    pq.write_table(_table(items_rows), tmp_path / "i.parquet")
    with pytest.raises(InputError, match="i.parquet.*line 2"):
        read_items(str(tmp_path / "i.parquet"))
