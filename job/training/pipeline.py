"""The tf.data input pipeline of the `fast` recipe, with light random affine augmentation.

Batches are drawn from a fresh permutation each epoch (the remainder dropped, so every epoch
has the same step count), gathered from the in-memory uint8 arrays, and, for training, each
image gets its own small random rotation, scale and shift in one bilinear resampling pass
(ImageProjectiveTransformV3).
Pixels stay 0-255: the model scales its own input (job.training.model). The test set is never
augmented.
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


def random_transforms(n: tf.Tensor) -> tf.Tensor:
    """A small random rotation, scale and shift for each of n images."""
    return affine_matrix(
        tf.random.uniform([n], -1.0, 1.0) * (MAX_ROTATION_DEG * math.pi / 180),
        tf.random.uniform([n], *SCALE_RANGE),
        tf.random.uniform([n], -MAX_SHIFT_PX, MAX_SHIFT_PX),
        tf.random.uniform([n], -MAX_SHIFT_PX, MAX_SHIFT_PX),
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
    x: np.ndarray, y: np.ndarray, batch_size: int, *, augment_images: bool, seed: int
) -> tf.data.Dataset:
    images, labels = tf.constant(x), tf.constant(y)
    n = len(y)

    def gather(idx):
        batch = tf.gather(images, idx)[..., None]
        if augment_images:
            # Resampled in float, kept as float 0-255: the model's first layer casts and scales.
            batch = tf.cast(batch, tf.float32)
            batch = transform(batch, random_transforms(tf.shape(batch)[0]))
        return batch, tf.one_hot(tf.gather(labels, idx), 10)

    return _options(
        tf.data.Dataset.range(n)
        .shuffle(n, seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size, drop_remainder=True)
        .map(gather, num_parallel_calls=map_parallelism())
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
