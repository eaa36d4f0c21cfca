"""The run's pictures, rendered with matplotlib's object API (no pyplot, no global state).

Every figure has a fixed pixel size (FIGSIZE x DPI) so readers and tests know what to expect.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 100
SIZES = {  # name -> (width, height) in pixels
    "samples": (800, 400),
    "misclassified": (1000, 700),
    "confusion": (700, 600),
    "history": (1000, 400),
}


def _figure(name: str) -> Figure:
    from matplotlib.figure import Figure

    width, height = SIZES[name]
    return Figure(figsize=(width / DPI, height / DPI), dpi=DPI)


def _save(fig: Figure, path: Path) -> Figure:
    """Write the figure; returned, so a test can measure what was drawn."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return fig


GRID = (0.01, 0.03, 0.98, 0.86)  # where the digit grid's Axes sits in its figure
TITLE_PT = 8  # the size of each digit's title, in points
TITLE_GAP = 2  # screen pixels between a title and its digit, below it
TITLE_CLEARANCE = 12  # screen pixels at least between a title and the row above: clearly apart


def _title_room(fig: Figure, rows: int, cols: int, side: int, gap: int, lines: int) -> int:
    """Montage pixels above each digit that hold its title clear of the row above. A title's
    height is fixed in points while the montage is scaled to fit its Axes, so the room is
    found at the scale the montage will be drawn: a fixed count of montage pixels was too
    little where a grid has many rows (the titles ran into the digits above)."""
    width, height = fig.bbox.width * GRID[2], fig.bbox.height * GRID[3]
    # A line's height with its ascent and descent (about 1.2 em), and the space around it.
    needed = lines * 1.2 * TITLE_PT * fig.dpi / 72 + TITLE_GAP + TITLE_CLEARANCE
    top = 1
    while top < 4 * side:
        scale = min(width / (cols * (side + gap)), height / (rows * (side + top)))
        if top * scale >= needed:
            break
        top += 1
    return top


def _digit_grid(
    fig: Figure, images: np.ndarray, titles, rows: int, cols: int, *, title_lines: int = 1
) -> None:
    """The digits as one picture on one Axes, each with its title above it. (Rendering one Axes
    per digit took about a second a figure; this takes a tenth of that.)"""
    from matplotlib import colormaps
    from matplotlib.transforms import offset_copy

    side, gap = images.shape[1], 10  # gap: montage pixels between columns
    top = _title_room(fig, rows, cols, side, gap, title_lines)
    cell_h, cell_w = side + top, side + gap
    canvas = np.full((rows * cell_h, cols * cell_w), np.nan)  # NaN: the white background
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        y, x = r * cell_h + top, c * cell_w + gap // 2
        canvas[y : y + side, x : x + side] = img
    ax = fig.add_axes(GRID)
    ax.imshow(canvas, cmap=colormaps["gray"].with_extremes(bad="white"), vmin=0, vmax=255)
    # Each title sits on its digit's top edge, lifted by a few screen pixels.
    lifted = offset_copy(ax.transData, fig=fig, y=TITLE_GAP, units="dots")
    for i, title in enumerate(titles):
        r, c = divmod(i, cols)
        x, y = c * cell_w + cell_w / 2, r * cell_h + top - 0.5  # a pixel's edge
        ax.text(x, y, title, ha="center", va="bottom", fontsize=TITLE_PT, transform=lifted)
    ax.axis("off")


def samples(x: np.ndarray, y: np.ndarray, path: Path, rows: int = 4, cols: int = 8) -> Figure:
    """The notebook's Show_Images: the first training digits with their labels."""
    fig = _figure("samples")
    n = min(len(x), rows * cols)
    _digit_grid(fig, x[:n], [f"label {int(v)}" for v in y[:n]], rows, cols)
    fig.suptitle("Training samples")
    return _save(fig, path)


def misclassified(
    x: np.ndarray, y_true: np.ndarray, probs: np.ndarray, order: np.ndarray, path: Path
) -> Figure:
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
    return _save(fig, path)


def confusion(cm: np.ndarray, path: Path) -> Figure:
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
    return _save(fig, path)


def history(hist: list[dict[str, float]], path: Path) -> Figure:
    from matplotlib.ticker import MaxNLocator

    fig = _figure("history")
    epochs = [h["epoch"] for h in hist]
    for k, metric in enumerate(("loss", "accuracy")):
        ax = fig.add_subplot(1, 2, k + 1)
        for prefix, label in (("", "train"), ("val_", "test")):
            values = [h.get(prefix + metric) for h in hist]
            if all(v is not None for v in values):
                ax.plot(epochs, values, marker="o", label=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # no epoch 1.5
        if epochs:  # half an epoch either side: a one-epoch run still gets its whole tick
            ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.set_xlabel("epoch")
        ax.set_title(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)
