"""What `fit` is given: the notebook's numpy arrays, or the fast recipe's tf.data pipeline."""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from job.config import Config
from job.data import Dataset
from job.recipes import Recipe, steps_per_execution


def prepare(x: np.ndarray, y: np.ndarray, n_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """uint8 digits -> float32 in [0, 1] with a channel axis; labels -> one-hot (as the seed)."""
    return (x.astype(np.float32) / 255.0)[..., None], keras.utils.to_categorical(y, n_classes)


@dataclass(frozen=True)
class TrainingPlan:
    """Batch size and learning rate are global: BATCH_SIZE and LEARNING_RATE are per replica and
    scale linearly with the number of replicas (the usual rule, with the recipe's warm-up)."""

    replicas: int
    batch_size: int
    learning_rate: float
    steps_per_epoch: int
    steps_per_execution: int
    samples_per_epoch: int  # what one epoch trains on (the fast recipe drops the remainder)
    fit_args: dict


def training_plan(config: Config, recipe: Recipe, ds: Dataset, replicas: int = 1) -> TrainingPlan:
    """What `fit` is given: numpy arrays as in the notebook, or the tf.data pipeline."""
    n = len(ds.y_train)
    batch = min(config.batch_size * replicas, n)  # a smoke run smaller than a batch still trains
    if recipe.pipeline == "tfdata":
        from job import pipeline

        train = pipeline.training_dataset(
            ds.x_train, ds.y_train, batch, augment_images=recipe.augment, seed=config.seed
        )
        fit_args = {
            "x": train,
            "validation_data": pipeline.eval_dataset(ds.x_test, ds.y_test),
            "shuffle": False,  # the pipeline shuffles; Keras would only warn it cannot
        }
        steps = n // batch  # the remainder is dropped: every epoch has the same steps
        samples = steps * batch
    else:
        x_train, y_train = prepare(ds.x_train, ds.y_train)
        fit_args = {
            "x": x_train,
            "y": y_train,
            "batch_size": batch,
            "validation_data": prepare(ds.x_test, ds.y_test),
        }
        steps, samples = -(-n // batch), n
    # More than one step per execution breaks Keras under a multi-worker strategy (job.compat).
    limit = 1 if config.cluster is not None and replicas > 1 else recipe.max_steps_per_execution
    spe = steps_per_execution(steps, limit)
    rate = config.learning_rate * replicas
    return TrainingPlan(replicas, batch, rate, steps, spe, samples, fit_args)
