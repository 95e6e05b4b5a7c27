"""Training on several processes (``bert-rec train --distributed multi-worker``).

``tf.distribute.MultiWorkerMirroredStrategy``, configured by the ``TF_CONFIG`` environment
variable (the cluster's ``host:port`` of every worker and this process's task), the same way as
any TensorFlow multi-worker job, so a launcher that sets TF_CONFIG (a cluster manager, Ray
Train's ``TensorflowTrainer``, a shell loop) starts it. Every worker runs the same command.

A step gives the same update as one process with the same global batch and seed:

- every worker builds the same global batch (``training.training_batch``) from the same
  (seed, epoch) order and random negatives, and keeps its contiguous slice of the batch's users
  (:func:`shard`) while the candidate set stays the global one, so the in-batch negatives are
  exactly the single process's; the slices flow through a ``tf.data`` pipeline per worker
  (``distribute_datasets_from_function``, input pipeline i = worker i);
- a worker's loss is the sum of its examples' losses / the GLOBAL batch size (example weights
  1/B), and the optimizers all-reduce (sum) the workers' gradients: the sum is the single
  process's mean gradient up to float summation order. A worker with no user in a short last
  batch takes one with weight 0 (an exact zero contribution);
- validation runs on the chief only; its metrics reach the other workers through an
  all-reduce, so every worker takes the same early-stopping decisions.

Randomness: with a frozen encoder (``--train-layers 0``) no random op runs in a step (the
towers have no dropout). With ``--train-layers N`` the encoder runs with its dropout
(``hidden_dropout_prob``, ``attention_probs_dropout_prob`` of bert_config.json); each worker
draws its own masks (seed folded with its rank), so such runs match a single process in
distribution, not value; with both dropouts 0 they match it as the frozen runs do.

Files: only the chief writes the model directory, history.json, the curves and the
checkpoints; the other workers save theirs (checkpoint saving is a step every worker takes) to
a temporary directory they delete. ``--resume`` restores every worker from the chief's last
state in OUT/training/: on a real cluster OUT must be on a file system every worker can read.
"""

import atexit
import contextlib
import dataclasses
import json
import os
import shutil
import tempfile

import numpy as np

from .backend import keras, tf
from .utils.progress import progress_bar

TASK_TYPES = ("chief", "worker")
METRICS = ("hr", "ndcg", "mrr")
TF_CONFIG_HELP = (
    'set TF_CONFIG on every worker to the same cluster and its own task, e.g. '
    'TF_CONFIG=\'{"cluster": {"worker": ["10.0.0.1:2222", "10.0.0.2:2222"]}, '
    '"task": {"type": "worker", "index": 0}}\' (index 1 on the second worker; worker 0, or a '
    '"chief" task, is the chief)')


@dataclasses.dataclass(frozen=True)
class Task:
    """This process's place in the cluster: TF_CONFIG's task type and index, its rank among
    all ``size`` workers (the chief first) and whether it is the chief."""
    type: str
    index: int
    rank: int
    size: int

    @property
    def is_chief(self):
        return self.rank == 0


