"""`predict` on real pictures: MNIST's own preprocessing (pure numpy, no model), every pixel format
Pillow hands over, pictures with no ink, and the command line (--top, --save-input, --json, the
low-confidence note) with one tiny model trained on real MNIST.

The pictures are MNIST *test* digits drawn in the styles of tests.support.pictures: clean scans,
small digits in a page corner, grey noisy photos, chalk on a dark board."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from job.errors import EXIT_CONFIG, EXIT_DATA, DataError
from job.training import data
from job.training.predict import (
    CENTRE,
    MAX_PIXELS,
    NoInk,
    Prediction,
    classify,
    mnist_picture,
    read_pixels,
)
from tests.support.jobs import cli, job_env, train_in_process
from tests.support.pictures import STYLES, ink, write_pictures


@pytest.fixture(scope="module")
def test_set(mnist_dir) -> data.Dataset:
    return data.load("mnist", str(mnist_dir))


def box_and_centre(picture: np.ndarray) -> tuple[int, int, float, float]:
    """(height, width) of the ink's bounding box, and its centre of mass (row, column)."""
    rows = np.nonzero(picture.any(axis=1))[0]
    cols = np.nonzero(picture.any(axis=0))[0]
    f = picture.astype(np.float64)
    cy = (f.sum(axis=1) * np.arange(28)).sum() / f.sum()
    cx = (f.sum(axis=0) * np.arange(28)).sum() / f.sum()
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1, cy, cx


def on_canvas(a: np.ndarray, shape: tuple[int, int], at: tuple[int, int], bg: float, fg: float):
    """Ink `a` (0..1) drawn at `at` on a uniform canvas: grey levels bg + a * (fg - bg), uint8."""
    field = np.zeros(shape, dtype=np.float32)
    field[at[0] : at[0] + a.shape[0], at[1] : at[1] + a.shape[1]] = a
    return np.round(bg + field * (fg - bg)).astype(np.uint8)


# --- the preprocessing, no model ------------------------------------------------------------------


def test_an_mnist_digit_comes_through_as_it_is(test_set):
    """MNIST's digits are already what the preprocessing makes: the model sees them unchanged
    (its brightest pixel is made full white: 254 becomes 255; a few keep a stray speck out)."""
    digits = test_set.x_test[:1000]
    diffs = np.array([np.abs(mnist_picture(d).astype(int) - d).max() for d in digits])
    assert (diffs == 0).mean() > 0.85
    assert (diffs <= 1).mean() >= 0.99
    full_white = digits.max(axis=(1, 2)) == 255
    assert (diffs[full_white] == 0).mean() > 0.99


def test_dark_ink_on_paper_reads_as_light_ink_on_black(test_set):
    for digit in test_set.x_test[:20]:
        a = ink(digit, 150)
        on_paper = on_canvas(a, (260, 300), (40, 60), bg=240, fg=30)
        on_board = on_canvas(a, (260, 300), (40, 60), bg=15, fg=225)
        seen = mnist_picture(on_paper)
        assert np.abs(seen.astype(int) - mnist_picture(on_board)).max() <= 1
        assert seen[0].max() == 0 and seen.max() > 200  # a black border, light ink


def test_a_digit_anywhere_is_cropped_into_20_pixels_and_centred_by_its_mass(test_set):
    for i, digit in enumerate(test_set.x_test[:20]):
        a = ink(digit, 40 + 3 * i)
        corner = (10, 10) if i % 2 else (700 - a.shape[0] - 10, 500 - a.shape[1] - 10)
        seen = mnist_picture(on_canvas(a, (700, 500), corner, bg=235, fg=40))
        height, width, cy, cx = box_and_centre(seen)
        assert max(height, width) == 20, i
        assert abs(cy - CENTRE) <= 0.5 and abs(cx - CENTRE) <= 0.5, (i, cy, cx)


