"""`make bench-heldout`: compare training settings on a held-out part of the training set.

A recipe chosen by its test accuracy makes that accuracy an optimistic estimate. This trains on
the first 50,000 training digits and scores the last 10,000 of them (the test set is never
read), with real `python -m job train` processes (the same runner as `make bench`), for every
variant and seed; within a seed the variants run back to back, so slow drift of the host hits
them alike. It prints each variant's accuracies, mean and median and, against the first
variant, the difference of the means and the share of (variant, first) pairs the variant wins
(0.5 = no difference; ties count half).

    python -m bench.heldout [--seeds 1 2 3] VARIANT [VARIANT ...]

A VARIANT is VAR=value settings joined by commas, or `-` for the recipe as it is, e.g.
    python -m bench.heldout --seeds 1 2 3 4 5 LEARNING_RATE=0.003 LEARNING_RATE=0.005,EPOCHS=30

Writes bench/results/heldout-<time>.json. Each run takes about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import datetime
from pathlib import Path

from bench.bench import RESULTS, run_job
from job import data

HELD_OUT = 10_000  # the last digits of the training set: as many as the test set


def parse_variant(text: str) -> dict[str, str]:
    """`A=1,B=2` -> {"A": "1", "B": "2"}; `-` -> {} (the recipe as it is)."""
    if text == "-":
        return {}
    settings = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise SystemExit(f"variant {text!r}: expected VAR=value[,VAR=value...] or '-'")
        settings[name.strip()] = value.strip()
    return settings


def write_split(full: data.Dataset, folder: Path) -> Path:
    """IDX files of the held-out split: train = all but the last HELD_OUT training digits,
    test = those last ones. The test set of `full` is not written."""
    folder.mkdir(parents=True, exist_ok=True)
    cut = len(full.y_train) - HELD_OUT
    arrays = {
        "x_train": full.x_train[:cut],
        "y_train": full.y_train[:cut],
        "x_test": full.x_train[cut:],
        "y_test": full.y_train[cut:],
    }
    for key, stem in data.IDX_FILES.items():
        (folder / stem).write_bytes(data.idx_bytes(arrays[key]))
    return folder


def win_share(values: list[float], baseline: list[float]) -> float:
    """The share of (value, baseline) pairs where the value is higher, ties counting half
    (the Mann-Whitney U statistic over the number of pairs)."""
    pairs = [(v > b) + 0.5 * (v == b) for v in values for b in baseline]
    return sum(pairs) / len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("variants", nargs="+", help="VAR=value[,VAR=value...] or -")
    args = parser.parse_args()
    variants = [(text, parse_variant(text)) for text in args.variants]
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    folder = write_split(data.load("mnist", None), RESULTS / "heldout-data")
    rows = []
    for seed in args.seeds:
        for index, (text, settings) in enumerate(variants):
            tag = f"{stamp}-ho{index}-s{seed}"
            row = run_job("fast", tag, DATA_URI=str(folder), SEED=str(seed), **settings)
            row.update(variant=text, seed=seed)
            print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                              for k, v in row.items()}), flush=True)  # fmt: skip
            rows.append(row)
    accuracies = {text: [r["test_accuracy"] for r in rows if r["variant"] == text]
                  for text, _ in variants}  # fmt: skip
    first = variants[0][0]
    summary = {
        text: {
            "accuracies": values,
            "mean": statistics.mean(values),
            "median": statistics.median(values),
            "mean_minus_first": statistics.mean(values) - statistics.mean(accuracies[first]),
            "wins_over_first": win_share(values, accuracies[first]),
        }
        for text, values in accuracies.items()
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"heldout-{stamp}.json"
    out.write_text(json.dumps({"seeds": args.seeds, "runs": rows, "summary": summary}, indent=2))
    print(f"\nheld-out accuracy (the last {HELD_OUT:,} training digits), seeds {args.seeds}:")
    for text, s in summary.items():
        per_seed = " ".join(f"{a * 100:.2f}" for a in s["accuracies"])
        print(f"  {text:40s} {per_seed}  mean {s['mean'] * 100:.3f}  median "
              f"{s['median'] * 100:.2f}  vs first {s['mean_minus_first'] * 100:+.3f} "
              f"(wins {s['wins_over_first']:.2f})")  # fmt: skip
    print(f"written: {out.relative_to(RESULTS.parent.parent)}")


if __name__ == "__main__":
    main()
