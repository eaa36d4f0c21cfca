"""`make bench`: the notebook's recipe and the job's default side by side, in one invocation.

Both run as real `python -m job train` processes on full MNIST, alternated (seed, fast, then
fast, seed, ...) so machine noise hits both alike; figures are medians over the repetitions.
The machine's matmul throughput is measured in the same run, as the arithmetic yardstick.

    python bench/bench.py [--short] [--reps N]

Writes bench/results/bench-<time>.json and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TARGET = 0.99

# Multiply-adds x 2 per training sample of the seed network. The first layer needs no input
# gradient, so it costs forward + weight gradient (2x); the dense layers 3x (forward, input
# gradient, weight gradient). Pooling, ReLU and dropout are memory traffic, not FLOPs.
CONV = 26 * 26 * 32 * 3 * 3 * 2
DENSE = (5408 * 128 + 128 * 10) * 2
TRAIN_FLOPS_PER_SAMPLE = 2 * CONV + 3 * DENSE


def matmul_gflops(dtype: str, size: int = 2048, reps: int = 20) -> float:
    code = f"""
import time, tensorflow as tf
a = tf.cast(tf.random.normal(({size}, {size})), tf.{dtype})
f = tf.function(lambda a: tf.matmul(a, a))
f(a).numpy()
t = time.perf_counter()
for _ in range({reps}): r = f(a)
r.numpy()
print(2 * {size}**3 * {reps} / (time.perf_counter() - t) / 1e9)
"""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip().splitlines()[-1])


def run_job(recipe: str, epochs: int | None, tag: str) -> dict:
    """One training process; wall-clock from spawn, peak RSS and CPU time from wait4."""
    run_id = f"bench-{tag}-{recipe}"
    env = {
        **os.environ,
        "RECIPE": recipe,
        "RUN_ID": run_id,
        "OUTPUT_URI": str(RESULTS / "runs"),
        "LOG_FORMAT": "json",
    }
    if epochs:
        env["EPOCHS"] = str(epochs)
    spawned = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "job", "train"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr = proc.stderr.read()  # type: ignore[union-attr]
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.time() - spawned
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{run_id} failed ({proc.returncode}):\n{stderr[-2000:]}")
    metrics = json.loads((RESULTS / "runs" / run_id / "metrics.json").read_text())
    to_target = None
    for line in stderr.splitlines():
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        if event.get("event") == "epoch" and event.get("val_accuracy", 0) >= TARGET:
            at = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).timestamp()
            to_target = at - spawned
            break
    samples = metrics["timings"]["train_samples_per_second"] * metrics["timings"]["train_seconds"]
    cpu = usage.ru_utime + usage.ru_stime
    return {
        "recipe": recipe,
        "precision": metrics["params"]["precision"],
        "epochs": metrics["epochs_completed"],
        "samples_per_second": metrics["timings"]["train_samples_per_second"],
        "samples_per_cpu_second": samples / cpu,
        "train_seconds": metrics["timings"]["train_seconds"],
        "wall_seconds": wall,
        "seconds_to_99": to_target,
        "test_accuracy": metrics["test_accuracy"],
        "peak_rss_mb": usage.ru_maxrss / 1024,
    }


def median(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r[key] is not None]
    return statistics.median(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="2-3 epochs, one repetition")
    parser.add_argument("--reps", type=int, default=None)
    args = parser.parse_args()
    reps = args.reps or (1 if args.short else 2)
    epochs = {"seed": 2, "fast": 3} if args.short else {"seed": None, "fast": None}
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")

    peak = {"float32": matmul_gflops("float32"), "bfloat16": matmul_gflops("bfloat16")}
    print(
        f"matmul GFLOP/s: float32 {peak['float32']:.0f}, bfloat16 {peak['bfloat16']:.0f}",
        flush=True,
    )
    rows: list[dict] = []
    for rep in range(reps):
        order = ("seed", "fast") if rep % 2 == 0 else ("fast", "seed")
        for recipe in order:
            row = run_job(recipe, epochs[recipe], f"{stamp}-{rep}")
            row["arithmetic_fraction"] = (
                row["samples_per_second"] * TRAIN_FLOPS_PER_SAMPLE / (peak[row["precision"]] * 1e9)
            )
            rows.append(row)
            print(
                json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()})
            )

    keys = (
        "samples_per_second", "samples_per_cpu_second", "seconds_to_99", "test_accuracy",
        "peak_rss_mb", "arithmetic_fraction", "train_seconds",
    )  # fmt: skip
    summary = {
        recipe: {k: median([r for r in rows if r["recipe"] == recipe], k) for k in keys}
        for recipe in ("seed", "fast")
    }
    seed, fast = summary["seed"], summary["fast"]
    ratios = {
        "samples_per_second": fast["samples_per_second"] / seed["samples_per_second"],
        "samples_per_cpu_second": fast["samples_per_cpu_second"] / seed["samples_per_cpu_second"],
    }
    report = {
        "mode": "short" if args.short else "full",
        "reps": reps,
        "matmul_gflops": peak,
        "train_flops_per_sample": TRAIN_FLOPS_PER_SAMPLE,
        "runs": rows,
        "median": summary,
        "ratio_fast_over_seed": ratios,
    }
    out = RESULTS / f"bench-{stamp}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")

    def fmt(v, spec):
        return "not reached" if v is None else format(v, spec)

    print(f"\n{'median':28s} {'seed (notebook)':>18s} {'fast (default)':>18s}")
    for key, spec in (
        ("samples_per_second", ",.0f"), ("samples_per_cpu_second", ",.0f"),
        ("seconds_to_99", ".1f"), ("test_accuracy", ".4f"), ("train_seconds", ".1f"),
        ("peak_rss_mb", ",.0f"), ("arithmetic_fraction", ".1%"),
    ):  # fmt: skip
        print(f"{key:28s} {fmt(seed[key], spec):>18s} {fmt(fast[key], spec):>18s}")
    print(f"speed-up, samples/s:         {ratios['samples_per_second']:.2f}x")
    print(f"speed-up, samples/CPU-s:     {ratios['samples_per_cpu_second']:.2f}x")
    print(f"written: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
