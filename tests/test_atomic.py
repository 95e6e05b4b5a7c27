"""Nothing lost: writers SIGKILLed at random moments leave the old or the new version, whole.

Each test runs a writer in a subprocess that rewrites its targets in a loop (alternating two
versions A and B), kills it at seeded random moments, and checks after every kill that each
target is absent, complete A or complete B (loadable and giving A's or B's scores), and that
nothing else is left beside it but the killed writer's ``.tmp-<name>-<pid>-*`` temporaries, which
the next write removes. Training killed mid-run resumes to where an uninterrupted run ends.
"""

import json
import os
import random
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import pytest

from bert_rec.utils import atomic
from bert_rec.commands import write_output

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 20240301

WRITE_OUTPUTS = """
import sys
from bert_rec.commands import write_output
target, a, b = sys.argv[1:4]
texts = [open(a, encoding="utf-8").read(), open(b, encoding="utf-8").read()]
print("ready", flush=True)
sys.stdin.readline()
i = 0
while True:
    write_output(texts[i % 2], target)
    i += 1
"""

WRITE_MODELS = """
import sys
from bert_rec.checkpoint import save_checkpoint
from bert_rec.data import Item
from bert_rec.recommend import Recommender
model_target, ckpt_target, ckpt, titles, scale = sys.argv[1:6]
items = [Item(f"v{i}", t) for i, t in enumerate(titles.split(","))]
rec = Recommender.load(ckpt).index_items(items)
bert = rec.encoder.transformer.model
versions = [bert.get_weights(), [w * float(scale) for w in bert.get_weights()]]  # A and B
vocab = open(rec.encoder.files.vocab_path, encoding="utf-8").read().splitlines()
print("ready", flush=True)
sys.stdin.readline()
i = 0
while True:
    bert.set_weights(versions[i % 2])
    rec.save(model_target)
    save_checkpoint(rec.encoder.transformer, rec.encoder.files.config, vocab, ckpt_target)
    print("saved", flush=True)
    i += 1
"""
SCALE = 1.01  # version B of the encoder: every weight of version A times this


def _env():
    return {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "BERT_REC_PROGRESS": "0", "TF_CPP_MIN_LOG_LEVEL": "2"}


def _spawn(script, *args):
    """Start a writer; it sets up, prints 'ready' and waits for _go before writing.

    Its stderr goes to a file (a pipe nobody reads could fill up and stall it).
    """
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=_env(),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                            text=True)
    proc.log = log
    return proc


def _stderr(proc):
    """The end of what the writer printed on stderr."""
    proc.log.seek(0)
    return proc.log.read()[-3000:]


def _go(proc):
    """Wait until the writer is set up, then let it write."""
    line = _read_line(proc, proc.stdout, timeout=180)
    assert line.strip() == "ready", _stderr(proc)
    proc.stdin.write("go\n")
    proc.stdin.flush()


def _writers(script, *args, kills, seed, ahead=2, first_save=False):
    """Return an iterator over ``kills`` writers, each yielded right after its SIGKILL.

    Writers are started ``ahead`` at a time (a TensorFlow import takes seconds), the first ones
    right away; each waits until the one before it is dead before it writes. With
    ``first_save``, the first writer is killed only after it printed "saved" (one complete
    save), so a loaded machine can't make every kill land before any save finished.
    """
    rng = random.Random(seed)
    queue = [_spawn(script, *args) for _ in range(min(ahead, kills))]

    def run():
        try:
            for kill in range(kills):
                proc = queue.pop(0)
                _go(proc)
                if kill + len(queue) + 1 < kills:
                    queue.append(_spawn(script, *args))
                if first_save and kill == 0:
                    assert _read_line(proc, proc.stdout, 600).strip() == "saved"
                time.sleep(rng.uniform(0.05, 1.5))
                _kill(proc)
                yield proc
        finally:
            for waiting in queue:
                _kill(waiting, expect_alive=False)
    return run()


def _read_line(proc, stream, timeout):
    """The next line of ``stream`` within ``timeout`` seconds ('' at the end of the stream)."""
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        proc.kill()
        pytest.fail(f"no output from the writer within {timeout} s")
    return stream.readline()


def _kill(proc, expect_alive=True):
    """SIGKILL the writer and reap it (a zombie would still count as a live process)."""
    alive = proc.poll() is None
    if alive:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert alive or not expect_alive, f"the writer died by itself: {_stderr(proc)}"
    for stream in (proc.stdin, proc.stdout, getattr(proc, "log", None), proc.stderr):
        if stream is not None:
            stream.close()


def _check_leftovers(target, pids):
    """Anything beside ``target`` about it must be a temporary of a killed writer (``pids``)."""
    parent, name = os.path.split(target)
    others = [n for n in os.listdir(parent) if n != name and name in n]
    for other in others:
        assert any(other.startswith(f".tmp-{name}-{pid}-") for pid in pids), others


