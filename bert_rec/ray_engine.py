"""Batch recommendation on Ray Data: ``bert-rec recommend --engine ray`` (and scripts/infer.py).

Ray (pinned in requirements.txt) is the engine teams with a nightly job for every user already
run; Ray Data gives what a home-made scheduler would have to re-invent: sharded reads, actor
pools whose actors keep a loaded model between batches, a shuffle that groups rows by key, and
task retries when an actor dies. The single-process path (``Recommender.recommend``) stays the
default; this one gives the same top-k, scores and explanations, because every step below runs
bert_rec's own code on the same inputs:

1. *Read*: one Ray task per part file (a file, or every ``.jsonl[.gz]``/``.csv[.gz]``/
   ``.parquet`` file of a folder, in name order) runs ``read_items``/``read_behaviors`` on it —
   the same checks and file:line errors as the single-process path.
2. *Catalogue*: the items (first occurrence of an id across part files) are encoded once, in
   batches, by an actor pool (``map_batches``; each actor loads the model directory once). The
   driver gathers the encoder vectors in catalogue order and puts (items, vectors) into the
   object store once.
3. *Users*: one Ray task per behaviour part file runs ``read_behaviors`` on it and splits what
   it read into ``buckets`` lists by a stable hash of the user id (``num_returns``: each list is
   its own object, so a bucket's behaviours travel from the readers straight to the actor that
   scores them, never through the driver). A pool of UserScorer actors, each of which indexed
   the catalogue from those vectors (``Recommender.index_items(items, raw)``: the same item
   vectors), scores and explains one bucket per call and writes its users as one part file
   ``part-NNNNN.jsonl`` (the ``recommend --format json`` schema, one object per line and user),
   atomically. (Ray Data's ``groupby`` + ``map_groups`` did this in an earlier draft: on a
   cluster of one-CPU nodes its shuffle tasks waited for the CPUs the scorer actors held.)
4. *Commit*: the parts are written into a fresh staging folder beside ``--output DIR``; when
   all are there the old DIR (a previous or failed run's) is replaced by it and ``_SUCCESS``
   is written last. A retried group rewrites its own part file (same name), so a killed actor
   leaves nothing twice and nothing missing.
"""

import os
import shutil
import sys
import time
import uuid
import zlib

import numpy as np

from .data import ACCEPTED_EXTENSIONS, Behavior, InputError, Item, group_by_user
from .utils.atomic import write_text
from .utils.terminal import safe, safe_json

SUCCESS = "_SUCCESS"
PART_PREFIX = "part-"
# Test hook (tests/test_ray_engine.py): a path; the first scoring call that manages to create it
# kills its own actor process (os._exit), as a crashed or pre-empted node would.
FAIL_ONCE_ENV = "BERT_REC_RAY_FAIL_ONCE"
ITEM_BATCH = 512  # items per encoding batch


def part_files(path, what):
    """The part files of ``path``: itself if it is a file, else the data files of the folder
    (names not starting with '_' or '.'), sorted by name."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise InputError(path, None, None, "no such file or folder",
                         hint=f"Pass the {what} file, or a folder of its part files.")
    parts = sorted(os.path.join(path, name) for name in os.listdir(path)
                   if not name.startswith(("_", ".")) and name.lower().endswith(
                       ACCEPTED_EXTENSIONS))
    if not parts:
        raise InputError(path, None, None, f"the folder holds no {what} part files",
                         hint=f"Part files end in {', '.join(ACCEPTED_EXTENSIONS)}.")
    return parts


def bucket_of(user_id, buckets):
    """The group a user's behaviours go to (a stable hash: the same on every node and run)."""
    return zlib.crc32(user_id.encode("utf-8")) % buckets


# -- step 1: reading (Ray tasks, bert_rec's readers) ------------------------------------------
def _read_item_part(path, on_error):
    """Ray task: ``read_items`` on one part file. Returns (items, rows skipped)."""
    from .data import read_items  # noqa: PLC0415
    items, report = read_items(path, on_error=on_error)
    return items, report.rows - report.kept


def _read_behavior_part(path, on_error, names, item_ids, salt, users, buckets):
    """Ray task: ``read_behaviors`` on one part file, split by user bucket. Returns
    ``buckets`` lists of Behavior (file order) and, last, the number of behaviours kept."""
    from .data import read_behaviors  # noqa: PLC0415
    from .utils.privacy import user_id_hasher  # noqa: PLC0415
    behaviors, _ = read_behaviors(
        path, on_error=on_error, behaviors=names, item_ids=item_ids,
        map_user_id=user_id_hasher(salt) if salt is not None else None)
    groups = [[] for _ in range(buckets)]
    for b in behaviors:
        if users is None or b.user_id in users:
            groups[bucket_of(b.user_id, buckets)].append(b)
    return (*groups, sum(map(len, groups)))


