"""The tf.data input pipeline: training batches in a fresh order each epoch, with the `fast`
recipe's light random affine augmentation.

Batches are drawn from a new permutation each epoch, gathered from the in-memory uint8 arrays,
and, with augmentation, each image gets its own small random rotation, scale and shift in one
bilinear resampling pass (ImageProjectiveTransformV3). Pixels stay 0-255: the model scales its
own input (job.training.model). The test set is never augmented.

Every random choice is a pure function of (SEED, epoch, step): an epoch's order is a stateless
permutation keyed on (SEED, epoch), a batch's augmentation stateless draws keyed on (SEED,
epoch, step). No random state lives in the pipeline, so a run resumed at epoch k sees exactly
the batches the uninterrupted run saw from epoch k on (job.training.train: bit-identical runs).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from job.training import cpus

MAX_ROTATION_DEG = 10.0
SCALE_RANGE = (0.9, 1.1)
MAX_SHIFT_PX = 2.0
EVAL_BATCH = 2000
# Fixed parallelism and prefetch depth instead of tf.data's AUTOTUNE (see _options). Without
# autotuning nothing bounds the batches in flight but these: up to MAX_MAP_PARALLELISM +
# PREFETCH_BATCHES global batches (the fast recipe's 512 float32 digits are 1.6 MB each).
PREFETCH_BATCHES = 4
MAX_MAP_PARALLELISM = 16


def affine_matrix(angle, scale, tx, ty, size: int = 28) -> tf.Tensor:
    """(n, 8) projective transforms mapping output pixels to input pixels.

    The inverse of: out = scale * R(angle) @ (in - centre) + centre + (tx, ty).
    """
    centre = (size - 1) / 2.0
    a0 = tf.cos(angle) / scale
    a1 = tf.sin(angle) / scale
    b0, b1 = -a1, a0
    a2 = centre - (a0 * (centre + tx) + a1 * (centre + ty))
    b2 = centre - (b0 * (centre + tx) + b1 * (centre + ty))
    zeros = tf.zeros_like(a0)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


# Stateless random streams: a key is (SEED, a counter unique to the epoch, step and stream).
MAX_STEPS = 1 << 24  # steps in one epoch: 60,000 digits in batches of 1 is 60,000
ORDER, AUGMENT = 0, 1  # the streams


def stream_key(seed, epoch, step, stream: int) -> tf.Tensor:
    """The stateless seed of one stream at one step of one epoch (int64, never reused)."""
    epoch, step = tf.cast(epoch, tf.int64), tf.cast(step, tf.int64)
    return tf.stack([tf.cast(seed, tf.int64), (epoch * MAX_STEPS + step) * 2 + stream])


def epoch_order(n: int, seed, epoch) -> tf.Tensor:
    """A permutation of range(n), the same for the same (seed, epoch) on every run."""
    keys = tf.random.stateless_uniform(
        [n], seed=stream_key(seed, epoch, 0, ORDER), minval=None, maxval=None, dtype=tf.int64
    )
    return tf.argsort(keys, stable=True)


def random_transforms(n: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    """A small random rotation, scale and shift for each of n images, drawn from `key`."""
    u = tf.random.stateless_uniform(tf.stack([4, n]), seed=key)  # [0, 1)
    return affine_matrix(
        (u[0] * 2 - 1) * (MAX_ROTATION_DEG * math.pi / 180),
        SCALE_RANGE[0] + u[1] * (SCALE_RANGE[1] - SCALE_RANGE[0]),
        (u[2] * 2 - 1) * MAX_SHIFT_PX,
        (u[3] * 2 - 1) * MAX_SHIFT_PX,
    )


def transform(images: tf.Tensor, transforms: tf.Tensor) -> tf.Tensor:
    """One bilinear resampling pass; images are (n, 28, 28, 1) float32, zero (black) fill."""
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images,
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT",
    )


def map_parallelism() -> int:
    """Batches augmented at once: the job's thread count (job.training.cpus sized TensorFlow's pools
    from THREADS, the cgroup quota or the affinity mask), so a GPU host's cores feed it, up to
    MAX_MAP_PARALLELISM."""
    threads = tf.config.threading.get_intra_op_parallelism_threads() or cpus.usable(None)[0]
    return min(threads, MAX_MAP_PARALLELISM)


def _options(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """Under MultiWorkerMirroredStrategy every worker builds the same pipeline (same shuffle
    seed) and keeps its share of each global batch; there are no files to shard by.

    tf.data's autotuning is off: on 2 cores, with augmentation in the pipeline, 24 of 63 epochs
    took twice as long with it on (2.5 s or 5.0 s, bimodal), 0 of 15 with it off (CHANGELOG.md,
    Performance section). The pipeline is one map of whole batches, so a fixed
    parallelism and prefetch depth need no tuning."""
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    options.autotune.enabled = False
    return dataset.with_options(options)


def training_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    augment_images: bool,
    seed: int,
    epochs: int,
    first_epoch: int = 0,
    drop_remainder: bool = True,
) -> tf.data.Dataset:
    """The batches of epochs `first_epoch` to `epochs - 1`, one epoch after the other: `fit`
    is given the epoch's step count, so its iterator runs on from one epoch into the next (a
    dataset rebuilt for each epoch would need random state to differ between them). Without
    `drop_remainder` the last batch of an epoch is partial, as the notebook's arrays give."""
    images, labels = tf.constant(x), tf.constant(y)
    n = len(y)

    def epoch_batches(epoch):
        order = tf.data.Dataset.from_tensor_slices(epoch_order(n, seed, epoch))
        batches = order.batch(batch_size, drop_remainder=drop_remainder).enumerate()
        return batches.map(lambda step, idx: (epoch, step, idx))

    def gather(epoch, step, idx):
        batch = tf.gather(images, idx)[..., None]
        if augment_images:
            # Resampled in float, kept as float 0-255: the model's first layer casts and scales.
            batch = tf.cast(batch, tf.float32)
            key = stream_key(seed, epoch, step, AUGMENT)
            batch = transform(batch, random_transforms(tf.shape(batch)[0], key))
        return batch, tf.one_hot(tf.gather(labels, idx), 10)

    return _options(
        tf.data.Dataset.range(first_epoch, epochs)
        .flat_map(epoch_batches)
        .map(gather, num_parallel_calls=map_parallelism(), deterministic=True)
        .prefetch(PREFETCH_BATCHES)
    )


def eval_dataset(x: np.ndarray, y: np.ndarray) -> tf.data.Dataset:
    return _options(
        tf.data.Dataset.from_tensor_slices((x, y))
        .batch(EVAL_BATCH)
        .map(lambda images, labels: (images[..., None], tf.one_hot(labels, 10)))
        .cache()
        .prefetch(PREFETCH_BATCHES)
    )
