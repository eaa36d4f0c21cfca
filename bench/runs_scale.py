"""`make bench-runs`: what `runs`, the champion lookup and `prune --dry-run` cost with 1,000
and 10,000 runs in one bucket, on the loopback S3 server the tests use (moto).

Each run is what a finished run leaves in the bucket (status.json, run.json, metrics.json, the
model, `_SUCCESS`; five objects). Measured: requests sent (counted by botocore's event hooks)
and wall time, for the job's `runs` (a delimiter listing, then the newest 20 runs read) and for
the previous way (every key listed, every run's status read), in the same invocation.

    python bench/runs_scale.py [--sizes 1000 10000]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from job import config  # noqa: E402
from job.runstore import champion, layout  # noqa: E402
from job.runstore import prune as pruning  # noqa: E402
from job.runstore import reader as runs  # noqa: E402
from job.runstore.s3 import S3Store  # noqa: E402
from tests.support.s3 import SerialMotoServer, cos_env, s3_client  # noqa: E402
from tests.test_champion import finish_run  # noqa: E402


def populate(client, bucket: str, first: int, last: int) -> None:
    def one(i: int) -> None:
        run_id = f"20260101-{i:06d}-bench"
        status = {"run_id": run_id, "state": "succeeded", "updated_at": "2026-01-01T00:00:00Z",
                  "epoch": 20, "epochs": 20, "metrics": {"test_accuracy": 0.99}}  # fmt: skip
        for name, body in (("status.json", json.dumps(status)), ("run.json", "{}")):
            client.put_object(Bucket=bucket, Key=f"runs/{run_id}/{name}", Body=body.encode())

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(first, last)))


def measure(what, store: S3Store) -> tuple[float, int]:
    """Wall time and the number of HTTP requests `what` sends."""
    calls = []

    def count(**_) -> None:
        calls.append(1)

    store.client.meta.events.register("before-send.s3", count)
    started = time.perf_counter()
    what()
    seconds = time.perf_counter() - started
    store.client.meta.events.unregister("before-send.s3", count)
    return seconds, len(calls)


def old_runs(store: S3Store, limit: int = 20) -> list[dict]:
    """The previous `runs`: every key of every run listed, every run's status read."""
    run_ids = sorted({k.split("/", 1)[0] for k in store.list("") if k.endswith("/status.json")})
    rows = [runs.run_row(store, r) for r in run_ids]
    rows.sort(key=lambda r: r["updated_at"] or "", reverse=True)
    return rows[:limit]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--old-up-to", type=int, default=1000,
                        help="the previous way and prune only up to this many runs")  # fmt: skip
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    server = SerialMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = s3_client(endpoint)
    client.create_bucket(
        Bucket="bench", CreateBucketConfiguration={"LocationConstraint": "us-south"}
    )
    cfg = config.from_env({**cos_env(endpoint), "OUTPUT_URI": "s3://bench/runs"})
    store = S3Store(cfg.storage, layout.parse("OUTPUT_URI", cfg.output_uri))
    finish_run(store, "20260101-999999-champ", 0.99)
    champion.consider(store, "mnist", champion.candidate(store, "20260101-999999-champ"),
                      policy="if-better", margin=0.0)  # fmt: skip
    have = 0
    print(f"{'runs':>7} {'what':28s} {'requests':>9} {'seconds':>8}")
    for size in sorted(args.sizes):
        populate(client, "bench", have, size)
        have = size
        cases = [
            ("runs (newest 20)", lambda: runs.list_runs(store, 20)),
            ("champion lookup", lambda: champion.read(store, "mnist")),
        ]
        if size <= args.old_up_to:  # prune reads every run beyond --keep: O(runs), by design
            cases.insert(1, ("runs, previous way", lambda: old_runs(store, 20)))
            cases.append(
                ("prune --keep 100 --dry-run", lambda: pruning.prune(store, 100, 1e9, True))
            )
        for name, what in cases:
            seconds, requests = measure(what, store)
            print(f"{size:>7} {name:28s} {requests:>9} {seconds:>8.2f}", flush=True)
    server.stop()


if __name__ == "__main__":
    main()
