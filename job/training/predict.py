"""`python -m job predict MODEL IMAGE...`: classify pictures of digits with a saved model.

A picture becomes what the model was trained on by MNIST's own preprocessing, as pure numpy
functions (`mnist_picture`): the background estimated from the border and taken away, the ink made
light on dark, cropped to its bounding box, scaled into 20x20 keeping its aspect ratio and placed
by its centre of mass in 28x28 (LeCun et al.: "the images were centered in a 28x28 image by
computing the center of mass of the pixels"). An MNIST digit goes through unchanged (within a grey
level), so `predict` agrees with what the model was measured on.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from job.errors import ConfigError, DataError
from job.logs import printable
from job.runstore import champion, objects
from job.runstore.digest import sha256_bytes
from job.runstore.layout import MODEL_FILE
from job.runstore.store import open_store
from job.training.data import open_regular

MAX_PIXELS = 4096 * 4096  # a scan or photo of a digit; more is a mistake or a decompression bomb
WORK_SIDE = 1024  # larger pictures are averaged down first: a digit needs no more, memory stays low
MIN_SIDE = 8  # fewer pixels across (after that) cannot hold a digit
LOW_CONFIDENCE = 0.5  # a top probability below this is reported as low confidence
SIDE, BOX = 28, 20  # MNIST: the digit fits a 20x20 box inside 28x28
# Where MNIST puts the centre of mass, in pixel indices (row, column): measured on all 70,000
# digits (test set mean 13.99, 14.01; all but 2 within half a pixel), so they need no shift.
CENTRE = 14.0
QUANTUM = 0.5 / 255  # on a noise-free background, any step of one 8-bit grey level is ink
MIN_INK = 8 / 255  # ink must differ from the background by 3% of the full scale at least
CORE_PERCENTILE = 99  # a noisy picture's stroke cores: above half this percentile of its ink
NO_INK = "no ink: nothing stands out from the background (a blank, uniform or too faint picture)"


class NoInk(DataError):
    """A picture with nothing on it but its background (blank, uniform or pure noise)."""


@dataclass(frozen=True)
class Prediction:
    """One picture's answer: the 10 class probabilities and the 28x28 picture the model saw."""

    path: Path
    probabilities: np.ndarray
    picture: np.ndarray
    saved: Path | None = None

    def top(self, k: int = 1) -> list[tuple[int, float]]:
        """The k most probable digits, most probable first (ties: the smaller digit)."""
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(int(d), float(self.probabilities[d])) for d in order]

    @property
    def digit(self) -> int:
        return self.top()[0][0]

    @property
    def confidence(self) -> float:
        return self.top()[0][1]

    @property
    def low_confidence(self) -> bool:
        return self.confidence < LOW_CONFIDENCE

    def line(self, k: int = 1) -> str:
        """`predict`'s line: the image, its k most probable digits, a low-confidence note, and
        where the picture the model saw was saved. The names are the user's; still printable."""
        ranked = ", ".join(f"{d} ({100 * p:.1f}%)" for d, p in self.top(k))
        note = f"  low confidence: below {LOW_CONFIDENCE:.0%}" if self.low_confidence else ""
        saved = f"  model input: {printable(self.saved, 1000)}" if self.saved else ""
        return f"{printable(self.path, 1000)}: {ranked}{note}{saved}"

    def summary(self, k: int = 1) -> dict:
        """`predict --json`'s object for this image."""
        return {
            "image": str(self.path),
            "digit": self.digit,
            "probability": round(self.confidence, 6),
            "low_confidence": self.low_confidence,
            "top": [{"digit": d, "probability": round(p, 6)} for d, p in self.top(k)],
            "model_input": str(self.saved) if self.saved else None,
        }


# --- MNIST's preprocessing, pure numpy ------------------------------------------------------------