def test_the_aspect_ratio_is_kept(test_set):
    one = next(d for d, y in zip(test_set.x_test, test_set.y_test, strict=True) if y == 1)
    tall = ink(one, 200)
    seen = mnist_picture(on_canvas(tall, (300, 300), (50, 100), bg=250, fg=0))
    height, width, _, _ = box_and_centre(seen)
    assert height == 20 and abs(width - 20 * tall.shape[1] / tall.shape[0]) <= 1.5
    # The same digit drawn three times as wide stays three times as wide, not squashed to a box.
    zero = next(d for d, y in zip(test_set.x_test, test_set.y_test, strict=True) if y == 0)
    wide = np.asarray(Image.fromarray(ink(zero, 60)).resize((180, 60)))
    seen = mnist_picture(on_canvas(wide, (200, 400), (70, 110), bg=250, fg=0))
    height, width, _, _ = box_and_centre(seen)
    assert width == 20 and abs(height - 20 / 3) <= 1.5


def test_a_picture_with_no_ink_is_refused():
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:300, 0:400]
    blank = {
        "white": np.full((300, 400), 255, np.uint8),
        "black": np.zeros((28, 28), np.uint8),
        "grey": np.full((300, 400, 3), 128, np.uint8),
        "gradient": np.round(60 + 0.2 * xx + 0.1 * yy).astype(np.uint8),  # light, no ink
        "noise": np.clip(128 + rng.normal(0, 8, (300, 400)), 0, 255).astype(np.uint8),
        "transparent": np.zeros((64, 64, 4), np.uint8),
    }
    for name, pixels in blank.items():
        with pytest.raises(NoInk, match="no ink") as err:
            mnist_picture(pixels)
        assert err.value.exit_code == EXIT_DATA, name


def test_every_pixel_format_reads_as_the_same_digit(test_set, tmp_path):
    """Greyscale, 16-bit, RGB, RGBA (opaque, or strokes on a transparent canvas), grey+alpha,
    a palette, JPEG: the same drawing gives the same picture."""
    a = ink(test_set.x_test[3], 120)
    grey = on_canvas(a, (200, 160), (40, 30), bg=245, fg=20)
    alpha = np.round(a * 255).astype(np.uint8)
    strokes = np.zeros((*a.shape, 4), np.uint8)
    strokes[..., 3] = alpha  # black strokes, transparent elsewhere, as drawing apps save them
    white_strokes = strokes.copy()
    white_strokes[..., :3] = 255
    files = {
        "grey.png": Image.fromarray(grey),
        "grey16.png": Image.fromarray(grey.astype(np.uint16) * 257),
        "rgb.png": Image.fromarray(np.repeat(grey[..., None], 3, axis=2)),
        "rgba.png": Image.fromarray(np.repeat(grey[..., None], 3, axis=2)).convert("RGBA"),
        "la.png": Image.fromarray(grey).convert("LA"),
        "palette.png": Image.fromarray(grey).convert("P"),
        "photo.jpg": Image.fromarray(grey),
        "strokes.png": Image.fromarray(strokes),
        "white-strokes.png": Image.fromarray(white_strokes),
    }
    expected = mnist_picture(grey)
    for name, img in files.items():
        img.save(tmp_path / name)
        seen = mnist_picture(read_pixels(tmp_path / name))
        diff = np.abs(seen.astype(int) - expected)
        if name == "photo.jpg":  # lossy: close, not equal
            assert diff.mean() < 4, name
        elif name.endswith("strokes.png"):  # drawn on no background at all: the same shape
            assert box_and_centre(seen)[:2] == box_and_centre(expected)[:2], name
            assert diff.mean() < 8, name
        else:
            assert diff.max() <= 2, name
    assert read_pixels(tmp_path / "grey16.png").dtype == np.uint16
    big_endian = (grey.astype(np.uint16) * 257).astype(">u2")  # as TIFF's I;16B hands them over
    assert np.array_equal(mnist_picture(big_endian), expected)


def test_a_phone_photo_is_turned_upright_as_its_exif_says(test_set, tmp_path):
    upright = on_canvas(ink(test_set.x_test[0], 100), (160, 120), (30, 20), bg=240, fg=20)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: the sensor's rows are to be turned 90 degrees clockwise
    Image.fromarray(upright).rotate(90, expand=True).save(tmp_path / "phone.png", exif=exif)
    assert np.array_equal(read_pixels(tmp_path / "phone.png"), upright)


