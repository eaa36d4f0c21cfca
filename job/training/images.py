"""The run's pictures, rendered with matplotlib's object API (no pyplot, no global state).

Every figure has a fixed pixel size (FIGSIZE x DPI) so readers and tests know what to expect.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DPI = 100
SIZES = {  # name -> (width, height) in pixels
    "samples": (800, 400),
    "misclassified": (1000, 700),
    "confusion": (700, 600),
    "history": (1000, 400),
}


def _figure(name: str):
    from matplotlib.figure import Figure

    width, height = SIZES[name]
    return Figure(figsize=(width / DPI, height / DPI), dpi=DPI)


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")


def _digit_grid(fig, images, titles, rows: int, cols: int, *, title_lines: int = 1) -> None:
    """The digits as one picture on one Axes, each with its title above it. (Rendering one Axes
    per digit took about a second a figure; this takes a tenth of that.)"""
    from matplotlib import colormaps

    side = images.shape[1]
    top, gap = 3 + 8 * title_lines, 10  # montage pixels above each digit, and between columns
    cell_h, cell_w = side + top, side + gap
    canvas = np.full((rows * cell_h, cols * cell_w), np.nan)  # NaN: the white background
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        y, x = r * cell_h + top, c * cell_w + gap // 2
        canvas[y : y + side, x : x + side] = img
    ax = fig.add_axes((0.01, 0.03, 0.98, 0.86))
    ax.imshow(canvas, cmap=colormaps["gray"].with_extremes(bad="white"), vmin=0, vmax=255)
    for i, title in enumerate(titles):
        r, c = divmod(i, cols)
        x, y = c * cell_w + cell_w / 2, r * cell_h + top - 1
        ax.text(x, y, title, ha="center", va="bottom", fontsize=8, linespacing=1.0)
    ax.axis("off")


def samples(x: np.ndarray, y: np.ndarray, path: Path, rows: int = 4, cols: int = 8) -> None:
    """The notebook's Show_Images: the first training digits with their labels."""
    fig = _figure("samples")
    n = min(len(x), rows * cols)
    _digit_grid(fig, x[:n], [f"label {int(v)}" for v in y[:n]], rows, cols)
    fig.suptitle("Training samples")
    _save(fig, path)


def misclassified(
    x: np.ndarray, y_true: np.ndarray, probs: np.ndarray, order: np.ndarray, path: Path
) -> None:
    """The wrongly classified test digits, most confident mistakes first."""
    rows, cols = 5, 8
    fig = _figure("misclassified")
    idx = order[: rows * cols]
    pred = probs.argmax(axis=1)
    titles = [f"true {y_true[i]} / pred {pred[i]}\np={probs[i, pred[i]]:.2f}" for i in idx]
    _digit_grid(fig, x[idx], titles, rows, cols, title_lines=2)
    fig.suptitle(f"Misclassified test digits: {len(order)} of {len(y_true)}")
    if len(order) == 0:
        fig.text(0.5, 0.5, "no misclassified digits", ha="center", va="center")
    _save(fig, path)


def confusion(cm: np.ndarray, path: Path) -> None:
    fig = _figure("confusion")
    ax = fig.add_subplot(1, 1, 1)
    # Log scale so the few off-diagonal mistakes are visible next to ~1000 correct ones.
    shade = np.log1p(cm)
    shown = ax.imshow(shade, cmap="Blues")
    n = cm.shape[0]
    for i in range(n):
        for j in range(n):
            colour = "white" if shade[i, j] > shade.max() / 2 else "black"
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (test set)")
    fig.colorbar(shown, ax=ax, label="log(1 + count)")
    _save(fig, path)


def history(hist: list[dict[str, float]], path: Path) -> None:
    fig = _figure("history")
    epochs = [h["epoch"] for h in hist]
    for k, metric in enumerate(("loss", "accuracy")):
        ax = fig.add_subplot(1, 2, k + 1)
        for prefix, label in (("", "train"), ("val_", "test")):
            values = [h.get(prefix + metric) for h in hist]
            if all(v is not None for v in values):
                ax.plot(epochs, values, marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    _save(fig, path)
