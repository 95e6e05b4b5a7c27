"""bert-rec train --distributed multi-worker: two local worker processes (TF_CONFIG on loopback)
give the single process's result; a killed job resumes where the uninterrupted one ends; the
same two workers launched on Ray (--num-workers 2, Ray Train) restart after a lost worker and
end there too.

Tolerances: the workers' gradients are summed by an all-reduce, so a step's gradient equals the
single process's mean gradient up to float summation order (measured on data/sample: epoch
losses within 1e-8 relative, validation metrics and all 300 users' top-10 identical, scores
within 4e-7; with --train-layers 1 losses within 1.2e-5, metrics identical). Tests allow
losses 1e-5 relative (1e-4 with --train-layers 1), metrics 1e-3 absolute (one user of the
subset moving changes HR by 1/30) and identical top-10 lists for >= 95% of users (a near tie may
swap two neighbours), scores within 1e-4.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from conftest import ROOT, SAMPLE

from bert_rec.utils.net import free_ports

USERS = 30  # the first users of data/sample: keeps each run to seconds
BATCH = 83  # 30 users give 416 training examples: the last batch holds one, so worker 1's
EXAMPLES = 416  # shard of it is empty (the zero-weight filler)
TIMEOUT = 240
COMMON = ["--batch-size", str(BATCH), "--extra-negatives", "32", "--seed", "3"]


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    """items.jsonl / behaviors.jsonl of the first USERS users of data/sample."""
    out = tmp_path_factory.mktemp("subset")
    with open(os.path.join(SAMPLE, "behaviors.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    keep = set(sorted({r["user_id"] for r in rows})[:USERS])
    rows = [r for r in rows if r["user_id"] in keep]
    ids = {r["item_id"] for r in rows}
    with open(os.path.join(SAMPLE, "items.jsonl"), encoding="utf-8") as f:
        items = [line for line in f if json.loads(line)["item_id"] in ids]
    (out / "items.jsonl").write_text("".join(items), encoding="utf-8")
    (out / "behaviors.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows),
                                         encoding="utf-8")
    return str(out)


@pytest.fixture(scope="module")
def nodrop_ckpt(tmp_path_factory):
    """checkpoints/tiny-bert-zh with both dropouts 0: fine-tuning without random ops."""
    out = tmp_path_factory.mktemp("nodrop")
    src = os.path.join(ROOT, "checkpoints", "tiny-bert-zh")
    for name in os.listdir(src):
        shutil.copy(os.path.join(src, name), out)
    config = json.loads((out / "bert_config.json").read_text(encoding="utf-8"))
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (out / "bert_config.json").write_text(json.dumps(config), encoding="utf-8")
    return str(out)


def _train_cmd(model, data, out, extra):
    return [sys.executable, "-m", "bert_rec.cli", "train", "--model", model,
            "--items", os.path.join(data, "items.jsonl"),
            "--behaviors", os.path.join(data, "behaviors.jsonl"), "--out", out] + COMMON + extra


def _start(cmd, log, tf_config=None):
    env = dict(os.environ, BERT_REC_PROGRESS="0")
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(log, "w", encoding="utf-8"))


def _start_job(model, data, out, extra):
    """Two workers of one job; returns their processes."""
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    cmd = _train_cmd(model, data, out, extra + ["--distributed", "multi-worker"])
    return [_start(cmd, f"{out}.worker{i}.log", {"cluster": cluster,
                                                "task": {"type": "worker", "index": i}})
            for i in range(2)]


def _wait(procs, logs):
    deadline = time.time() + TIMEOUT
    for proc, log in zip(procs, logs):
        code = proc.wait(timeout=max(1, deadline - time.time()))
        assert code == 0, open(log, encoding="utf-8").read()[-3000:]


def _stop(procs):
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def _history(out):
    with open(os.path.join(out, "training", "history.json"), encoding="utf-8") as f:
        return json.load(f)


def _assert_same_history(a, b, loss_rel=1e-5):
    assert [h["epoch"] for h in a] == [h["epoch"] for h in b]
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], rel=loss_rel)
        for key in ("accuracy", "val_hr", "val_ndcg", "val_mrr"):
            assert x[key] == pytest.approx(y[key], abs=1e-3), key


def _runs(tmp, model, data, extra):
    """(single-process model dir, two-worker model dir), trained at the same time."""
    single, dist = str(tmp / "single"), str(tmp / "dist")
    procs = [_start(_train_cmd(model, data, single, extra), single + ".log")]
    try:
        procs += _start_job(model, data, dist, extra)
        _wait(procs, [single + ".log", dist + ".worker0.log", dist + ".worker1.log"])
    finally:
        _stop(procs)
    return single, dist


@pytest.fixture(scope="module")
def frozen_runs(tmp_path_factory, subset):
    return _runs(tmp_path_factory.mktemp("frozen"), os.path.join(ROOT, "checkpoints",
                                                                  "tiny-bert-zh"),
                 subset, ["--epochs", "3"])


def _top10(model, data, out):
    cmd = [sys.executable, "-m", "bert_rec.cli", "recommend", "--model", model,
           "--items", os.path.join(data, "items.jsonl"),
           "--behaviors", os.path.join(data, "behaviors.jsonl"), "-k", "10",
           "--format", "json", "--output", out]
    return _start(cmd, out + ".log")


def _read_top10(path):
    with open(path, encoding="utf-8") as f:
        return {r["user_id"]: [(i["item_id"], i["score"]) for i in r["items"]]
                for r in map(json.loads, f)}


def test_two_workers_give_the_single_process_model(frozen_runs, subset):
    single, dist = frozen_runs
    log = open(dist + ".worker0.log", encoding="utf-8").read()
    assert f"training on {EXAMPLES} examples" in log  # so the last batch has one example
    assert EXAMPLES % BATCH == 1
    assert len(_history(dist)) == 3
    _assert_same_history(_history(dist), _history(single))
    procs = [_top10(m, subset, m + ".top10.jsonl") for m in (single, dist)]
    try:
        _wait(procs, [single + ".top10.jsonl.log", dist + ".top10.jsonl.log"])
    finally:
        _stop(procs)
    a, b = _read_top10(single + ".top10.jsonl"), _read_top10(dist + ".top10.jsonl")
    assert sorted(a) == sorted(b) and len(a) == USERS
    same = [u for u in a if [i for i, _ in a[u]] == [i for i, _ in b[u]]]
    assert len(same) >= 0.95 * len(a)
    for u in same:
        np.testing.assert_allclose([s for _, s in a[u]], [s for _, s in b[u]], atol=1e-4)


def test_a_killed_job_resumes_where_the_uninterrupted_one_ends(frozen_runs, subset, tmp_path):
    _, uninterrupted = frozen_runs
    model = os.path.join(ROOT, "checkpoints", "tiny-bert-zh")
    out = str(tmp_path / "killed")
    procs = _start_job(model, subset, out, ["--epochs", "3"])
    try:
        deadline = time.time() + TIMEOUT
        last = os.path.join(out, "training", "last", "checkpoint")
        while not os.path.exists(last):  # epoch 1's state is saved: epoch 2 starts
            assert time.time() < deadline and all(p.poll() is None for p in procs), \
                open(out + ".worker0.log", encoding="utf-8").read()[-3000:]
            time.sleep(0.05)
        procs[1].send_signal(signal.SIGKILL)  # a worker dies mid-epoch 2
        procs[1].wait(timeout=30)
        assert len(_history(out)) == 1
        procs[0].send_signal(signal.SIGTERM)  # the launcher stops the job ...
        procs[0].wait(timeout=60)
        procs = _start_job(model, subset, out, ["--epochs", "3", "--resume"])  # ... restarts it
        _wait(procs, [out + ".worker0.log", out + ".worker1.log"])
    finally:
        _stop(procs)
    for i in range(2):
        assert "resuming after epoch 1" in open(f"{out}.worker{i}.log", encoding="utf-8").read()
    _assert_same_history(_history(out), _history(uninterrupted))


def test_fine_tuning_the_top_layer_on_two_workers(tmp_path, subset, nodrop_ckpt):
    """--train-layers 1 (the stored frozen-layer states path) with dropout 0: as one process."""
    single, dist = _runs(tmp_path, nodrop_ckpt, subset, ["--epochs", "2", "--train-layers", "1"])
    # Summation order reaches the encoder's gradients too: losses measured within 1.2e-5
    _assert_same_history(_history(dist), _history(single), loss_rel=1e-4)


def test_ray_train_launch_restarts_a_lost_worker_and_ends_as_one_process(frozen_runs, subset,
                                                                          tmp_path):
    """bert-rec train --num-workers 2: Ray (embedded) starts the workers through Ray Train's
    TensorflowTrainer, which sets TF_CONFIG; worker 1 kills itself once epoch 1 is saved (the
    test hook), the driver starts both again with --resume, and the run ends where the
    uninterrupted single process ends."""
    single, _ = frozen_runs
    model = os.path.join(ROOT, "checkpoints", "tiny-bert-zh")
    out, log = str(tmp_path / "ray"), str(tmp_path / "ray.log")
    # PYTHONFAULTHANDLER: a run that does not end is stopped with SIGABRT first, so the driver
    # and Ray's workers print where each thread was (see _stuck)
    env = dict(os.environ, BERT_REC_PROGRESS="0", PYTHONFAULTHANDLER="1",
               BERT_REC_RAY_TRAIN_FAIL_ONCE=str(tmp_path / "failed-once"))
    env.pop("TF_CONFIG", None)
    started = time.time()
    with open(log, "w", encoding="utf-8") as err:
        proc = subprocess.Popen(_train_cmd(model, subset, out, ["--epochs", "3",
                                                                "--num-workers", "2"]),
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)  # Ray's own processes with it
        try:
            code = proc.wait(timeout=2 * TIMEOUT)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            if proc.poll() is None:
                _stuck(proc)
    text = open(log, encoding="utf-8").read()
    assert code is not None, (f"no end after {time.time() - started:.0f} s; the run's log ends:"
                              f"\n{text[-6000:]}\n{_ray_worker_logs(started)}")
    assert code == 0, text[-3000:]
    assert os.path.exists(tmp_path / "failed-once")  # the worker did die
    assert "a worker was lost" in text and "resuming after epoch 1" in text
    _assert_same_history(_history(out), _history(single))
    assert len(_history(out)) == 3


def _stuck(proc):
    """Stop a run that hangs and every process it started: they share its session (Ray's
    workers each lead a process group of their own). SIGABRT first, so faulthandler prints
    each Python thread's stack to the process's stderr, then SIGKILL."""
    session = str(proc.pid)  # start_new_session=True: the driver leads the session
    subprocess.run(["pkill", "-ABRT", "-s", session], check=False)
    time.sleep(5)
    subprocess.run(["pkill", "-KILL", "-s", session], check=False)
    proc.wait(timeout=30)


def _ray_worker_logs(since, tail=3000):
    """The ends of the Ray worker logs written since ``since`` (what a hang left there)."""
    parts = []
    logs = os.path.join(tempfile.gettempdir(), "ray", "session_latest", "logs")
    for root, _, names in os.walk(logs):
        for name in sorted(names):
            path = os.path.join(root, name)
            if name.endswith((".err", ".log")) and os.path.getmtime(path) >= since and (
                    name.startswith(("worker-", "ray-train")) or root.endswith("train")):
                with open(path, encoding="utf-8", errors="replace") as f:
                    text = f.read()[-tail:].strip()
                if text:
                    parts.append(f"--- {path}\n{text}")
    return "\n".join(parts) or "(no Ray worker logs)"


def test_ray_flags_are_checked(subset, tmp_path):
    model = os.path.join(ROOT, "checkpoints", "tiny-bert-zh")
    for extra, message in ((["--ray-address", "auto"], "needs --num-workers"),
                           (["--num-workers", "2", "--distributed", "multi-worker"],
                            "leave out --distributed")):
        log = str(tmp_path / "err.log")
        proc = _start(_train_cmd(model, subset, str(tmp_path / "m"), extra), log)
        try:
            assert proc.wait(timeout=120) == 2
        finally:
            _stop([proc])
        assert message in open(log, encoding="utf-8").read()


def test_a_missing_tf_config_says_what_to_set(subset, tmp_path):
    model = os.path.join(ROOT, "checkpoints", "tiny-bert-zh")
    log = str(tmp_path / "err.log")
    proc = _start(_train_cmd(model, subset, str(tmp_path / "m"),
                             ["--distributed", "multi-worker"]), log)
    try:
        assert proc.wait(timeout=120) == 2
    finally:
        _stop([proc])
    assert "needs TF_CONFIG" in open(log, encoding="utf-8").read()


def test_shards_cover_the_global_batch():
    from bert_rec.distributed import read_tf_config, shard
    rng = np.random.default_rng(0)
    batch = (rng.integers(0, 9, (3, 4)), rng.random((3, 4)), rng.integers(0, 9, (3, 4, 3)),
             np.arange(5), np.array([0, 1, 2]), rng.random((3, 5)) > 0.5, np.array([1, 2, 0]))
    parts = [shard(batch, r, 4) for r in range(4)]  # 3 users on 4 workers: one empty shard
    real = [p for p in parts if p[7][0] > 0]
    assert len(real) == 3 and sum(p[7].sum() for p in parts) == pytest.approx(1.0)
    np.testing.assert_array_equal(np.concatenate([p[0] for p in real]), batch[0])
    assert all(np.array_equal(p[3], batch[3]) for p in parts)  # global candidates everywhere
    assert [p[7].tolist() for p in parts if p[7][0] == 0] == [[0.0]]
    cluster = {"cluster": {"chief": ["h:1"], "worker": ["h:2", "h:3"]},
               "task": {"type": "worker", "index": 1}}
    task = read_tf_config({"TF_CONFIG": json.dumps(cluster)})
    assert (task.rank, task.size, task.is_chief) == (2, 3, False)
    for bad in ("", "{", '{"cluster": {"ps": ["h:1"]}, "task": {"type": "ps"}}',
                '{"cluster": {"worker": ["h:1"]}, "task": {"type": "worker", "index": 1}}'):
        with pytest.raises(ValueError, match="TF_CONFIG"):
            read_tf_config({"TF_CONFIG": bad})
