"""Evaluation figures from predicted probabilities, and metrics.json: pure numpy, no TensorFlow."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from job import __version__
from job.config import Training
from job.training.data import Dataset, test_set_sha256

SCHEMA_VERSION = 1


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows are true classes, columns predicted classes."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true.astype(np.int64), y_pred.astype(np.int64)), 1)
    return cm


def per_class(cm: np.ndarray) -> list[dict[str, float | int]]:
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return [
        {
            "class": k,
            "precision": round(float(precision[k]), 6),
            "recall": round(float(recall[k]), 6),
            "f1": round(float(f1[k]), 6),
            "support": int(support[k]),
        }
        for k in range(cm.shape[0])
    ]


def cross_entropy(probs: np.ndarray, y_true: np.ndarray) -> float:
    """Mean categorical cross-entropy in float64 (clipped like Keras, to avoid log(0))."""
    p = np.clip(probs[np.arange(len(y_true)), y_true.astype(np.int64)].astype(np.float64), 1e-7, 1)
    return float(-np.log(p).mean())


def evaluate(probs: np.ndarray, y_true: np.ndarray) -> dict[str, object]:
    """Accuracy, loss, per-class figures and the confusion matrix for one split."""
    n_classes = probs.shape[1]
    y_pred = probs.argmax(axis=1)
    cm = confusion_matrix(y_true, y_pred, n_classes)
    accuracy = float((y_pred == y_true).mean())
    return {
        "test_loss": round(cross_entropy(probs, y_true), 6),
        "test_accuracy": round(accuracy, 6),
        # The notebook's figure, "Baseline Error: x.xx%", as a number.
        "baseline_error_pct": round(100.0 * (1.0 - accuracy), 4),
        "misclassified_count": int((y_pred != y_true).sum()),
        "per_class": per_class(cm),
        "confusion_matrix": cm.tolist(),
    }


def misclassified(probs: np.ndarray, y_true: np.ndarray) -> np.ndarray:
    """Indices of wrong predictions, most confident mistakes first."""
    y_pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(y_pred != y_true)
    return wrong[np.argsort(-probs[wrong, y_pred[wrong]], kind="stable")]


@dataclass(frozen=True)
class Outcome:
    """How training went, as job.training.train.run saw it: what metrics.json records beside
    the evaluation."""

    history: list[dict]
    fit_seconds: float
    eval_seconds: float
    samples_per_epoch: int
    params: dict
    target_reached_epoch: int | None = None
    resumed_from_epoch: int | None = None
    inputs: dict | None = None  # the settings and data a rerun must match (train.resume_settings)
    weights_sha256: str | None = None  # job.training.fingerprint
    conditions: dict | None = None  # what the weights' bits depend on beside the inputs

    def timings(self) -> dict[str, float]:
        """Wall time of fit and evaluation, and throughput over the epochs' training time."""
        train_only = sum(h["train_seconds"] for h in self.history) or 1e-9
        trained = self.samples_per_epoch * len(self.history)
        return {
            "fit_seconds": round(self.fit_seconds, 3),
            "train_seconds": round(train_only, 3),
            "eval_seconds": round(self.eval_seconds, 3),
            "train_samples_per_second": round(trained / train_only, 1),
        }


def run_metrics(
    run_id: str, training: Training, ds: Dataset, probs: np.ndarray, outcome: Outcome
) -> dict[str, object]:
    """The content of metrics.json (and the return value of job.training.train.run).
    `test_set_sha256` identifies the test split evaluated on: accuracies compare only on the
    same one."""
    return {
        "schema_version": SCHEMA_VERSION,
        "run_id": run_id,
        "code_version": __version__,
        "dataset": ds.name,
        "data_source": ds.source,
        "test_set_sha256": test_set_sha256(ds),
        "n_train": len(ds.y_train),
        "n_test": len(ds.y_test),
        "epochs": training.epochs,
        "epochs_completed": len(outcome.history),
        "target_accuracy": training.target_accuracy,
        **evaluate(probs, ds.y_test),
        "history": outcome.history,
        "timings": outcome.timings(),
        "params": outcome.params,
        "target_reached_epoch": outcome.target_reached_epoch,
        "resumed_from_epoch": outcome.resumed_from_epoch,
        "inputs": outcome.inputs,
        "weights_sha256": outcome.weights_sha256,
        "conditions": outcome.conditions,
    }


def headline(result: dict) -> dict:
    """The figures status.json carries once the run has succeeded."""
    return {k: result[k] for k in ("test_accuracy", "test_loss", "baseline_error_pct")}