def test_a_picture_too_large_to_be_a_digit_is_refused_unread(tmp_path):
    Image.new("1", (5000, 4000)).save(tmp_path / "huge.png")  # 20 M pixels in a small file
    assert MAX_PIXELS < 5000 * 4000
    with pytest.raises(DataError, match=r"huge\.png: 5000x4000 pixels, more than") as err:
        read_pixels(tmp_path / "huge.png")
    assert err.value.exit_code == EXIT_DATA


def test_the_line_names_the_top_digits_and_says_when_confidence_is_low(tmp_path):
    sure = Prediction(tmp_path / "a.png", np.eye(10)[7] * 0.9 + 0.01, np.zeros((28, 28)))
    assert sure.line() == f"{tmp_path / 'a.png'}: 7 (91.0%)"
    probs = np.array([0.02, 0.3, 0.02, 0.02, 0.02, 0.02, 0.02, 0.4, 0.02, 0.16])
    unsure = Prediction(tmp_path / "b\nc.png", probs, np.zeros((28, 28)), tmp_path / "b.28x28.png")
    line = unsure.line(3)
    assert line == (
        f"{tmp_path}/b?c.png: 7 (40.0%), 1 (30.0%), 9 (16.0%)  low confidence: below 50%"
        f"  model input: {tmp_path / 'b.28x28.png'}"
    )
    summary = unsure.summary(2)
    assert (summary["digit"], summary["low_confidence"]) == (7, True)
    assert summary["top"] == [{"digit": 7, "probability": 0.4}, {"digit": 1, "probability": 0.3}]


# --- with a model: a tiny one, trained once on real MNIST ---------------------------------------


@pytest.fixture(scope="module")
def model(tmp_path_factory, mnist_dir):
    tmp = tmp_path_factory.mktemp("predict")
    _, run_dir = train_in_process(
        tmp, mnist_dir, RUN_ID="predict", TRAIN_LIMIT="3000", TEST_LIMIT="500", EPOCHS="2",
        BATCH_SIZE="128",
    )  # fmt: skip
    return run_dir


@pytest.mark.slow
def test_pictures_in_every_style_are_read_as_their_digits(model, test_set, tmp_path):
    """The same 30 test digits, as they are and in each style: the styles are read about as
    well as MNIST's own pictures (before issue 24, 13-40% on a full model: bench/)."""
    pick = np.random.default_rng(1).choice(len(test_set.x_test), 30, replace=False)
    digits, labels = test_set.x_test[pick], test_set.y_test[pick]
    paths = {"mnist": []}
    for i, digit in enumerate(digits):
        paths["mnist"].append(tmp_path / f"mnist-{i}.png")
        Image.fromarray(digit).save(paths["mnist"][-1])
    for style in STYLES:
        paths[style] = [p for p, _ in write_pictures(tmp_path, digits, labels, style, seed=1)]
    results = iter(classify(model, [p for group in paths.values() for p in group]))  # one load
    right = {k: np.mean([next(results).digit == y for y in labels]) for k in paths}
    assert right["mnist"] >= 0.8, right
    for style in STYLES:
        assert right[style] >= right["mnist"] - 0.1, right


