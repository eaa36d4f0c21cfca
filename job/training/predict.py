"""`python -m job predict MODEL IMAGE...`: classify grayscale digit images with a saved model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from job.errors import DataError
from job.runstore import champion, objects
from job.runstore.digest import sha256_bytes
from job.runstore.layout import MODEL_FILE
from job.runstore.store import open_store
from job.training.data import open_regular

MAX_PIXELS = 4096 * 4096  # a scan or photo of a digit; more is a mistake or a decompression bomb


def resolve_model(path: Path) -> Path:
    """A .keras file, or a run folder holding model/model.keras."""
    candidate = path.joinpath(*MODEL_FILE.split("/")) if path.is_dir() else path
    if not candidate.is_file():
        raise DataError(f"{path}: no saved model (expected a .keras file or a run folder)")
    return candidate


def champion_model(cfg, name: str, scratch: str) -> Path:
    """The champion's model.keras of model `name`, copied from OUTPUT_URI into `scratch` and
    checked against the SHA-256 its champion record holds."""

    store = open_store(cfg.output_uri, cfg.storage)
    record, _ = champion.read(store, name)
    if record is None:
        raise DataError(f"{cfg.output_uri}: model {name} has no champion (python -m job models)")
    where = f"{store.uri.rstrip('/')}/{record.get('model')}"
    key = record.get("model")
    raw = (
        store.get_bytes(key, limit=objects.MAX_ARTIFACT)
        if isinstance(key, str) and key.endswith(MODEL_FILE)
        else None
    )
    if raw is None or sha256_bytes(raw) != record.get("model_sha256"):
        raise DataError(f"{where}: missing or not the model the champion record names")
    path = Path(scratch) / Path(MODEL_FILE).name
    path.write_bytes(raw)
    return path


def load_image(path: Path) -> np.ndarray:
    """A 28x28 uint8 array, white digit on black as in MNIST (dark-on-light input is inverted)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with open_regular(path) as fh, Image.open(fh) as img:
            if img.width * img.height > MAX_PIXELS:
                raise DataError(f"{path}: {img.width}x{img.height} pixels is not a digit image")
            gray = img.convert("L")
            if gray.size != (28, 28):
                gray = gray.resize((28, 28), Image.Resampling.LANCZOS)
            pixels = np.asarray(gray, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None
    # MNIST digits are light strokes on a dark background; a scanned or drawn digit is usually
    # the opposite, which the model would misread.
    return 255 - pixels if pixels.mean() > 127 else pixels


def predict(model_path: Path, image_paths: list[Path]) -> list[tuple[Path, int, float]]:
    import keras

    path = resolve_model(model_path)
    # The images first: a wrong one fails before the model's seconds of loading.
    # Raw uint8: the model scales its own input (job.training.model).
    batch = np.stack([load_image(p) for p in image_paths])[..., None]
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises what its readers raise: zip, JSON, HDF5, config
        raise DataError(f"{path}: not a Keras model ({type(exc).__name__}: {exc})") from None
    probs = np.asarray(model.predict(batch, verbose=0))
    return [
        (p, int(row.argmax()), float(row.max())) for p, row in zip(image_paths, probs, strict=True)
    ]
