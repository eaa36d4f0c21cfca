"""Pictures of digits as people make them, drawn from real MNIST test digits: for `predict`'s
tests and its benchmark (bench/predict_styles.py).

Each style puts one MNIST test digit (its ink, cropped and enlarged) on a canvas as a scanner,
a page, a phone or a blackboard would show it:

- `clean_scan`: dark ink on white paper, a larger canvas, a little noise, saved as JPEG;
- `page_corner`: a small digit near a corner of a tinted page (RGB);
- `grey_photo`: a grey, noisy, low-contrast photo on a wide 16:9 canvas, light falling off
  across it, saved as JPEG;
- `dark_board`: light chalk with a grain on a dark green board (RGB).

Everything is decided by the seed, so a picture is the same on every run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

STYLES = ("clean_scan", "page_corner", "grey_photo", "dark_board")


def ink(digit: np.ndarray, size: int) -> np.ndarray:
    """The digit's ink (0..1, float32) cropped to its bounding box and enlarged so its longer
    side is `size` pixels, keeping its aspect ratio (bicubic: a pen's soft edge, not blocks)."""
    rows = np.nonzero(digit.any(axis=1))[0]
    cols = np.nonzero(digit.any(axis=0))[0]
    crop = digit[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.float32) / 255
    scale = size / max(crop.shape)
    shape = (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale)))
    big = Image.fromarray(crop).resize(shape, Image.Resampling.BICUBIC)
    return np.clip(np.asarray(big, dtype=np.float32), 0, 1)


def _place(canvas_hw: tuple[int, int], a: np.ndarray, top: int, left: int) -> np.ndarray:
    field = np.zeros(canvas_hw, dtype=np.float32)
    field[top : top + a.shape[0], left : left + a.shape[1]] = a
    return field


def _gradient(rng: np.random.Generator, h: int, w: int, amplitude: float) -> np.ndarray:
    """Light falling off across the picture in a random direction, +-amplitude/2."""
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = np.cos(angle) * (xx / w - 0.5) + np.sin(angle) * (yy / h - 0.5)
    return amplitude * ramp


def _box_blur(x: np.ndarray, r: int) -> np.ndarray:
    img = Image.fromarray(x.astype(np.float32))
    size = (x.shape[1], x.shape[0])
    small = (max(1, x.shape[1] // (r + 1)), max(1, x.shape[0] // (r + 1)))
    return np.asarray(
        img.resize(small, Image.Resampling.BOX).resize(size, Image.Resampling.BILINEAR)
    )


def _noise(rng: np.random.Generator, sigma: float, shape: tuple[int, ...]) -> np.ndarray:
    """A sensor's noise, Gaussian, sigma grey levels (float32: a page has 1.4 M values)."""
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def clean_scan(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    h, w = int(rng.integers(300, 420)), int(rng.integers(300, 420))
    a = ink(digit, int(rng.integers(120, int(0.7 * min(h, w)))))
    top = int(rng.integers(10, h - a.shape[0] - 10))
    left = int(rng.integers(10, w - a.shape[1] - 10))
    paper, pen = rng.uniform(232, 250), rng.uniform(15, 60)
    field = _place((h, w), a, top, left)
    pixels = paper - field * (paper - pen) + _noise(rng, 1.5, (h, w))
    return Image.fromarray(_u8(pixels))


def page_corner(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    h, w = 800, 600
    a = ink(digit, int(rng.integers(30, 61)))
    dy, dx = int(rng.integers(15, 70)), int(rng.integers(15, 70))
    top = dy if rng.random() < 0.5 else h - a.shape[0] - dy
    left = dx if rng.random() < 0.5 else w - a.shape[1] - dx
    field = _place((h, w), a, top, left)
    paper = np.array([246, 240, 228], dtype=np.float32) - rng.uniform(0, 12)
    pen = np.array([30, 35, 60], dtype=np.float32) + rng.uniform(0, 40)
    light = _gradient(rng, h, w, rng.uniform(5, 15))[..., None]
    pixels = paper + light - field[..., None] * (paper - pen) + _noise(rng, 3, (h, w, 3))
    return Image.fromarray(_u8(pixels), "RGB")


def grey_photo(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    h, w = 360, 640
    a = _box_blur(ink(digit, int(rng.integers(140, 261))), 1)
    top = int(rng.integers(4, h - a.shape[0] - 3))
    left = int(rng.integers(20, w - a.shape[1] - 20))
    field = _place((h, w), a, top, left)
    grey, contrast = rng.uniform(105, 150), rng.uniform(35, 60)
    light = _gradient(rng, h, w, rng.uniform(20, 40))
    pixels = grey + light - field * contrast + _noise(rng, rng.uniform(5, 9), (h, w))
    tint = np.array([1.0, 1.0, 1.0]) + rng.uniform(-0.04, 0.04, 3)
    return Image.fromarray(_u8(pixels[..., None] * tint), "RGB")


def dark_board(digit: np.ndarray, rng: np.random.Generator) -> Image.Image:
    h, w = 360, 480
    a = ink(digit, int(rng.integers(120, 241)))
    top = int(rng.integers(10, h - a.shape[0] - 9))
    left = int(rng.integers(10, w - a.shape[1] - 9))
    grain = 0.65 + 0.35 * rng.random((h, w)).astype(np.float32)
    field = _place((h, w), a, top, left) * grain
    board = np.array([38, 62, 46], dtype=np.float32) + rng.uniform(-8, 8)
    chalk = np.array([225, 228, 222], dtype=np.float32) - rng.uniform(0, 30)
    light = _gradient(rng, h, w, rng.uniform(0, 16))[..., None]
    pixels = board + light + field[..., None] * (chalk - board) + _noise(rng, 4, (h, w, 3))
    return Image.fromarray(_u8(pixels), "RGB")


RENDER = {
    "clean_scan": (clean_scan, "jpg"),
    "page_corner": (page_corner, "png"),
    "grey_photo": (grey_photo, "jpg"),
    "dark_board": (dark_board, "png"),
}


def picture(digit: np.ndarray, style: str, seed: int) -> Image.Image:
    """One MNIST digit (28x28 uint8) drawn in `style`."""
    return RENDER[style][0](digit, np.random.default_rng(seed))


def write_pictures(
    folder: Path, digits: np.ndarray, labels: np.ndarray, style: str, seed: int = 0
) -> list[tuple[Path, int]]:
    """Each digit drawn in `style` into `folder`, as (file, true label), in order."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, (digit, label) in enumerate(zip(digits, labels, strict=True)):
        img = picture(digit, style, seed * 100_003 + i)
        path = folder / f"{style}-{i:04d}.{RENDER[style][1]}"
        img.save(path, quality=90) if path.suffix == ".jpg" else img.save(path, compress_level=1)
        out.append((path, int(label)))
    return out