def test_result_file_is_old_or_new_after_sigkill(tmp_path):
    versions = []
    for tag in "AB":  # ~4 MB each, so a kill often lands mid-write
        rows = [{"user_id": f"u{i}", "version": tag, "items": [f"v{j}" for j in range(40)]}
                for i in range(12000)]
        versions.append("".join(json.dumps(r) + "\n" for r in rows))
        (tmp_path / f"{tag}.txt").write_text(versions[-1], encoding="utf-8")
    target = str(tmp_path / "out" / "recs.jsonl")
    os.makedirs(os.path.dirname(target))
    seen, pids = set(), []
    for proc in _writers(WRITE_OUTPUTS, target, tmp_path / "A.txt", tmp_path / "B.txt",
                         kills=10, seed=SEED):
        if os.path.exists(target):
            with open(target, encoding="utf-8") as f:
                text = f.read()
            assert text in versions  # complete A or complete B, never a mix or a prefix
            seen.add(text[:40])
            [json.loads(line) for line in text.splitlines()[:3]]
        pids.append(proc.pid)
        _check_leftovers(target, pids)
    assert seen  # the writer did finish writes between kills
    write_output("done\n", target)  # the next write cleans up after the killed ones
    assert os.listdir(os.path.dirname(target)) == ["recs.jsonl"]


TITLES = ["红烧肉 家常菜", "篮球 比赛", "小猫 小狗 萌宠", "旅行 风景", "手机 数码 评测", "搞笑 段子",
          "美妆 口红", "健身 跑步"]


def _variables(prefix):
    """All variables of a checkpoint prefix, as {name: array}."""
    from bert_rec.backend import tf
    reader = tf.train.load_checkpoint(prefix)
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()}


def _which(candidates, actual):
    """Index of the candidate {name: array} whose variables ``actual`` holds; fails if none.

    (A written encoder checkpoint holds the source checkpoint's BERT variables, not its heads.)
    """
    assert "bert/embeddings/word_embeddings" in actual
    for index, expected in enumerate(candidates):
        if all(k in expected and np.array_equal(expected[k], actual[k]) for k in actual):
            return index
    pytest.fail("the files match neither the old nor the new version")


def test_model_and_checkpoint_are_old_or_new_after_sigkill(tiny_ckpt, tmp_path):
    from bert_rec.checkpoint import find_checkpoint, save_checkpoint
    from bert_rec.data import Behavior, Item
    from bert_rec.recommend import Recommender
    items = [Item(f"v{i}", t) for i, t in enumerate(TITLES)]
    users = [[Behavior("u", "v0", "click", 1e9), Behavior("u", "v3", "comment", 1e9 + 60,
                                                          text="小猫 好看")],
             [Behavior("w", "v5", "comment", 1e9, text="篮球 比赛 精彩")]]
    model, ckpt = str(tmp_path / "model"), str(tmp_path / "ckpt")
    writers = _writers(WRITE_MODELS, model, ckpt, tiny_ckpt, ",".join(TITLES), SCALE, kills=5,
                       seed=SEED + 1, first_save=True)  # they set up while we compute what to expect
    rec = Recommender.load(tiny_ckpt).index_items(items)
    bert = rec.encoder.transformer.model
    weights = bert.get_weights()
    expected_scores = [rec.score(users)]
    bert.set_weights([w * SCALE for w in weights])
    expected_scores.append(rec.score(users))  # behaviour texts are encoded with B's weights
    bert.set_weights(weights)
    assert not np.allclose(*expected_scores, atol=1e-5)
    variables_a = _variables(find_checkpoint(tiny_ckpt).ckpt_prefix)
    expected_vars = [variables_a, {k: v * SCALE for k, v in variables_a.items()}]
    reference_files = None
    versions, pids = set(), []
    for kill, proc in enumerate(writers):
        pids.append(proc.pid)
        for target in (model, ckpt):
            _check_leftovers(target, pids)
        if os.path.exists(ckpt):
            files = find_checkpoint(ckpt)  # complete: all files there, none truncated
            versions.add(_which(expected_vars, _variables(files.ckpt_prefix)))
        if os.path.exists(model):
            names = sorted(os.listdir(model))
            reference_files = reference_files or names
            assert names == reference_files  # never a partial directory
            version = _which(expected_vars, _variables(find_checkpoint(model).ckpt_prefix))
            if kill % 2 == 0:  # loading costs ~1 s: check the scores every other kill
                scores = Recommender.load(model).index_items(items).score(users)
                np.testing.assert_allclose(scores, expected_scores[version], atol=1e-5)
    assert versions  # a save completed between kills
    # The next save removes what the killed writers left behind.
    rec.save(model)
    save_checkpoint(rec.encoder.transformer, rec.encoder.files.config,
                    open(rec.encoder.files.vocab_path, encoding="utf-8").read().splitlines(), ckpt)
    assert sorted(os.listdir(tmp_path)) == ["ckpt", "model"]


def test_stale_temporaries_of_live_writers_are_kept(tmp_path):
    target = str(tmp_path / "model")
    live = tmp_path / f".tmp-model-{os.getppid()}-abc123"  # our parent: alive
    dead = tmp_path / ".tmp-model-999999999-abc123"  # no such process
    other = tmp_path / ".tmp-model-2-999999999-abc123"  # another target, "model-2"
    for path in (live, dead, other):
        path.mkdir()
    assert atomic.remove_stale(target) == [str(dead)]
    assert live.exists() and other.exists() and not dead.exists()


