"""Training launched on a Ray cluster: ``bert-rec train ... --num-workers N [--ray-address ADDR]``.

Ray Train's ``TensorflowTrainer`` (ray[train], pinned in requirements.txt) starts N worker
actors, sets ``TF_CONFIG`` in each (every worker's host:port and its own index) and runs the
same ``bert-rec train`` in each of them as ``--distributed multi-worker``
(bert_rec/distributed.py): the sharding, the all-reduced steps, the equality with one process
and the chief-only writes are those of that path; this module only launches it, so one Ray
cluster serves training and batch recommendation (``recommend --engine ray``). Without
``--ray-address`` Ray starts embedded on this machine.

Failures: Ray Train's own ``FailureConfig`` would rerun the training loop from its start. A
worker lost mid-run (a killed process, a lost node) instead makes this driver start the N
workers again with ``--resume`` (at most ``restarts`` times), so the job continues from the
chief's last finished epoch, as ``--resume`` does by hand. bert_rec's own errors (bad input, a
run already in --out) are not retried: they are raised as they are.

Paths: every worker opens --model, --items, --behaviors and writes --out by the same (absolute)
paths, so on several machines they must be on a file system every node sees.
"""

import os
import shutil
import sys
import tempfile

STATE_CHECKPOINT = os.path.join("training", "last", "checkpoint")  # training.STATE_DIR's
PATH_ARGS = ("model", "items", "behaviors", "out", "config", "cache_dir")
# Test hook (tests/test_distributed_training.py): a path; the first worker of rank 1 that manages to create
# it after epoch 1's state is saved kills its own process, as a lost node would.
FAIL_ONCE_ENV = "BERT_REC_RAY_TRAIN_FAIL_ONCE"


def launch(args, log=sys.stderr, restarts=2):
    """Run ``bert-rec train`` (its parsed ``args``) on ``args.num_workers`` Ray Train workers."""
    from .ray_engine import _cpus_per_actor, _unwrap, connect  # noqa: PLC0415
    if args.distributed != "off":
        raise ValueError("--num-workers launches the workers itself: leave out --distributed")
    if args.num_workers < 1:
        raise ValueError(f"--num-workers must be at least 1, got {args.num_workers}")
    worker_args = _worker_args(args)
    ray = connect(args.ray_address, log_to_driver=True, forward_env=(FAIL_ONCE_ENV,),
                  # bert_rec's lines once, as it prints them (not also through Train's logger)
                  env_vars={"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"})
    cpus = _cpus_per_actor(ray, args.num_workers)
    storage = tempfile.mkdtemp(prefix="bert_rec-ray-train-")  # Ray Train's run metadata
    try:
        for attempt in range(restarts + 1):
            try:
                return _fit(worker_args, args.num_workers, cpus, storage, retry=attempt > 0)
            except Exception as exc:  # noqa: BLE001  (Ray wraps what the workers raised)
                error = _unwrap(exc)
                if error is not exc or attempt == restarts:
                    raise (error if error is not exc else RuntimeError(
                        f"training on Ray failed {attempt + 1} time(s): {_first_line(exc)}; "
                        f"rerun with --resume to continue from the last epoch")) from None
                print(f"a worker was lost ({_first_line(exc)}): starting the "
                      f"{args.num_workers} workers again with --resume", file=log)
    finally:
        shutil.rmtree(storage, ignore_errors=True)


def _worker_args(args):
    """A copy of ``args`` for the workers: absolute paths, no Ray flags, multi-worker."""
    import argparse  # noqa: PLC0415
    values = dict(vars(args), distributed="multi-worker", num_workers=None, ray_address=None)
    for name in PATH_ARGS:
        if values.get(name):
            values[name] = os.path.abspath(values[name])
    return argparse.Namespace(**values)


def _fit(worker_args, num_workers, cpus, storage, retry):
    from ray.train import RunConfig, ScalingConfig  # noqa: PLC0415
    from ray.train.tensorflow import TensorflowTrainer  # noqa: PLC0415
    trainer = TensorflowTrainer(
        _train_worker, train_loop_config={"args": worker_args, "retry": retry},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=False,
                                     resources_per_worker={"CPU": cpus}),
        run_config=RunConfig(name="bert-rec-train", storage_path=storage))
    trainer.fit()  # raises if a worker failed


def _train_worker(config):
    """One Ray Train worker: TF_CONFIG is set; run ``bert-rec train --distributed
    multi-worker`` in this process (TensorFlow's threads limited to the worker's CPUs)."""
    import logging  # noqa: PLC0415
    from .ray_engine import _limit_threads  # noqa: PLC0415
    _limit_threads()
    logging.getLogger("tensorflow").setLevel(logging.WARNING)  # no collective-op INFO lines
    args = config["args"]
    if config["retry"] and os.path.exists(os.path.join(args.out, STATE_CHECKPOINT)):
        args.resume = True  # a restarted job: continue from the chief's last epoch
    if os.environ.get(FAIL_ONCE_ENV):
        _arm_fail_once(args.out)
    args.func(args)  # commands.cmd_train, as the parser set it


def _arm_fail_once(out):
    """The test hook: a thread of worker 1 that kills the process once epoch 1 is saved."""
    import json  # noqa: PLC0415
    import threading  # noqa: PLC0415
    import time  # noqa: PLC0415
    if json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {}).get("index") != 1:
        return
    marker = os.environ[FAIL_ONCE_ENV]

    def watch():
        while not os.path.exists(os.path.join(out, STATE_CHECKPOINT)):
            time.sleep(0.05)
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            return
        os._exit(1)
    threading.Thread(target=watch, daemon=True).start()


def _first_line(exc):
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
