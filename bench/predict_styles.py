"""`predict` on pictures as people take them: accuracy per picture style, before and after MNIST's
own preprocessing (job.training.predict.mnist_picture).

    python bench/predict_styles.py [--model RUN_OR_KERAS] [--n 200] [--seed 0]

Without --model, trains one first on full MNIST (default recipe, EPOCHS=3) into a temporary
folder. The same --n MNIST *test* digits (never trained on) are drawn in each style of
tests/support/pictures.py, and each picture is classified twice by the same model: with the
preprocessing `predict` had before (kept here only, for this comparison) and with today's.
The row `mnist` is the digits themselves, as 28x28 PNGs. Prints a Markdown table and writes
bench/results/predict-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from job.training import data  # noqa: E402
from job.training.predict import LOW_CONFIDENCE, mnist_picture, read_pixels  # noqa: E402
from tests.support.jobs import job_env  # noqa: E402
from tests.support.pictures import STYLES, write_pictures  # noqa: E402


def old_preprocessing(path: Path) -> np.ndarray:
    """`predict` before issue 24: grey, squash to 28x28, invert when the mean is above 127."""
    with Image.open(path) as img:
        gray = img.convert("L")
        if gray.size != (28, 28):
            gray = gray.resize((28, 28), Image.Resampling.LANCZOS)
        pixels = np.asarray(gray, dtype=np.uint8)
    return 255 - pixels if pixels.mean() > 127 else pixels


def train_model(folder: Path) -> Path:
    env = job_env(
        DATA_URI=str(ROOT / "data" / "mnist"), OUTPUT_URI=str(folder / "out"),
        RUN_ID="predict-bench", EPOCHS="3",
    )  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "job", "train"], env=env, cwd=folder, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"training failed (exit {proc.returncode})")
    return folder / "out" / "predict-bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, help="a run folder or .keras file (default: train)")
    parser.add_argument("--n", type=int, default=200, help="pictures per style (200)")
    parser.add_argument("--seed", type=int, default=0, help="which digits and pictures (0)")
    args = parser.parse_args()

    import keras

    from job.training.predict import resolve_model

    with tempfile.TemporaryDirectory(prefix="predict-bench-") as tmp:
        folder = Path(tmp)
        model_path = resolve_model(args.model or train_model(folder))
        model = keras.models.load_model(model_path, compile=False)
        metrics_file = model_path.parent.parent / "metrics.json"
        test_accuracy = (
            json.loads(metrics_file.read_text()).get("test_accuracy")
            if metrics_file.is_file()
            else None
        )
        ds = data.load("mnist", ROOT / "data" / "mnist")
        pick = np.random.default_rng(args.seed).choice(len(ds.x_test), args.n, replace=False)
        digits, labels = ds.x_test[pick], ds.y_test[pick]
        rows = []
        for style in ("mnist", *STYLES):
            if style == "mnist":
                pictures = []
                for i, digit in enumerate(digits):
                    pictures.append((folder / "mnist" / f"{i:04d}.png", int(labels[i])))
                    pictures[-1][0].parent.mkdir(exist_ok=True)
                    Image.fromarray(digit).save(pictures[-1][0])
            else:
                pictures = write_pictures(folder / style, digits, labels, style, args.seed)
            truth = np.array([label for _, label in pictures])
            row = {"style": style, "n": len(pictures)}
            for name, prepare in (("before", old_preprocessing), ("after", None)):
                started = time.perf_counter()
                batch = np.stack([
                    prepare(p) if prepare else mnist_picture(read_pixels(p)) for p, _ in pictures
                ])  # fmt: skip
                ms = 1000 * (time.perf_counter() - started) / len(pictures)
                probs = model.predict(batch[..., None], verbose=0)
                row[name] = float((probs.argmax(axis=1) == truth).mean())
                row[f"{name}_low_confidence"] = float((probs.max(axis=1) < LOW_CONFIDENCE).mean())
                row[f"{name}_ms_per_picture"] = round(ms, 2)
            rows.append(row)
            print(f"{style}: before {row['before']:.1%}, after {row['after']:.1%}", flush=True)

    print(f"\nmodel: {model_path} (test accuracy {test_accuracy})\n")
    print("| style | n | before | after | low confidence before / after |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['style']} | {r['n']} | {100 * r['before']:.1f}% | {100 * r['after']:.1f}% "
            f"| {100 * r['before_low_confidence']:.0f}% / {100 * r['after_low_confidence']:.0f}% |"
        )
    out = ROOT / "bench" / "results" / f"predict-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    record = {"model": str(model_path), "test_accuracy": test_accuracy, "seed": args.seed}
    out.write_text(json.dumps({**record, "rows": rows}, indent=1) + "\n")
    print(f"\n{out}")


if __name__ == "__main__":
    main()
