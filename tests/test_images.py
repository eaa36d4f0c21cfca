"""The run's pictures, measured as drawn: whole-epoch ticks on the curves, and digit titles
clear of the row above them (real MNIST digits, matplotlib's own text extents)."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg

from job.training import images, metrics

CLEAR_PX = 8  # screen pixels at least between a title and the digits of the row above


def real_digits(mnist_dir, n: int) -> tuple[np.ndarray, np.ndarray]:
    raw_x = (mnist_dir / "train-images-idx3-ubyte").read_bytes()[16 : 16 + n * 784]
    raw_y = (mnist_dir / "train-labels-idx1-ubyte").read_bytes()[8 : 8 + n]
    return np.frombuffer(raw_x, np.uint8).reshape(n, 28, 28), np.frombuffer(raw_y, np.uint8)


def drawn(fig):
    """The figure's renderer after a full draw, for the extents of what was drawn."""
    FigureCanvasAgg(fig).draw()
    return fig.canvas.get_renderer()


def digit_rows(ax) -> list[tuple[float, float]]:
    """(bottom, top) in screen pixels of each row of digits, found in the drawn montage: the
    montage's picture rows that hold digit pixels, in runs."""
    filled = ~np.ma.getmaskarray(ax.images[0].get_array()).all(axis=1)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], filled.astype(int), [0]])))
    rows = []
    for start, end in zip(edges[::2], edges[1::2], strict=True):
        # A picture row i spans i-0.5 .. i+0.5 in data units; y grows downwards on an image.
        (_, top), (_, bottom) = ax.transData.transform([(0, start - 0.5), (0, end - 0.5)])
        rows.append((bottom, top))
    return rows


def assert_titles_clear(fig) -> int:
    """Every title sits above its own digit, closer to it than to the row above, and at least
    CLEAR_PX pixels clear of that row; returns how many titles were checked."""
    renderer = drawn(fig)
    ax = fig.axes[0]
    rows = digit_rows(ax)
    assert rows, "no digits drawn"
    for text in ax.texts:
        box = text.get_window_extent(renderer)
        below = [r for r in rows if r[1] <= box.y0 + 0.5]  # rows whose top is under the title
        above = [r for r in rows if r[0] >= box.y1 - 0.5]
        overlapping = [r for r in rows if r not in below and r not in above]
        assert not overlapping, f"{text.get_text()!r} overlaps a row of digits"
        own_top = max(top for _, top in below)
        gap_below = box.y0 - own_top
        if above:
            gap_above = min(bottom for bottom, _ in above) - box.y1
            assert gap_above >= CLEAR_PX, f"{text.get_text()!r} is {gap_above:.1f} px under a row"
            assert gap_below < gap_above, f"{text.get_text()!r} is nearer the row above"
    return len(ax.texts)


@pytest.mark.parametrize("rows", [4, 8])  # the run's grid, and a taller one on the same canvas
def test_sample_labels_are_clear_of_the_row_above(tmp_path, mnist_dir, rows):
    x, y = real_digits(mnist_dir, rows * 8)
    fig = images.samples(x, y, tmp_path / "samples.png", rows=rows)
    assert assert_titles_clear(fig) == rows * 8


def test_misclassified_titles_are_clear_of_the_row_above(tmp_path, mnist_dir):
    x, y = real_digits(mnist_dir, 60)
    probs = np.eye(10, dtype=np.float32)[(y + 1) % 10] * 0.9 + 0.01  # every digit wrong
    order = metrics.misclassified(probs, y)
    fig = images.misclassified(x, y, probs, order, tmp_path / "misclassified.png")
    assert assert_titles_clear(fig) == 40  # two-line titles, 5 rows of 8


@pytest.mark.parametrize("epochs", [1, 2, 3, 7, 30])
def test_history_ticks_fall_on_whole_epochs(tmp_path, epochs):
    hist = [
        {"epoch": e, "loss": 1 / e, "accuracy": 1 - 0.1 / e, "val_loss": 1.1 / e,
         "val_accuracy": 1 - 0.12 / e}
        for e in range(1, epochs + 1)
    ]  # fmt: skip
    fig = images.history(hist, tmp_path / "history.png")
    drawn(fig)
    for ax in fig.axes:
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks, f"no epoch tick at all for {epochs} epochs"
        assert all(float(t).is_integer() for t in ticks), ticks
        if epochs <= 3:  # few epochs: every one is named
            assert {int(t) for t in ticks} >= set(range(1, epochs + 1)), ticks
