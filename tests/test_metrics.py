import numpy as np
import pytest

from job.training import metrics


def test_confusion_and_per_class_by_hand():
    y_true = np.array([0, 0, 1, 1, 2, 2])
    y_pred = np.array([0, 1, 1, 1, 2, 0])
    cm = metrics.confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    rows = metrics.per_class(cm)
    assert rows[1]["precision"] == pytest.approx(2 / 3, abs=1e-6)
    assert rows[1]["recall"] == 1.0
    assert rows[2] == {"class": 2, "precision": 1.0, "recall": 0.5, "f1": 0.666667, "support": 2}


def test_evaluate_matches_definitions():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]], np.float32)
    y = np.array([0, 1, 1, 1])
    out = metrics.evaluate(probs, y)
    assert out["test_accuracy"] == 0.75
    assert out["baseline_error_pct"] == 25.0
    assert out["misclassified_count"] == 1
    expected_loss = -np.mean(np.log([0.9, 0.8, 0.4, 0.7]))
    assert out["test_loss"] == pytest.approx(expected_loss, abs=1e-6)


def test_misclassified_most_confident_first():
    probs = np.array([[0.4, 0.6], [0.9, 0.1], [0.1, 0.9], [0.2, 0.8]])
    y = np.array([0, 1, 1, 0])
    assert metrics.misclassified(probs, y).tolist() == [1, 3, 0]
