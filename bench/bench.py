"""`make bench`: the job's default recipe against the notebook's, in one invocation.

Every figure comes from real `python -m job train` processes on full MNIST (wall time from
spawn, peak RSS and CPU time from wait4), on whatever machine runs it (CPU or GPU: nothing here
assumes either). Measured, in this order:

1. time to 99%: the default recipe with TARGET_ACCURACY=0.99, three times; seconds from process
   start to the end of the first epoch at 99% test accuracy (median);
2. final accuracy: the default run to its end with SEED=1, 2, 3 (median), which also gives its
   samples/s and peak RSS;
3. the notebook: the seed recipe to its end, once (samples/s, accuracy, RSS);
4. float32 throughput, the non-bfloat16 case: both recipes for 4 epochs with PRECISION=float32,
   alternated, so the ratio holds on a CPU without bfloat16 hardware too;
5. determinism's cost: the default recipe for 3 epochs with DETERMINISTIC=on and off,
   alternated, three times each (median samples/s);
and the machine's matmul throughput (float32, bfloat16), the arithmetic yardstick.

    python bench/bench.py [--short]     (--short: one repetition of each, fewer epochs)
    python bench/bench.py --determinism (5. alone: `make bench-determinism`)

Writes bench/results/bench-<time>.json and prints a summary with ratios against the notebook.
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

from job import config
from job.training import cpus, precision

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
TARGET = 0.99

# Multiply-adds x 2 per training sample of the seed network. The first layer needs no input
# gradient, so it costs forward + weight gradient (2x); the dense layers 3x (forward, input
# gradient, weight gradient). Pooling, ReLU and dropout are memory traffic, not FLOPs.
CONV = 26 * 26 * 32 * 3 * 3 * 2
DENSE = (5408 * 128 + 128 * 10) * 2
TRAIN_FLOPS_PER_SAMPLE = 2 * CONV + 3 * DENSE


SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        lines = cpuinfo.read_text().splitlines()
    except OSError:
        return "unknown"
    return next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "?")


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


# Every job variable and its aliases (TRAINING_ID, the AWS names, ...).
JOB_NAMES = frozenset(n for v in config.VARIABLES for n in (v.name, *v.fallbacks))


def clean_environment() -> dict[str, str]:
    """The caller's environment less every job variable, and an empty ENV_FILE so a `.env` in
    the repository does not reach the runs either: a run gets only what the benchmark sets."""
    empty = RESULTS / "empty.env"
    empty.parent.mkdir(parents=True, exist_ok=True)
    empty.write_text("")
    kept = {k: v for k, v in os.environ.items() if k not in JOB_NAMES}
    return {**kept, "ENV_FILE": str(empty)}


def run_job(recipe: str, tag: str, **settings: str) -> dict:
    """One training process in a clean environment; wall-clock from spawn, peak RSS and CPU
    time from wait4."""
    run_id = f"bench-{tag}-{recipe}"
    env = {
        **clean_environment(),
        "RECIPE": recipe,
        "RUN_ID": run_id,
        "OUTPUT_URI": str(RESULTS / "runs"),
        "LOG_FORMAT": "json",
        **settings,
    }
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
        "n_train": metrics["n_train"],
        "test_set_sha256": metrics["test_set_sha256"],
    }


def median(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r[key] is not None]
    return statistics.median(values) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="one repetition, fewer epochs")
    parser.add_argument("--determinism", action="store_true", help="only determinism's cost")
    args = parser.parse_args()
    reps = 1 if args.short else 3
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    flags = precision.cpu_flags()
    bf16_cpu = sorted(flags & precision.CPU_BF16_FLAGS)
    simd = [f for f in SIMD_FLAGS if f in flags]
    model = cpu_model()
    peak = {"float32": matmul_gflops("float32"), "bfloat16": matmul_gflops("bfloat16")}
    print(f"CPU: {model}, {cpus.usable(None)[0]} usable; flags: "
          f"{' '.join(simd) or 'none of ' + ' '.join(SIMD_FLAGS)}", flush=True)  # fmt: skip
    print(f"matmul GFLOP/s: float32 {peak['float32']:.0f}, bfloat16 {peak['bfloat16']:.0f}; "
          f"CPU bfloat16 flags: {', '.join(bf16_cpu) or 'none'}", flush=True)  # fmt: skip

    def record(group: str, row: dict) -> dict:
        row["group"] = group
        row["arithmetic_fraction"] = (
            row["samples_per_second"] * TRAIN_FLOPS_PER_SAMPLE / (peak[row["precision"]] * 1e9)
        )
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
              flush=True)  # fmt: skip
        rows.append(row)
        return row

    rows: list[dict] = []

    def determinism_cost() -> dict:
        for rep in range(3):
            for mode in (("on", "off"), ("off", "on"))[rep % 2]:
                row = run_job("fast", f"{stamp}-det-{mode}-{rep}", EPOCHS="3", DETERMINISTIC=mode)
                record(f"deterministic-{mode}", row)
        on = median([r for r in rows if r["group"] == "deterministic-on"], "samples_per_second")
        off = median([r for r in rows if r["group"] == "deterministic-off"], "samples_per_second")
        return {"deterministic_samples_per_second": on, "nondeterministic_samples_per_second": off,
                "ratio_deterministic_samples_per_second": on / off}  # fmt: skip

    if args.determinism:
        cost = determinism_cost()
        out = RESULTS / f"bench-determinism-{stamp}.json"
        out.write_text(json.dumps({"runs": rows, "summary": cost}, indent=2) + "\n")
        for key, value in cost.items():
            print(f"{key:38s} {value:>12,.2f}")
        print(f"written: {out.relative_to(ROOT)}")
        return
    short = {"EPOCHS": "3"} if args.short else {}
    for rep in range(reps):
        record("to_99", run_job("fast", f"{stamp}-t{rep}", TARGET_ACCURACY=str(TARGET)))
    for seed in range(1, reps + 1):
        record("final", run_job("fast", f"{stamp}-s{seed}", SEED=str(seed), **short))
    record("notebook", run_job("seed", f"{stamp}-nb", **({"EPOCHS": "2"} if args.short else {})))
    for order in (("seed", "fast"), ("fast", "seed"))[: 1 if args.short else 2]:
        for recipe in order:
            tag = f"{stamp}-f32-{len(rows)}"
            record(f"float32-{recipe}", run_job(recipe, tag, EPOCHS="4", PRECISION="float32"))

    cost = determinism_cost()

    def med(group: str, key: str) -> float | None:
        return median([r for r in rows if r["group"] == group], key)

    summary = {
        "seconds_to_99": med("to_99", "seconds_to_99"),
        "to_99_wall_seconds": med("to_99", "wall_seconds"),
        "final_accuracy": med("final", "test_accuracy"),
        "final_accuracies": [r["test_accuracy"] for r in rows if r["group"] == "final"],
        "default_samples_per_second": med("final", "samples_per_second"),
        "notebook_samples_per_second": med("notebook", "samples_per_second"),
        "notebook_accuracy": med("notebook", "test_accuracy"),
        "float32_default_samples_per_second": med("float32-fast", "samples_per_second"),
        "float32_notebook_samples_per_second": med("float32-seed", "samples_per_second"),
        "float32_default_arithmetic_fraction": med("float32-fast", "arithmetic_fraction"),
        "default_precision": next(r["precision"] for r in rows if r["group"] == "final"),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in rows if r["group"] != "notebook"),
        "notebook_peak_rss_mb": med("notebook", "peak_rss_mb"),
        **cost,
    }
    summary["ratio_samples_per_second"] = (
        summary["default_samples_per_second"] / summary["notebook_samples_per_second"]
    )
    summary["ratio_float32_samples_per_second"] = (
        summary["float32_default_samples_per_second"]
        / summary["float32_notebook_samples_per_second"]
    )
    report = {"mode": "short" if args.short else "full", "matmul_gflops": peak,
              "cpu_model": model, "cpu_simd_flags": simd, "cpu_bf16_flags": bf16_cpu,
              "train_flops_per_sample": TRAIN_FLOPS_PER_SAMPLE,
              "runs": rows, "summary": summary}  # fmt: skip
    out = RESULTS / f"bench-{stamp}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")

    def fmt(v, spec):
        return "not reached" if v is None else format(v, spec)

    print()
    for key, spec in (
        ("seconds_to_99", ".1f"), ("to_99_wall_seconds", ".1f"), ("final_accuracy", ".4f"),
        ("notebook_accuracy", ".4f"), ("default_samples_per_second", ",.0f"),
        ("notebook_samples_per_second", ",.0f"), ("ratio_samples_per_second", ".2f"),
        ("float32_default_samples_per_second", ",.0f"),
        ("float32_notebook_samples_per_second", ",.0f"),
        ("ratio_float32_samples_per_second", ".2f"), ("float32_default_arithmetic_fraction", ".1%"),
        ("peak_rss_mb", ",.0f"), ("notebook_peak_rss_mb", ",.0f"),
        ("deterministic_samples_per_second", ",.0f"),
        ("nondeterministic_samples_per_second", ",.0f"),
        ("ratio_deterministic_samples_per_second", ".3f"),
    ):  # fmt: skip
        print(f"{key:38s} {fmt(summary[key], spec):>12s}")
    print(f"final accuracies (seeds 1..{reps}): {summary['final_accuracies']}")
    print(f"default precision: {summary['default_precision']}; written: {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