@pytest.mark.parametrize("exchange", [True, False])
def test_replace_dir_keeps_the_training_state(exchange, tmp_path, monkeypatch):
    if not exchange:  # the two-rename fallback used where renameat2 is missing
        monkeypatch.setattr(atomic, "_exchange", lambda src, dst: False)
    target = tmp_path / "model"
    (target / "training").mkdir(parents=True)
    (target / "training" / "state").write_text("epoch 3")
    (target / "weights").write_text("old")
    staging = atomic.staging_dir(str(target))
    with open(os.path.join(staging, "weights"), "w") as f:
        f.write("new")
    atomic.replace_dir(staging, str(target), keep=("training",))
    assert (target / "weights").read_text() == "new"
    assert (target / "training" / "state").read_text() == "epoch 3"
    assert os.listdir(tmp_path) == ["model"]


def test_interrupted_two_rename_swap_is_recovered(tmp_path):
    """Without renameat2 the swap is two renames; a kill between them is undone on next write."""
    target = tmp_path / "model"
    (tmp_path / ".tmp-model.old").mkdir()
    (tmp_path / ".tmp-model.old" / "f").write_text("old")
    atomic.recover(str(target))
    assert (target / "f").read_text() == "old" and not (tmp_path / ".tmp-model.old").exists()
    (tmp_path / "model.old").mkdir()  # a folder of the user's: never touched
    staging = atomic.staging_dir(str(target))
    atomic.replace_dir(staging, str(target))
    assert (tmp_path / "model.old").is_dir() and sorted(os.listdir(tmp_path)) == [
        "model", "model.old"]


# --------------------------------------------------------------------------- training


def _training_data(tmp_path):
    sys.path.insert(0, os.path.dirname(__file__))
    from test_training import _dataset
    items, histories = _dataset()
    items_path, behaviors_path = tmp_path / "items.jsonl", tmp_path / "behaviors.jsonl"
    items_path.write_text("".join(json.dumps({"item_id": i.item_id, "title": i.title}) + "\n"
                                  for i in items), encoding="utf-8")
    behaviors_path.write_text("".join(
        json.dumps({"user_id": b.user_id, "item_id": b.item_id, "behavior": b.behavior,
                    "timestamp": b.timestamp, "text": b.text}, ensure_ascii=False) + "\n"
        for h in histories.values() for b in h), encoding="utf-8")
    return ["--items", str(items_path), "--behaviors", str(behaviors_path)]


TRAIN_ARGS = ["--epochs", "4", "--batch-size", "16", "--extra-negatives", "8", "--patience", "10",
              "--learning-rate", "0.01", "-k", "5"]


def _kill_after_epoch(proc, epoch, delay, outcome):
    """Watch a training's stderr; SIGKILL it ``delay`` s after 'epoch N/' (run in a thread)."""
    try:
        deadline = time.time() + 300
        line = ""
        while not line.startswith(f"epoch {epoch}/"):
            line = _read_line(proc, proc.stderr, deadline - time.time())
            assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(delay)
        _kill(proc)
        outcome.append("killed")
    except BaseException as error:  # reported by the test
        outcome.append(error)


def test_training_killed_mid_run_resumes_to_the_uninterrupted_result(tiny_ckpt, tmp_path):
    from bert_rec.cli import main
    data = _training_data(tmp_path)
    full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
    proc = subprocess.Popen([sys.executable, "-m", "bert_rec.cli", "train", "--model", tiny_ckpt,
                             *data, "--out", resumed, *TRAIN_ARGS], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    outcome = []
    delay = random.Random(SEED).uniform(0.0, 0.5)  # in epoch 3, or writing its state
    watcher = threading.Thread(target=_kill_after_epoch, args=(proc, 2, delay, outcome))
    watcher.start()
    # meanwhile, the uninterrupted run with the same seed
    assert main(["train", "--model", tiny_ckpt, *data, "--out", full, *TRAIN_ARGS]) == 0
    watcher.join(timeout=300)
    assert outcome == ["killed"], outcome
    with open(os.path.join(resumed, "training", "history.json"), encoding="utf-8") as f:
        assert len(json.load(f)) in (2, 3, 4)
    assert main(["train", "--model", tiny_ckpt, *data, "--out", resumed, *TRAIN_ARGS,
                 "--resume"]) == 0
    histories = []
    for out in (full, resumed):
        with open(os.path.join(out, "training", "history.json"), encoding="utf-8") as f:
            histories.append(json.load(f))
    assert [h["epoch"] for h in histories[1]] == [1, 2, 3, 4]
    for a, b in zip(*histories):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
        assert a["val_ndcg"] == pytest.approx(b["val_ndcg"], abs=1e-6)
    from bert_rec.checkpoint import read_arrays
    heads = [read_arrays(os.path.join(out, "head.npz")) for out in (full, resumed)]
    assert heads[0].keys() == heads[1].keys()
    for name in heads[0]:
        np.testing.assert_allclose(heads[0][name], heads[1][name], atol=1e-5)
