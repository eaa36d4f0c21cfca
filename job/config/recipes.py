"""Recipes: how the seed network is trained, as data. Never what the network is
(job.training.model)."""

from __future__ import annotations

# `seed` is the notebook exactly. `fast` (the default) trains the same network faster and to a
# higher accuracy: a tf.data pipeline with light random affine augmentation, batches of 512,
# mixed precision where the hardware has it, a one-epoch warm-up to 5e-3 then cosine decay. The
# figures behind these choices come from `make bench` (docs/performance.md). EPOCHS, BATCH_SIZE,
# LEARNING_RATE, EMA_MOMENTUM and PRECISION override a recipe's value; the rest is the recipe's.
RECIPES: dict[str, dict[str, object]] = {
    "seed": {
        "epochs": 12,
        "batch_size": 128,
        "learning_rate": 0.001,
        "precision": "float32",
        "schedule": "constant",  # or "warmup_cosine"
        "warmup_epochs": 0,
        "augment": False,  # random rotation, scale and shift per training image
        "label_smoothing": 0.0,
        "ema_momentum": 0.0,  # no weight averaging
        # "numpy": every digit each epoch, the last batch partial, as the notebook's arrays
        # into fit; "tfdata": whole batches, several made at once (job.training.plan)
        "pipeline": "numpy",
        "max_steps_per_execution": 1,
    },
    "fast": {
        "epochs": 20,
        "batch_size": 512,
        # The peak of the schedule. 5e-3 over 3e-3: chosen on a held-out split of the training
        # set (`make bench-heldout`), never on the test set; docs/performance.md.
        "learning_rate": 0.005,
        "precision": "auto",
        "schedule": "warmup_cosine",
        "warmup_epochs": 1,
        "augment": True,
        "label_smoothing": 0.0,
        # Test accuracy (and the model kept) from an exponential moving average of the weights,
        # about the last 50 steps: it reaches 99% one or two epochs sooner (docs/performance.md).
        "ema_momentum": 0.98,
        "pipeline": "tfdata",
        "max_steps_per_execution": 16,
    },
}
DEFAULT_RECIPE = "fast"