def read_tf_config(environ=None):
    """The :class:`Task` of TF_CONFIG (``environ``: default os.environ), validated."""
    raw = (os.environ if environ is None else environ).get("TF_CONFIG", "")
    if not raw.strip():
        raise ValueError(f"--distributed multi-worker needs TF_CONFIG: {TF_CONFIG_HELP}")
    try:
        spec = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not JSON ({e}): {TF_CONFIG_HELP}") from None
    cluster = spec.get("cluster") if isinstance(spec, dict) else None
    task = spec.get("task") if isinstance(spec, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise ValueError(f"TF_CONFIG needs a 'cluster' and a 'task' object: {TF_CONFIG_HELP}")
    unknown = sorted(set(cluster) - set(TASK_TYPES))
    if unknown or "worker" not in cluster and "chief" not in cluster:
        raise ValueError(f"TF_CONFIG's cluster may list only 'chief' and 'worker' tasks, got "
                         f"{sorted(cluster)}: {TF_CONFIG_HELP}")
    for kind, addresses in cluster.items():
        if (not isinstance(addresses, list) or not addresses or
                not all(isinstance(a, str) and a.rpartition(":")[2].isdigit() for a in addresses)):
            raise ValueError(f"TF_CONFIG cluster.{kind} must be a list of 'host:port' strings, "
                             f"got {addresses!r}: {TF_CONFIG_HELP}")
    kind, index = task.get("type"), task.get("index", 0)
    if kind not in cluster or isinstance(index, bool) or not isinstance(index, int) or \
            not 0 <= index < len(cluster[kind]):
        raise ValueError(f"TF_CONFIG's task {task!r} is not in its cluster (type one of "
                         f"{sorted(cluster)}, index from 0): {TF_CONFIG_HELP}")
    if kind == "chief" and len(cluster["chief"]) != 1:
        raise ValueError(f"TF_CONFIG lists {len(cluster['chief'])} chiefs: at most one")
    chiefs = len(cluster.get("chief", ()))
    rank = index if kind == "chief" else chiefs + index
    return Task(kind, index, rank, chiefs + len(cluster.get("worker", ())))


def shard(batch, rank, size):
    """Worker ``rank``'s part of a global batch (``training.training_batch``'s 7 arrays): its
    contiguous slice of the users' unit rows/weights/features, target positions, own-items
    mask and click negatives, the global candidate rows, and example weights [b] of 1/B (B: the
    global batch size). An empty slice becomes the batch's first user with weight 0."""
    rows, weights, features, cand, pos, mask, click_neg = batch
    total = len(pos)
    start, stop = rank * total // size, (rank + 1) * total // size
    part = slice(start, stop) if stop > start else slice(0, 1)
    example_weights = np.full(max(stop - start, 1), 1.0 / total if stop > start else 0.0,
                              np.float32)  # [b]
    return (rows[part], weights[part], features[part], cand, pos[part], mask[part],
            click_neg[part], example_weights)


class Cluster:
    """The strategy of a multi-worker run and this worker's part in it. Create it before any
    other TensorFlow op (the strategy configures the runtime's collective ops)."""

    def __init__(self, task=None):
        self.task = task or read_tf_config()
        self.strategy = tf.distribute.MultiWorkerMirroredStrategy()
        if self.strategy.num_replicas_in_sync != self.task.size:
            raise ValueError(f"the strategy has {self.strategy.num_replicas_in_sync} replicas for "
                             f"{self.task.size} workers in TF_CONFIG: run one replica per "
                             f"worker (hide extra GPUs with CUDA_VISIBLE_DEVICES)")
        self._temporary = []
        self._step = None
        # (tf.identity: an all-reduce of the function's input itself finds no device to go to)
        self._sum = tf.function(lambda v: self.strategy.run(
            lambda x: tf.distribute.get_replica_context().all_reduce("sum", tf.identity(x)),
            args=(v,)))

    @property
    def is_chief(self):
        return self.task.is_chief

    def scope(self):
        """Build the model, optimizers and variables in here (they become mirrored)."""
        return self.strategy.scope()

    def save_dir(self, state_dir):
        """Where this worker saves its checkpoints: ``state_dir`` on the chief, a temporary
        directory (deleted by :meth:`cleanup`) on the others."""
        if self.is_chief:
            return state_dir
        path = tempfile.mkdtemp(prefix=f"bert_rec-{self.task.type}{self.task.index}-")
        atexit.register(shutil.rmtree, path, ignore_errors=True)  # also after an error
        self._temporary.append(path)
        return path

    def cleanup(self):
        for path in self._temporary:
            shutil.rmtree(path, ignore_errors=True)
        self._temporary = []

    def all_reduce(self, values):
        """Sum of a float vector over the workers (float64), the same on every worker."""
        out = self._sum(tf.constant(np.asarray(values, np.float64)))
        return self.strategy.experimental_local_results(out)[0].numpy()

    def epoch(self, trainer, order, rng, steps):
        """This worker's part of one epoch of ``trainer`` (examples in ``order``, negatives
        from ``rng``): the steps on its shards, validation on the chief. Returns (mean loss,
        mean in-batch accuracy, validation metrics), the same on every worker."""
        if self._step is None:
            self._step = self._step_function(trainer)
        inputs = self.strategy.distribute_datasets_from_function(
            lambda context: self._dataset(trainer, order, rng, steps, context))
        iterator = iter(inputs)
        loss = accuracy = 0.0
        with _lost_worker(), progress_bar(total=steps, desc="steps", unit="step") as bar:
            for _ in range(steps):
                parts = self._step(iterator)
                part_loss, part_acc = (self.strategy.experimental_local_results(p)[0]
                                       for p in parts)
                loss, accuracy = loss + float(part_loss), accuracy + float(part_acc)
                bar.update(1)
            metrics = trainer.validate(trainer.val_cases) if self.is_chief else {}
            total = self.all_reduce([loss, accuracy] + [metrics.get(k, 0.0) for k in METRICS])
        return total[0] / steps, total[1] / steps, dict(zip(METRICS, total[2:].tolist()))

    def barrier(self):
        """Wait until every worker gets here."""
        with _lost_worker():
            self.all_reduce([0.0])

    def _dataset(self, trainer, order, rng, steps, context):
        """tf.data pipeline of this worker's shards (input pipeline i = worker i)."""
        size = trainer.config.batch_size

        def shards():
            for s in range(steps):
                yield shard(trainer._batch(order[s * size:(s + 1) * size], rng),
                            context.input_pipeline_id, context.num_input_pipelines)
        spec = tf.TensorSpec
        signature = (spec([None, None], tf.int32), spec([None, None], tf.float32),
                     spec([None, None, None], tf.int32), spec([None], tf.int32),
                     spec([None], tf.int32), spec([None, None], tf.bool), spec([None], tf.int32),
                     spec([None], tf.float32))
        return tf.data.Dataset.from_generator(shards, output_signature=signature).prefetch(2)

    def _step_function(self, trainer):
        """tf.function: one step of ``trainer._step`` on every worker's next shard."""
        # Dropout (only with trained encoder layers) draws different masks on each worker.
        keras.utils.set_random_seed(int(np.random.SeedSequence(
            [trainer.config.seed, self.task.rank]).generate_state(1)[0] >> 1))

        @tf.function
        def step(iterator):
            return self.strategy.run(trainer._step, args=next(iterator))
        return step


@contextlib.contextmanager
def _lost_worker():
    """Turn the error a collective op raises when a worker died into one saying what to do."""
    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
            tf.errors.CancelledError, tf.errors.AbortedError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConnectionError(f"a worker of the cluster stopped ({first[:200]}): restart every "
                              f"worker with --resume to continue from the last epoch") from None