def _limit_threads():
    """In a Ray worker, before TensorFlow loads: as many TF threads as CPUs Ray gave the actor
    (TF's default, every core of the node, oversubscribes a node shared by several actors)."""
    import ray  # noqa: PLC0415
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    if cpus:
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", str(max(1, int(cpus))))
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
    os.environ.setdefault("BERT_REC_PROGRESS", "0")


# -- step 2: the catalogue ------------------------------------------------------------------
def _items_of(batch):
    return [Item(str(i), str(t), str(x), str(c), tuple(str(g) for g in tags))
            for i, t, x, c, tags in zip(batch["item_id"], batch["title"], batch["text"],
                                        batch["category"], batch["tags"])]


class ItemEncoder:
    """Actor: loads the model directory once; encodes batches of items to encoder vectors."""

    def __init__(self, model, overrides, precision, cache_dir):
        _limit_threads()
        from .recommend import Recommender  # noqa: PLC0415
        self.rec = Recommender.load(model, overrides=overrides, precision=precision,
                                    cache_dir=cache_dir)

    def __call__(self, batch):
        return {"n": batch["n"], "raw": self.rec.encode_items(_items_of(batch))}  # [B, H]


# -- step 3: users ------------------------------------------------------------------------------
class UserScorer:
    """Ray actor: loads the model and indexes the catalogue from the shared encoder vectors
    once, then scores, explains and writes one bucket of users per call."""

    def __init__(self, model, overrides, precision, cache_dir, catalogue, index, k, explain,
                 staging):
        _limit_threads()
        from .recommend import Recommender  # noqa: PLC0415
        items, raw = catalogue  # resolved by Ray from the object store: one copy per node
        self.rec = Recommender.load(model, overrides=overrides, precision=precision,
                                    cache_dir=cache_dir)
        self.rec.index_items(items, raw=raw).use_index(index)
        self.k, self.explain, self.staging = k, explain, staging

    def score(self, bucket, *parts):
        """Recommend for the users of ``bucket`` (their behaviours: one list per behaviour part
        file, in file order); write them as one part file. Returns the number of users."""
        _maybe_die()
        histories = group_by_user(b for part in parts for b in part)
        if not histories:
            return 0
        results = self.rec.recommend(histories, k=self.k, explain=self.explain)
        # same name on a retry: a retried bucket replaces its own file, never adds a second
        write_text(os.path.join(self.staging, f"{PART_PREFIX}{bucket:05d}.jsonl"),
                   "".join(safe_json(r.to_dict()) + "\n" for r in results))
        return len(results)


def _maybe_die():
    """The test hook: the first call that creates the marker file kills its own process."""
    marker = os.environ.get(FAIL_ONCE_ENV)
    if marker:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os._exit(1)  # this actor dies mid-task: Ray restarts it and retries the bucket


# -- the job ---------------------------------------------------------------------------------
def _unwrap(exc):
    """bert_rec's own error (an InputError or ValueError) inside a Ray failure, else ``exc``:
    Ray wraps a task's exception in its own types, linked by ``cause``, ``__cause__`` and
    ``__context__``."""
    todo, seen = [exc], set()
    while todo:
        error = todo.pop(0)
        if error is None or id(error) in seen:
            continue
        seen.add(id(error))
        if isinstance(error, ValueError) and not type(error).__module__.startswith("ray"):
            return error
        todo += [getattr(error, "cause", None), error.__cause__, error.__context__]
    return exc


def connect(address=None, num_cpus=None, log_to_driver=False, env_vars=None, forward_env=()):
    """``ray.init``: the cluster at ``address``, or an embedded local one (no dashboard).
    ``env_vars``: set in every task and actor of the job, with those of this process's
    variables named in ``forward_env`` that are set (test hooks); ``log_to_driver``: show what
    they print (training shows its epochs; recommendation prints its own progress)."""
    import logging  # noqa: PLC0415
    import ray  # noqa: PLC0415
    for name in ("ray", "ray.data", "ray.train"):  # bert_rec prints its own progress lines
        logging.getLogger(name).setLevel(logging.ERROR)
    if ray.is_initialized():
        return ray
    env = {"env_vars": {"BERT_REC_PROGRESS": "0", "TF_CPP_MIN_LOG_LEVEL": "2",
                        **(env_vars or {}),
                        **{name: os.environ[name] for name in forward_env
                           if os.environ.get(name)}}}
    options = {"runtime_env": env, "logging_level": "ERROR", "log_to_driver": log_to_driver,
               # the Python logging of the job's processes: no INFO lines of Ray or TF
               "logging_config": ray.LoggingConfig(log_level="ERROR")}
    if address:
        ray.init(address=address, **options)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **options)
    return ray


