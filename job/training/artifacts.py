"""The run's files, written to local scratch with the layout they get under `<run_id>/`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from job.runstore.layout import IMAGES, METRICS, MODEL_FILE, REPORT, SAVED_MODEL
from job.training import compat, images, metrics, report
from job.training.data import Dataset


def write(folder: Path, model, ds: Dataset, probs: np.ndarray, result: dict) -> Path:
    """model.keras, a SavedModel for TF Serving / WML deployments, metrics.json, the images,
    and report.html, which shows them all on one page."""
    model_file = folder / MODEL_FILE
    model_file.parent.mkdir(parents=True)
    model.save(model_file)
    compat.export_saved_model(model, str(folder / SAVED_MODEL))
    (folder / METRICS).write_text(json.dumps(result, indent=2) + "\n")
    pictures = {name: folder / IMAGES / f"{name}.png" for name in images.SIZES}
    order = metrics.misclassified(probs, ds.y_test)
    images.misclassified(ds.x_test, ds.y_test, probs, order, pictures["misclassified"])
    images.samples(ds.x_train, ds.y_train, pictures["samples"])
    images.confusion(np.asarray(result["confusion_matrix"]), pictures["confusion"])
    images.history(result["history"], pictures["history"])
    # The page embeds the very files published beside it.
    page = report.render(result, {name: path.read_bytes() for name, path in pictures.items()})
    (folder / REPORT).write_text(page, encoding="utf-8")
    return folder
