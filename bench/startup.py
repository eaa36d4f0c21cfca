"""What the job itself costs around training: time to its first log line, time from the first
line to training's first epoch, and time from publication (`run_published`) to the process's
exit. The floor, measured in the same invocation: a bare `python -c "import tensorflow"`.

    python bench/startup.py [--repeat N]

Each run is a real `python -m job train` on a small slice of real MNIST (256 training and 128
test digits, one epoch, the seed recipe), in a clean environment, into a fresh folder. Prints
the median of each figure and its ratio to the floor.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.jobs import job_env  # noqa: E402


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def one_run(folder: Path) -> dict[str, float]:
    env = job_env(
        DATA_URI=str(ROOT / "data" / "mnist"), OUTPUT_URI=str(folder / "out"), RUN_ID="startup",
        TRAIN_LIMIT="256", TEST_LIMIT="128", EPOCHS="1", RECIPE="seed",
    )  # fmt: skip
    started = time.time()
    proc = subprocess.Popen(
        [sys.executable, "-m", "job", "train"], env=env, cwd=folder, text=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    first_line = None
    events: dict[str, float] = {}
    for line in proc.stderr:
        first_line = first_line or time.time()
        try:
            event = json.loads(line)
        except ValueError:
            continue
        events.setdefault(event.get("event", ""), _seconds(event["timestamp"]))
    proc.wait()
    ended = time.time()
    if proc.returncode != 0 or "run_published" not in events:
        raise SystemExit(f"the job failed (exit {proc.returncode})")
    return {
        "first_log_line": first_line - started,
        "start_to_first_epoch": events["epoch"] - started,
        "published_to_exit": ended - events["run_published"],
        "total": ended - started,
    }


def floor() -> float:
    started = time.time()
    subprocess.run(
        [sys.executable, "-c", "import tensorflow"], env=job_env(), check=True,
        capture_output=True,
    )  # fmt: skip
    return time.time() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (3)")
    args = parser.parse_args()
    runs, floors = [], []
    for _ in range(args.repeat):  # alternated, so drift on a shared machine hits both alike
        floors.append(floor())
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(one_run(Path(tmp)))
    base = statistics.median(floors)
    print(f"floor: python -c 'import tensorflow': {base:.2f} s (median of {len(floors)})")
    for key in runs[0]:
        value = statistics.median(r[key] for r in runs)
        shown = ", ".join(f"{r[key]:.2f}" for r in runs)
        print(f"{key:22s} {value:6.2f} s  ({value / base:4.2f}x the floor; runs: {shown})")


if __name__ == "__main__":
    main()