def run(model, items_path, behaviors_path, output, *, k=10, explain=3, index="exact",
        overrides=None, precision="float32", on_error="raise", behavior_names=(),
        hash_user_ids=None, users=None, num_actors=2, buckets=None, address=None, log=None,
        cache_dir=None):
    """Recommend for every user of ``behaviors_path`` on Ray; write part files to ``output``.

    Returns (users written, items). ``users``: only these user ids (already hashed under
    ``hash_user_ids``), else all. ``buckets``: user groups (default 4 per actor).
    ``cache_dir``: the encode cache every actor reads and adds to (on a cluster: a shared
    folder, or each node keeps its own); None: no cache.
    """
    from .data import DEFAULT_BEHAVIORS  # noqa: PLC0415
    log = log or sys.stderr
    started = time.time()
    # the tasks and actors run in other working directories, maybe on other machines
    model, items_path, behaviors_path = map(os.path.abspath, (model, items_path, behaviors_path))
    item_parts = part_files(items_path, "items")
    behavior_parts = part_files(behaviors_path, "behaviours")
    ray = connect(address, forward_env=(FAIL_ONCE_ENV,))
    import ray.data  # noqa: PLC0415
    _quiet(ray)
    per_actor = _cpus_per_actor(ray, num_actors)
    model_args = {"model": model, "overrides": overrides, "precision": precision,
                  "cache_dir": cache_dir and os.path.abspath(cache_dir)}
    staging = f"{os.path.abspath(output).rstrip(os.sep)}.tmp-{uuid.uuid4().hex[:8]}"
    buckets = buckets or 4 * num_actors
    try:
        items, raw = _catalogue(ray, item_parts, on_error, model_args, num_actors, per_actor,
                                log)
        print(f"encoded {len(items)} items on {num_actors} actor(s) in "
              f"{time.time() - started:.1f} s", file=log)
        os.makedirs(staging)
        reader = {"on_error": on_error,
                  "names": tuple(DEFAULT_BEHAVIORS) + tuple(behavior_names or ()),
                  "item_ids": ray.put({item.item_id for item in items}),  # once, not per task
                  "salt": hash_user_ids,
                  "users": set(users) if users else None, "buckets": buckets}
        read = ray.remote(_read_behavior_part).options(num_returns=buckets + 1)
        parts = [read.remote(path, **reader) for path in behavior_parts]
        # Every read finishes before the scorers take the CPUs (a read task waiting for a CPU
        # an idle scorer holds would wait forever on a small cluster).
        if not sum(ray.get([refs[-1] for refs in parts])):
            raise InputError(behaviors_path, None, None, "no behaviours to recommend from")
        scorer = {**model_args, "catalogue": ray.put((items, raw)), "index": index, "k": k,
                  "explain": explain, "staging": staging}
        written = _score_buckets(ray, parts, buckets, scorer, num_actors, per_actor)
        _commit(staging, output)
    except Exception as exc:  # noqa: BLE001  (a Ray task failure wraps bert_rec's own error)
        shutil.rmtree(staging, ignore_errors=True)
        error = _unwrap(exc)
        if error is exc:
            raise
        raise error from None
    print(f"recommended for {written} user(s) from {len(items)} items in "
          f"{time.time() - started:.1f} s: part files in {safe(output)}",
          file=log)
    return written, len(items)


def _quiet(ray):
    """No Ray Data progress bars or INFO lines: bert_rec prints its own progress."""
    import logging  # noqa: PLC0415
    import warnings  # noqa: PLC0415
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    for name in ("ray", "ray.data"):  # again: importing ray.data configures its loggers
        logging.getLogger(name).setLevel(logging.ERROR)
    # "only received N input(s)": a small catalogue has fewer blocks than actors; harmless
    warnings.filterwarnings("ignore", module="ray.data")


