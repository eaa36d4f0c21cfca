"""`make bench-heldout`: compare training settings on a held-out part of the training set.

A recipe chosen by its test accuracy makes that accuracy an optimistic estimate. This trains on
the first 50,000 training digits and scores the last 10,000 of them (the test set is never
written to the split, and every run is checked to have scored the split), with real
`python -m job train` processes (the runner of `make bench`, which gives each run a clean
environment: no job variable of the caller's shell or `.env` reaches it), for every variant and
seed. Within a seed the variants run back to back, in an order rotated from seed to seed, so
slow drift of the host hits them alike.

It prints each variant's held-out accuracies, mean and median and, against the first variant,
the difference of the means, in how many seeds the variant was higher, and the share of all
(variant, first) pairs it wins (0.5 = no difference; ties count half). On the split an epoch
has 97 steps of 512, not 117: fine for ranking variants, not a forecast of test accuracy.

    python -m bench.heldout [--seeds 1,2,3] VARIANT [VARIANT ...]

A VARIANT is VAR=value settings joined by commas, or `-` for the recipe as it is, e.g.
    python -m bench.heldout --seeds 1,2,3,4,5 LEARNING_RATE=0.003 - LEARNING_RATE=0.005,EPOCHS=30

Appends each run to bench/results/heldout-<time>.jsonl as it ends. About a minute a run on 2
cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from datetime import datetime
from pathlib import Path

from bench.bench import RESULTS, ROOT, run_job
from job import config
from job.training import data

HELD_OUT = 10_000  # the last digits of the training set: as many as the test set
# What a variant may change: the fast recipe's training variables, less those this tool sets
# (SEED, the data) or that would train or score on something else than the split.
SET_HERE = {"DATASET", "RECIPE", "SEED", "TRAIN_LIMIT", "TEST_LIMIT"}
VARIANT_VARIABLES = frozenset({*config.HYPERPARAMETERS, "THREADS"} - SET_HERE)


def parse_variant(text: str) -> dict[str, str]:
    """`A=1,B=2` -> {"A": "1", "B": "2"}; `-` -> {} (the recipe as it is). Only
    VARIANT_VARIABLES, each with a value: a misspelt name would silently compare the default."""
    if text == "-":
        return {}
    settings = {}
    for item in text.split(","):
        name, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not value:
            raise SystemExit(f"variant {text!r}: expected VAR=value[,VAR=value...] or '-'")
        if name not in VARIANT_VARIABLES:
            raise SystemExit(
                f"variant {text!r}: {name!r} is not one of {', '.join(sorted(VARIANT_VARIABLES))}"
            )
        settings[name] = value
    return settings


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise SystemExit(f"--seeds {text!r}: expected comma-separated integers") from None
    if len(set(seeds)) != len(seeds) or not all(0 <= s < 2**31 for s in seeds):
        raise SystemExit(f"--seeds {text!r}: expected distinct integers 0 to 2**31-1")
    return seeds


def parse_args(argv: list[str] | None = None) -> tuple[list[int], list[tuple[str, dict]]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated (1,2,3)")
    parser.add_argument("variants", nargs="+", help="VAR=value[,VAR=value...] or -")
    args = parser.parse_args(argv)
    if len(set(args.variants)) != len(args.variants):
        raise SystemExit(f"variants {args.variants}: each at most once")
    return parse_seeds(args.seeds), [(text, parse_variant(text)) for text in args.variants]


def write_split(x_train, y_train, folder: Path) -> Path:
    """IDX files of the held-out split, from the training set alone: train = all but the last
    HELD_OUT digits, test = those last ones."""
    cut = len(y_train) - HELD_OUT
    if cut <= 0:
        raise SystemExit(f"a training set of {len(y_train)} digits has no {HELD_OUT} to hold out")
    arrays = {"x_train": x_train[:cut], "y_train": y_train[:cut],
              "x_test": x_train[cut:], "y_test": y_train[cut:]}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    for key, stem in data.IDX_FILES.items():
        (folder / stem).write_bytes(data.idx_bytes(arrays[key]))
    return folder


def win_share(values: list[float], baseline: list[float]) -> float:
    """The share of (value, baseline) pairs where the value is higher, ties counting half
    (the Mann-Whitney U statistic over the number of pairs)."""
    pairs = [(v > b) + 0.5 * (v == b) for v in values for b in baseline]
    return sum(pairs) / len(pairs)


def summarise(rows: list[dict], variants: list[str]) -> dict:
    def accuracy(text: str, seed: int) -> float:
        return next(
            r["heldout_accuracy"] for r in rows if (r["variant"], r["seed"]) == (text, seed)
        )

    seeds = sorted({r["seed"] for r in rows})
    first = [accuracy(variants[0], s) for s in seeds]
    summary = {}
    for text in variants:
        values = [accuracy(text, s) for s in seeds]
        summary[text] = {
            "accuracies": values,
            "mean": statistics.mean(values),
            "median": statistics.median(values),
            "mean_minus_first": statistics.mean(values) - statistics.mean(first),
            "seeds_higher_than_first": sum(v > f for v, f in zip(values, first, strict=True)),
            "wins_over_first": win_share(values, first),
        }
    return summary


def main(argv: list[str] | None = None) -> None:
    seeds, variants = parse_args(argv)
    full = data.load("mnist", ROOT / "data" / "mnist")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    RESULTS.mkdir(parents=True, exist_ok=True)
    log = RESULTS / f"heldout-{stamp}.jsonl"
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="heldout-") as scratch:
        split = data.load("mnist", write_split(full.x_train, full.y_train, Path(scratch)))
        expected = data.test_set_sha256(split)
        indexed = list(enumerate(variants))
        for turn, seed in enumerate(seeds):
            shift = turn % len(indexed)
            for index, (text, settings) in indexed[shift:] + indexed[:shift]:
                run = run_job("fast", f"{stamp}-ho{index}-s{seed}", DATA_URI=split.source,
                              SEED=str(seed), **settings)  # fmt: skip
                if (run["test_set_sha256"], run["n_train"]) != (expected, len(split.y_train)):
                    raise SystemExit(f"run {run} did not train and score on the held-out split")
                kept = {k: run[k] for k in ("epochs", "samples_per_second", "wall_seconds")}
                row = {
                    "variant": text,
                    "seed": seed,
                    "heldout_accuracy": run["test_accuracy"],
                    **kept,
                }
                print(json.dumps(row), flush=True)
                with log.open("a") as out:
                    out.write(json.dumps(row) + "\n")
                rows.append(row)
    summary = summarise(rows, [text for text, _ in variants])
    print(f"\nheld-out accuracy (the last {HELD_OUT:,} training digits), seeds {seeds}:")
    for text, s in summary.items():
        per_seed = " ".join(f"{a * 100:.2f}" for a in s["accuracies"])
        print(f"  {text:40s} {per_seed}  mean {s['mean'] * 100:.3f}  median "
              f"{s['median'] * 100:.2f}  vs first {s['mean_minus_first'] * 100:+.3f}, higher in "
              f"{s['seeds_higher_than_first']} of {len(seeds)} seeds, pairs won "
              f"{s['wins_over_first']:.2f}")  # fmt: skip
    with log.open("a") as out:
        out.write(json.dumps({"summary": summary}) + "\n")
    print(f"written: {log}")


if __name__ == "__main__":
    main()