def grey_levels(pixels: np.ndarray) -> np.ndarray:
    """Luminance in [0, 1] (float32, HxW) of a greyscale, grey+alpha, RGB or RGBA picture of 8 or
    16 bits (or floats in [0, 1]). A transparent canvas has no colour of its own: it is laid on
    white when the strokes are dark and on black when they are light, so the ink stays ink."""
    a = np.asarray(pixels)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (2, 3, 4)):
        raise ValueError(f"pixels of shape {a.shape}")
    if a.dtype.kind == "b":
        scale = 1.0
    elif a.dtype.kind in "ui":  # 8 bits; else Pillow's 16-bit modes (I;16 of any byte order, I)
        scale = 255.0 if a.dtype.itemsize == 1 else 65535.0
    elif a.dtype.kind == "f":  # [0, 1] as floats are; else 8 or 16 bits' range
        top = float(np.nanmax(a, initial=0))
        scale = 1.0 if top <= 1 else 255.0 if top <= 255 else 65535.0
    else:
        raise ValueError(f"pixels of type {a.dtype}")

    def channel(i: int | None) -> np.ndarray:  # one at a time: a 16 M pixel photo stays small
        c = a if i is None else a[..., i]
        return np.clip(np.nan_to_num(c.astype(np.float32) / np.float32(scale)), 0, 1)

    if a.ndim == 2:
        return channel(None)
    channels = a.shape[2]
    if channels >= 3:  # ITU-R 601 luma, as Pillow's "L"
        grey = channel(0) * 0.299 + channel(1) * 0.587 + channel(2) * 0.114
    else:
        grey = channel(0)
    if channels in (2, 4):
        alpha = channel(channels - 1)
        if alpha.min() < 1:
            weight = float(alpha.sum())
            ink = float((grey * alpha).sum()) / weight if weight > 0 else 0.0
            backdrop = 1.0 if ink < 0.5 else 0.0
            grey = grey * alpha + backdrop * (1 - alpha)
    return grey.astype(np.float32)


