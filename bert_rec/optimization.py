"""Small training helpers shared by pretraining, sentiment fine-tuning and the towers.

- :func:`bucketed_batches`: shuffled batches of similar-length examples (little padding);
- :class:`WarmupLinearDecay`: BERT's learning-rate schedule (linear warm-up, linear decay).
"""

import numpy as np

from .backend import keras, tf

POOL_SIZE = 50   # batches' worth of examples sorted by length together (bucketing)


def bucketed_batches(lengths, batch_size, rng):
    """Shuffled batches of example indices; examples of similar length share a batch."""
    order = rng.permutation(len(lengths))
    lengths = np.asarray(lengths)
    batches = []
    pool = batch_size * POOL_SIZE
    for start in range(0, len(order), pool):
        chunk = order[start:start + pool]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]


class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to ``peak`` over ``warmup`` steps, then linear decay to 0."""

    def __init__(self, peak, total_steps, warmup):
        self.peak = float(peak)
        self.total_steps = max(int(total_steps), 1)
        self.warmup = max(int(warmup), 1)

    def __call__(self, step):
        step = tf.cast(step, tf.float32) + 1.0
        up = step / self.warmup
        down = (self.total_steps - step + 1.0) / max(self.total_steps - self.warmup + 1, 1)
        return self.peak * tf.clip_by_value(tf.minimum(up, down), 0.0, 1.0)

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total_steps, "warmup": self.warmup}