@pytest.mark.slow
def test_predict_lists_the_top_digits_and_saves_what_the_model_saw(model, test_set, tmp_path):
    pics = write_pictures(tmp_path, test_set.x_test[:2], test_set.y_test[:2], "grey_photo")
    (first, _), (second, _) = pics
    # An input already named as a saved picture would be: never written over.
    clash = first.with_name(f"{first.stem}.28x28.png")
    Image.open(second).save(clash)
    before = clash.read_bytes()
    args = [str(p) for p in (first, second, clash)]
    env = job_env(OUTPUT_URI=str(tmp_path / "out"))
    proc = cli("predict", str(model), *args, "--top", "3", "--save-input", str(tmp_path),
               env=env, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3 and clash.read_bytes() == before
    saved = [  # the first one's usual name is taken by an input
        first.with_name(f"{first.stem}-2.28x28.png"),
        second.with_name(f"{second.stem}.28x28.png"),
        clash.with_name(f"{clash.stem}.28x28.png"),
    ]
    for line, path, out in zip(lines, args, saved, strict=True):
        head, _, rest = line.partition(": ")
        assert head == path and line.endswith(f"  model input: {out}"), line
        ranked = rest.split("  ")[0].split(", ")
        probs = [float(r.split("(")[1].rstrip("%)")) for r in ranked]
        assert len(ranked) == 3 and probs == sorted(probs, reverse=True) and sum(probs) <= 100.1
        with Image.open(out) as img:
            assert (img.format, img.size, img.mode) == ("PNG", (28, 28), "L")
            assert np.array_equal(np.asarray(img), mnist_picture(read_pixels(Path(path))))
    as_json = cli("predict", str(model), args[0], "--json", env=env, cwd=tmp_path)
    (row,) = map(json.loads, as_json.stdout.splitlines())
    assert row["image"] == args[0] and row["top"][0]["digit"] == row["digit"]


@pytest.mark.slow
def test_a_blank_picture_is_one_line_and_exit_65(model, tmp_path):
    Image.new("RGB", (640, 480), (250, 250, 250)).save(tmp_path / "blank.png")
    env = job_env(OUTPUT_URI=str(tmp_path / "out"))
    proc = cli("predict", str(model), str(tmp_path / "blank.png"), env=env, cwd=tmp_path)
    assert proc.returncode == EXIT_DATA and proc.stdout == ""
    assert proc.stderr.strip() == f"error: {tmp_path / 'blank.png'}: no ink: nothing stands out " \
        "from the background (a blank, uniform or too faint picture)"  # fmt: skip


def test_a_blank_picture_is_refused_before_tensorflow_or_the_model_is_read(tmp_path):
    (tmp_path / "m.keras").write_text("not a model: never read")
    Image.new("L", (280, 280), 255).save(tmp_path / "blank.png")
    env = job_env(OUTPUT_URI=str(tmp_path / "out"))
    code = (
        "import sys\nfrom job.cli import main\nrc = main(sys.argv[1:])\n"
        "sys.exit(99 if 'tensorflow' in sys.modules else rc)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, "predict", str(tmp_path / "m.keras"),
         str(tmp_path / "blank.png")], env=env, cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == EXIT_DATA, proc.stderr  # 99: TensorFlow was loaded first
    assert proc.stderr.startswith(f"error: {tmp_path / 'blank.png'}: no ink")


def test_bad_options_are_one_line_naming_them(tmp_path):
    (tmp_path / "m.keras").write_text("never loaded")
    Image.new("L", (28, 28)).save(tmp_path / "x.png")
    (tmp_path / "taken").write_text("a file, not a folder")
    env = job_env(OUTPUT_URI=str(tmp_path / "out"))
    for options, named in (
        (["--top", "0"], "--top"),
        (["--top", "11"], "--top"),
        (["--save-input", str(tmp_path / "taken")], "--save-input"),
        (["--save-input", str(tmp_path / "taken" / "below")], "--save-input"),
    ):
        proc = cli("predict", str(tmp_path / "m.keras"), str(tmp_path / "x.png"), *options,
                   env=env, cwd=tmp_path)  # fmt: skip
        assert proc.returncode == EXIT_CONFIG, (options, proc.stderr)
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(f"error: {named}="), options


def test_a_huge_picture_is_refused_before_the_model_loads(tmp_path):
    (tmp_path / "m.keras").write_text("never loaded")
    Image.new("1", (5000, 4000)).save(tmp_path / "huge.png")
    env = job_env(OUTPUT_URI=str(tmp_path / "out"))
    proc = cli("predict", str(tmp_path / "m.keras"), str(tmp_path / "huge.png"), env=env,
               cwd=tmp_path)  # fmt: skip
    assert proc.returncode == EXIT_DATA and proc.stderr.count("\n") == 1
    assert f"error: {tmp_path / 'huge.png'}: 5000x4000 pixels" in proc.stderr
