"""The seed notebook's network, exactly: 693,962 parameters.

Any other network would be an explicit, named option; speed comes from the input pipeline and
training recipe, never from quietly changing this table of layers.
"""

from __future__ import annotations

import keras

SEED_PARAMS = 693_962


def build_model(input_shape: tuple[int, int, int] = (28, 28, 1), n_classes: int = 10):
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            keras.layers.Conv2D(32, kernel_size=(3, 3), activation="relu"),
            keras.layers.MaxPool2D(pool_size=(2, 2)),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dropout(0.25),
            keras.layers.Dense(n_classes, activation="softmax"),
        ],
        name="seed_cnn",
    )


def compile_model(model, learning_rate: float = 0.001) -> None:
    # The notebook's RMSprop(lr=0.001, rho=0.9, epsilon=1e-08, decay=0.0).
    model.compile(
        optimizer=keras.optimizers.RMSprop(learning_rate=learning_rate, rho=0.9, epsilon=1e-08),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )


def layer_table(model) -> list[str]:
    """One line per layer (name, type, output shape, parameters): the summary, log-friendly."""
    return [
        f"{layer.name} {type(layer).__name__} {tuple(layer.output.shape)} {layer.count_params()}"
        for layer in model.layers
    ]
