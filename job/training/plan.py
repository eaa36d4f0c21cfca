"""What `fit` is given: the notebook's arrays (every digit each epoch, the last batch partial,
unaugmented), or the fast recipe's pipeline (whole batches, augmented). Both are batches in an
order keyed on SEED and the epoch (job.training.pipeline), never Keras's own shuffling, whose
random state a resumed run could not continue."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from job.config import Training
from job.training import pipeline
from job.training.data import Dataset


def steps_per_execution(steps_per_epoch: int, limit: int) -> int:
    """The largest divisor of the epoch's step count not above `limit`.

    Keras runs whole executions: when this does not divide the epoch it silently runs extra
    steps (117 became 128 in a probe), which ends a step-based schedule early.
    """
    return max(
        d for d in range(1, max(1, min(limit, steps_per_epoch)) + 1) if steps_per_epoch % d == 0
    )


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
    ema_momentum: float  # 0: no moving average of the weights
    test: object  # the test split, batched (pipeline.eval_dataset): validation and final score
    inputs: Callable[[int], dict]  # fit's data arguments for the epochs from the one given on

    def fit_args(self, first_epoch: int) -> dict:
        return {**self.inputs(first_epoch), "steps_per_epoch": self.steps_per_epoch}

    def params(self) -> dict[str, object]:
        return {
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "replicas": self.replicas,
            "steps_per_epoch": self.steps_per_epoch,
            "steps_per_execution": self.steps_per_execution,
            "ema_momentum": self.ema_momentum,
        }


def training_plan(
    training: Training, ds: Dataset, replicas: int = 1, *, multi_worker: bool = False
) -> TrainingPlan:
    """What `fit` is given, and the test split as a dataset (validation and the final score)."""
    n = len(ds.y_train)
    batch = min(training.batch_size * replicas, n)  # a smoke run smaller than a batch still trains
    whole_batches = training.pipeline == "tfdata"
    if whole_batches:
        steps = n // batch  # the remainder is dropped: every epoch has the same steps
        samples = steps * batch
    else:
        steps, samples = -(-n // batch), n
    # Never numpy arrays into Keras: its array adapter's parallel map is rewritten under op
    # determinism with an attribute TensorFlow 2.21's runtime reports as an error line.
    test = pipeline.eval_dataset(ds.x_test, ds.y_test)

    def inputs(first_epoch: int) -> dict:
        train = pipeline.training_dataset(
            ds.x_train, ds.y_train, batch, augment_images=training.augment,
            seed=training.seed, epochs=training.epochs, first_epoch=first_epoch,
            drop_remainder=whole_batches,
        )  # fmt: skip
        # shuffle=False: the pipeline orders the batches; Keras would only warn it cannot.
        return {"x": train, "validation_data": test, "shuffle": False}

    # More than one step per execution breaks Keras under a multi-worker strategy
    # (job.training.compat).
    limit = 1 if multi_worker and replicas > 1 else training.max_steps_per_execution
    spe = steps_per_execution(steps, limit)
    rate = training.learning_rate * replicas
    ema = average_momentum(training.ema_momentum, steps)
    return TrainingPlan(replicas, batch, rate, steps, spe, samples, ema, test, inputs)


def average_momentum(momentum: float, steps_per_epoch: int) -> float:
    """EMA_MOMENTUM, capped so the average spans at most about half an epoch (1 / (1 - m)
    steps). The average starts at the initial weights (Keras 2) or the first step's (Keras 3)
    with no bias correction: at the cap, ~e^-2 (13%) of it is still the start after one epoch
    (0.98^116, ~10%, for the fast recipe on full MNIST); without the cap a smoke run of a few
    steps an epoch would keep almost only the start. 0 (off) below 3 steps an epoch."""
    return round(max(0.0, min(momentum, 1 - 2 / steps_per_epoch)), 6)