def reduced(grey: np.ndarray, longest: int = WORK_SIDE) -> np.ndarray:
    """`grey` averaged over k x k blocks so that its longer side is at most `longest`."""
    k = math.ceil(max(grey.shape) / longest)
    if k <= 1:
        return grey
    h, w = grey.shape[0] // k * k, grey.shape[1] // k * k
    return grey[:h, :w].reshape(h // k, k, w // k, k).mean(axis=(1, 3), dtype=np.float32)


def background(grey: np.ndarray) -> tuple[np.ndarray, float]:
    """The background as a plane fitted to the picture's border (a photo's light falls off across
    it), and the noise around it (sigma, from the median absolute deviation). Border pixels far
    from the plane (ink that touches the edge) are left out of the fit, robustly."""
    h, w = grey.shape
    b = max(1, round(0.03 * min(h, w)))
    ring = np.ones((h, w), dtype=bool)
    ring[b:-b, b:-b] = False
    ys, xs = np.nonzero(ring)
    values = grey[ring].astype(np.float64)
    design = np.column_stack([np.ones_like(values), ys / h - 0.5, xs / w - 0.5])
    coef = np.array([np.median(values), 0.0, 0.0])
    keep = np.ones(values.shape, dtype=bool)
    sigma = 0.0
    for _ in range(4):
        residual = values - design @ coef
        spread = np.abs(residual[keep] - np.median(residual[keep]))
        sigma = 1.4826 * float(np.median(spread))
        now = np.abs(residual) <= max(3 * sigma, QUANTUM)
        if now.sum() < 3:
            break
        coef = np.linalg.lstsq(design[now], values[now], rcond=None)[0]
        if np.array_equal(now, keep):
            break
        keep = now
    residual = (values - design @ coef)[keep]
    sigma = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
    yy = (np.arange(h) / h - 0.5)[:, None]
    xx = (np.arange(w) / w - 0.5)[None, :]
    plane = coef[0] + coef[1] * yy + coef[2] * xx
    return plane.astype(np.float32), sigma


def box_blur(x: np.ndarray, r: int) -> np.ndarray:
    """The mean over each (2r+1)x(2r+1) window (edges: over the part inside), by running sums."""
    if r <= 0:
        return x
    out = x.astype(np.float64)
    for axis in (0, 1):
        n = out.shape[axis]
        c = np.cumsum(out, axis=axis)
        c = np.concatenate([np.zeros_like(np.take(c, [0], axis=axis)), c], axis=axis)
        hi = np.minimum(np.arange(n) + r + 1, n)
        lo = np.maximum(np.arange(n) - r, 0)
        shape = [1, 1]
        shape[axis] = n
        out = (np.take(c, hi, axis=axis) - np.take(c, lo, axis=axis)) / (hi - lo).reshape(shape)
    return out.astype(np.float32)


def _main_span(profile: np.ndarray, gap: int) -> tuple[int, int]:
    """[start, stop) of the heaviest group of non-zero entries of `profile` (entries at most `gap`
    zeros apart form one group), widened to any other group holding a tenth of its mass: a stray
    speck or a smudge far from the digit is not part of its bounding box; a broken stroke is."""
    idx = np.nonzero(profile > 0)[0]
    breaks = np.nonzero(np.diff(idx) > gap + 1)[0]
    starts = np.concatenate([[0], breaks + 1])
    stops = np.concatenate([breaks + 1, [len(idx)]])
    groups = [(int(idx[a]), int(idx[b - 1]) + 1) for a, b in zip(starts, stops, strict=True)]
    mass = [float(profile[a:b].sum()) for a, b in groups]
    heaviest = max(mass)
    kept = [g for g, m in zip(groups, mass, strict=True) if m >= 0.1 * heaviest]
    return min(a for a, _ in kept), max(b for _, b in kept)


def ink_box(ink: np.ndarray) -> tuple[slice, slice]:
    """The bounding box of the main body of ink (weights >= 0, some > 0): rows and columns
    narrowed in turn, twice, so a speck beside the digit's rows does not widen its columns."""
    h, w = ink.shape
    gap = max(2, min(h, w) // 25)
    rows, cols = (0, h), (0, w)
    for _ in range(2):
        part = ink[rows[0] : rows[1], cols[0] : cols[1]]
        r = _main_span(part.sum(axis=1), gap)
        rows = (rows[0] + r[0], rows[0] + r[1])
        part = ink[rows[0] : rows[1], cols[0] : cols[1]]
        c = _main_span(part.sum(axis=0), gap)
        cols = (cols[0] + c[0], cols[0] + c[1])
    return slice(*rows), slice(*cols)


def ink_levels(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """How much ink each pixel holds, as a fraction of the ink's own level (light ink on dark
    whatever the picture's polarity; noise left in, signed, for averaging to remove); where the
    ink is (a mask for its bounding box); and the noise's sigma on that scale.
    Raises NoInk when nothing stands out from the background."""
    plane, sigma = background(grey)
    depth = grey - plane
    # The ink is whichever side of the background holds more beyond the noise: dark strokes on
    # paper, light chalk on a board.
    edge = max(4 * sigma, QUANTUM)
    lighter = float(np.clip(depth - edge, 0, None).sum())
    darker = float(np.clip(-depth - edge, 0, None).sum())
    ink = depth if lighter >= darker else -depth
    # Noise is judged on a smoothed copy (the strokes of a photo are many pixels wide); a clean
    # picture is judged pixel by pixel, so an MNIST digit keeps its faintest edge.
    clean = sigma <= QUANTUM
    r = 0 if clean else max(1, round(min(grey.shape) / 150))
    smooth = box_blur(ink, r)
    noise = sigma / (2 * r + 1)
    if float(smooth.max()) < max(6 * noise, MIN_INK):
        raise NoInk(NO_INK)
    mask = smooth > max(4 * noise, QUANTUM)
    # The ink's own level becomes full white (a dim photo's ink too): on a clean picture its
    # brightest pixel; on a noisy one the median of the strokes' cores, which noise leaves be.
    if clean:
        level = float(ink.max())
    else:
        core = smooth >= 0.5 * float(np.percentile(smooth[mask], CORE_PERCENTILE))
        level = max(float(np.median(ink[core])), MIN_INK)
        # Smoothing spreads the ink r pixels wide, which would shrink a small digit in its box:
        # the box holds the pixels that are at least half ink themselves.
        mask &= ink >= 0.5 * level
    return (ink / level).astype(np.float32), mask, sigma / level


def fit_box(ink: np.ndarray, box: int = BOX) -> np.ndarray:
    """`ink` (cropped) scaled so its longer side is `box` pixels, keeping the aspect ratio: area
    averaging down (MNIST's anti-aliasing), bilinear up. Already that size: unchanged."""
    from PIL import Image

    h, w = ink.shape
    scale = box / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (w, h):
        return ink
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    resized = Image.fromarray(ink.astype(np.float32)).resize(size, resample)
    return np.asarray(resized, dtype=np.float32)


def centred(patch: np.ndarray, side: int = SIDE) -> np.ndarray:
    """`patch` placed in a side x side field with its centre of mass at CENTRE (whole pixels,
    kept inside the field)."""
    h, w = patch.shape
    mass = float(patch.sum())
    cy = float((patch.sum(axis=1) * np.arange(h)).sum()) / mass
    cx = float((patch.sum(axis=0) * np.arange(w)).sum()) / mass
    top = min(max(round(CENTRE - cy), 0), side - h)
    left = min(max(round(CENTRE - cx), 0), side - w)
    field = np.zeros((side, side), dtype=np.float32)
    field[top : top + h, left : left + w] = patch
    return field


def mnist_picture(pixels: np.ndarray) -> np.ndarray:
    """Any picture of one digit (see `grey_levels`) as MNIST has its digits: 28x28 uint8, light
    ink on black, in a 20x20 box, centred by mass. Raises NoInk (exit 65) for a blank one."""
    grey = reduced(grey_levels(pixels))
    if min(grey.shape) < MIN_SIDE:
        raise DataError(
            f"{grey.shape[1]}x{grey.shape[0]} pixels (after reduction) is too small or too thin "
            f"to hold a digit: at least {MIN_SIDE} each way"
        )
    levels, mask, noise = ink_levels(grey)
    if not mask.any():
        raise NoInk(NO_INK)
    rows, cols = ink_box(np.where(mask, np.clip(levels, 0, None), 0))
    crop = levels[rows, cols]
    patch = fit_box(crop)
    # Scaling down averages the noise away (by the factor, each way); what is left of it below
    # twice its sigma is background, black as in MNIST.
    floor = min(0.5, 2 * noise / max(1.0, max(crop.shape) / max(patch.shape)))
    patch = np.clip((patch - floor) / (1 - floor), 0, 1)
    if float(patch.sum()) <= 0:
        raise NoInk(NO_INK)
    return np.round(centred(patch) * 255).astype(np.uint8)


# --- files ----------------------------------------------------------------------------------------


def read_pixels(path: Path) -> np.ndarray:
    """The pixels of an image file (anything Pillow reads; the first frame; turned upright as its
    EXIF says, as a phone's photo is), bounded: more than MAX_PIXELS is refused before decoding."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    bomb = (Image.DecompressionBombError, Image.DecompressionBombWarning)
    too_big = f"more than {MAX_PIXELS:,} pixels, not a digit picture (or a decompression bomb)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open_regular(path) as fh, Image.open(fh) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise DataError(f"{path}: {img.width}x{img.height} pixels, {too_big}")
                img = ImageOps.exif_transpose(img)
                if img.mode == "1":
                    img = img.convert("L")
                elif img.mode in ("P", "PA"):
                    alpha = img.mode == "PA" or "transparency" in img.info
                    img = img.convert("RGBA" if alpha else "RGB")
                elif img.mode not in ("L", "LA", "RGB", "RGBA", "I", "F") and not (
                    img.mode.startswith("I;16")
                ):
                    img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
                pixels = np.asarray(img)
    except bomb:
        raise DataError(f"{path}: {too_big}") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
        # Pillow's decoders raise these for a damaged or foreign file.
        raise DataError(f"{path}: not a readable image ({exc})") from None
    if np.issubdtype(pixels.dtype, np.floating) and not np.isfinite(pixels).all():
        raise DataError(f"{path}: not a readable image (pixels that are not numbers)")
    return pixels


def to_model_input(path: Path, pixels: np.ndarray) -> np.ndarray:
    """mnist_picture of the image file `path`'s pixels; its refusals name the file."""
    try:
        return mnist_picture(pixels)
    except DataError as exc:
        raise type(exc)(f"{path}: {exc}") from None
    except ValueError as exc:  # a pixel layout grey_levels does not know
        raise DataError(f"{path}: not a picture this reads ({exc})") from None


def save_folder(folder: Path) -> Path:
    """`--save-input`'s folder, created if need be; one that cannot be is a configuration
    error naming the option (checked before any model loads)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not folder.is_dir():
            raise NotADirectoryError(20, "not a folder")
    except OSError as exc:
        raise ConfigError(
            "--save-input", str(folder), f"a folder that can be created ({exc.strerror})"
        ) from None
    return folder


def save_pictures(folder: Path, images: list[Path], pictures: list[np.ndarray]) -> list[Path]:
    """Each picture as `<folder>/<image name>.28x28.png`, numbered when names repeat; never onto
    an input file (a folder shared with the inputs is fine)."""
    from PIL import Image

    inputs = {p.resolve() for p in images}
    taken: set[Path] = set()
    saved = []
    for image, picture in zip(images, pictures, strict=True):
        stem, n = image.stem or "image", 1
        target = folder / f"{stem}.28x28.png"
        while target.resolve() in inputs or target.resolve() in taken:
            n += 1
            target = folder / f"{stem}-{n}.28x28.png"
        taken.add(target.resolve())
        try:
            Image.fromarray(picture).save(target, format="PNG")
        except OSError as exc:
            raise ConfigError(
                "--save-input", str(folder), f"a writable folder ({exc.strerror or exc})"
            ) from None
        saved.append(target)
    return saved


# --- models ---------------------------------------------------------------------------------------


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


def prepare(image_paths: list[Path]) -> list[np.ndarray]:
    """The 28x28 picture the model is given for each image, in order: read and prepared before
    TensorFlow and the model take their seconds to load, so a missing, hanging, huge or blank
    one fails at once. Only the small pictures are kept: a hundred phone photos are not all in
    memory at once."""
    return [to_model_input(image, read_pixels(image)) for image in image_paths]


def classify(
    model_path: Path,
    image_paths: list[Path],
    pictures: list[np.ndarray] | None = None,
    *,
    save_input: Path | None = None,
) -> list[Prediction]:
    """Each image's class probabilities from the model at `model_path`, in order
    (`pictures`: the images already `prepare`d)."""
    import keras

    path = resolve_model(model_path)
    folder = save_folder(save_input) if save_input is not None else None
    pictures = prepare(image_paths) if pictures is None else pictures
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises what its readers raise: zip, JSON, HDF5, config
        raise DataError(f"{path}: not a Keras model ({type(exc).__name__}: {exc})") from None
    saved = save_pictures(folder, image_paths, pictures) if folder else [None] * len(pictures)
    # Raw uint8: the model scales its own input (job.training.model).
    probs = np.asarray(model.predict(np.stack(pictures)[..., None], verbose=0), dtype=np.float64)
    return [
        Prediction(p, row, pic, s)
        for p, row, pic, s in zip(image_paths, probs, pictures, saved, strict=True)
    ]


def predict(model_path: Path, image_paths: list[Path]) -> list[tuple[Path, int, float]]:
    """(image, most probable digit, its probability) for each image."""
    return [(r.path, r.digit, r.confidence) for r in classify(model_path, image_paths)]
