"""The seed notebook's network, exactly (693,962 parameters), and how it is compiled.

Any other network would be an explicit, named option; speed comes from the input pipeline and
training recipe (job.config.RECIPES), never from quietly changing this table of layers.

The model takes raw digits: uint8 28x28x1, 0-255, as MNIST stores them. Scaling to [0, 1] is its
first layer (no parameters), so `model.keras` and the SavedModel need no hidden preprocessing:
a serving client sends the pixels as they are.
"""

from __future__ import annotations

import keras

from job import logs

INPUT_SHAPE = (28, 28, 1)


def build_model(n_classes: int = 10):
    return keras.Sequential(
        [
            keras.Input(shape=INPUT_SHAPE, dtype="uint8", name="digits"),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
            keras.layers.MaxPool2D(pool_size=(2, 2)),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(0.25),
            # float32 even under a mixed-precision policy: the softmax and the loss, and so the
            # reported accuracy, stay in full precision. Under float32 this changes nothing.
            keras.layers.Dense(n_classes, activation="softmax", dtype="float32"),
        ],
        name="seed_cnn",
    )


def learning_rate(
    peak: float, schedule: str, steps_per_epoch: int, epochs: int, warmup_epochs: int
):
    """A constant rate (the notebook), or linear warm-up to `peak` then cosine decay to zero."""
    if schedule == "constant":
        return peak
    warmup = min(warmup_epochs * steps_per_epoch, epochs * steps_per_epoch - 1)
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=epochs * steps_per_epoch - warmup,
        alpha=0.0,
        warmup_target=peak,
        warmup_steps=warmup,
    )


def compile_model(
    model,
    rate=0.001,
    *,
    label_smoothing: float = 0.0,
    steps_per_execution: int = 1,
    ema_momentum: float = 0.0,
) -> None:
    """The notebook's RMSprop(lr=0.001, rho=0.9, epsilon=1e-08, decay=0.0) unless a recipe
    supplies a schedule. `ema_momentum` > 0: the optimizer also keeps an exponential moving
    average of the weights, which fit() copies into the model when it ends (both Keras 2 and
    3); job.training.callbacks.EvaluateAverage evaluates it each epoch."""
    averaging = {"use_ema": True, "ema_momentum": ema_momentum} if ema_momentum else {}
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate=rate, rho=0.9, epsilon=1e-08, **averaging),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=label_smoothing),
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
    )


def layer_table(model) -> logs.Table:
    """The model.summary() table: one row per layer (name, type, output shape, parameters) and
    the total. JSON logs carry each row as one line, `conv2d Conv2D (None, 26, 26, 32) 320`."""
    return logs.Table(
        header=("layer", "type", "output shape", "parameters"),
        rows=tuple(
            (layer.name, type(layer).__name__, str(tuple(layer.output.shape)), layer.count_params())
            for layer in model.layers
        ),
        footer=("total", "", "", model.count_params()),
    )