def _cpus_per_actor(ray, num_actors):
    """CPUs each actor reserves: 1, or a share when there are more actors than CPUs (an actor
    that waits for a CPU no one frees would stall the job)."""
    total = ray.cluster_resources().get("CPU", 1.0)
    return min(1.0, total / num_actors)


def _score_buckets(ray, parts, buckets, scorer, num_actors, per_actor):
    """Score every bucket on a pool of ``num_actors`` UserScorer actors; users written.

    A killed actor is restarted (``max_restarts``) and the call it was running is retried on
    it (``max_task_retries``); the call's inputs stay in the object store until it is done."""
    from ray.util import ActorPool  # noqa: PLC0415
    remote = ray.remote(num_cpus=per_actor, max_restarts=3, max_task_retries=3)(UserScorer)
    actors = [remote.remote(**scorer) for _ in range(num_actors)]
    try:
        pool = ActorPool(actors)
        counts = pool.map_unordered(
            lambda actor, b: actor.score.remote(b, *[refs[b] for refs in parts]),
            range(buckets))
        return sum(counts)
    finally:
        for actor in actors:
            ray.kill(actor)


def _catalogue(ray, item_parts, on_error, model_args, num_actors, per_actor, log):
    """(items in catalogue order, their encoder vectors [M, H]): read by Ray tasks with
    ``read_items``, encoded by a Ray Data actor pool (``map_batches``)."""
    read = ray.remote(_read_item_part)
    # every read finishes before the encoder pool takes the CPUs the read tasks need
    parts = ray.get([read.remote(path, on_error) for path in item_parts])
    items, first, skipped = [], {}, 0
    for path, (part, dropped) in zip(item_parts, parts):
        skipped += dropped
        for item in part:
            if item.item_id in first:  # read_items checked within a file; this, across files
                if first[item.item_id] != item:
                    raise InputError(path, None, "item_id",
                                     f"item_id {item.item_id!r} appears in two part files "
                                     f"with different content", hint="Keep one of them.")
                continue
            first[item.item_id] = item
            items.append(item)
    if not items:
        raise InputError(item_parts[0], None, None, "no items to recommend")
    print(f"{len(items)} items from {len(item_parts)} part file(s)"
          + (f" ({skipped} row(s) skipped)" if skipped else ""), file=log)
    rows = [{"n": n, "item_id": it.item_id, "title": it.title, "text": it.text,
             "category": it.category, "tags": list(it.tags)} for n, it in enumerate(items)]
    table = ray.data.from_items(  # blocks enough to give every actor work
        rows, override_num_blocks=max(num_actors, -(-len(rows) // ITEM_BATCH)))
    encoded = table.map_batches(ItemEncoder, batch_size=ITEM_BATCH, batch_format="numpy",
                                compute=ray.data.ActorPoolStrategy(size=num_actors),
                                num_cpus=per_actor, fn_constructor_kwargs=model_args)
    raw = None
    for batch in encoded.iter_batches(batch_format="numpy", batch_size=None):
        vectors = np.asarray(batch["raw"], np.float32)
        if raw is None:
            raw = np.zeros((len(items), vectors.shape[1]), np.float32)
        raw[np.asarray(batch["n"], np.int64)] = vectors
    return items, raw


def _commit(staging, output):
    """Replace ``output`` by the complete ``staging`` folder, then write ``_SUCCESS`` last."""
    if os.path.isdir(output):
        old = f"{output.rstrip(os.sep)}.old-{uuid.uuid4().hex[:8]}"
        os.rename(output, old)
        os.rename(staging, output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if os.path.exists(output):
            raise InputError(output, None, None, "exists and is not a folder",
                             hint="--engine ray writes a folder of part files: pick another "
                                  "--output.")
        os.rename(staging, output)
    write_text(os.path.join(output, SUCCESS), "")


def read_output(folder):
    """{user_id: result dict} of a finished run's part files (refuses an unfinished one)."""
    import json  # noqa: PLC0415
    if not os.path.exists(os.path.join(folder, SUCCESS)):
        raise InputError(folder, None, None, f"no {SUCCESS}: the run did not finish")
    results = {}
    for name in sorted(os.listdir(folder)):
        if name.startswith(PART_PREFIX):
            with open(os.path.join(folder, name), encoding="utf-8") as f:
                for line in f:
                    record = json.loads(line)
                    if record["user_id"] in results:
                        raise ValueError(f"{name}: user {record['user_id']!r} written twice")
                    results[record["user_id"]] = record
    return results
