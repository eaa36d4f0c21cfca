"""The fencing behind "one run, one writer", stressed in this process: many rounds of several
writers racing for the same run through the job's own lease and publisher, on a local folder
and on the S3 server. (test_hostile.py races real `python -m job train` processes, fewer times:
that covers the process around this logic, the signals and the exit codes.)

Each writer does what a training process does with its run: take the lease (or find the run
finished), write the start record and the heartbeat, create its artifacts, write `_SUCCESS`,
and give the lease back. Whatever the interleaving, exactly one writer publishes each round,
the others stop with RunOwned (a live owner), FinishedElsewhere/LostOwnership (another process
wrote it), or find it finished, and the published run is whole: every file it lists is there
with its hash, and nothing changes after `_SUCCESS`.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import pytest

from job.config import Storage
from job.errors import PreconditionFailed
from job.runstore.layout import SUCCESS, Location, RunFiles
from job.runstore.lease import Lease, LostOwnership, RunOwned
from job.runstore.local import LocalStore
from job.runstore.publish import FinishedElsewhere, RunPublisher
from job.runstore.s3 import S3Store
from tests.support.s3 import ACCESS_KEY, REGION, SECRET_KEY
from tests.test_hostile import finished

__all__ = ["finished"]  # the module fixture: a real finished run (tests/test_hostile.py)

WRITERS = 4
STOPPED = (RunOwned, LostOwnership, FinishedElsewhere, PreconditionFailed)


def attempt(store, run_id: str, artifacts: Path, barrier: threading.Barrier) -> str:
    """One writer's attempt on the run: how it ended."""
    publisher = RunPublisher(store, run_id)
    barrier.wait()  # all writers start together: the race is the point
    if publisher.succeeded():
        return "finished"
    lease = Lease(publisher, seconds=60)
    try:
        lease.acquire()
        publisher.lease = lease
        if publisher.succeeded():
            return "finished"
        publisher.adopt()
        publisher.start({"run_id": run_id, "writer": artifacts.name})
        publisher.status("running", epoch=1)
        publisher.publish(artifacts, epoch=1, epochs=1)
        return "published"
    except STOPPED as exc:
        return type(exc).__name__
    finally:
        if lease.etag is not None:
            lease.release()


def race(store, run_id: str, tmp_path: Path) -> list[str]:
    barrier = threading.Barrier(WRITERS)
    outcomes: list[str] = [""] * WRITERS
    threads = []
    for i in range(WRITERS):
        artifacts = tmp_path / run_id / f"writer-{i}"
        (artifacts / "images").mkdir(parents=True)
        (artifacts / "metrics.json").write_text(json.dumps({"writer": i}))
        (artifacts / "images" / "a.png").write_bytes(bytes([i]) * 1000)

        def run(i=i, artifacts=artifacts) -> None:
            outcomes[i] = attempt(store, run_id, artifacts, barrier)

        threads.append(threading.Thread(target=run))
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return outcomes


def assert_whole(store, run_id: str) -> dict[str, bytes]:
    """The published run: `_SUCCESS` lists every file, each matching its hash, all from one
    writer; returns its objects."""
    files = RunFiles(store, run_id)
    manifest = files.read_json(SUCCESS)
    assert manifest is not None, "nobody published"
    writers = set()
    for entry in manifest["files"]:
        raw = store.get_bytes(files.key(entry["path"]), limit=2**30)
        assert raw is not None and hashlib.sha256(raw).hexdigest() == entry["sha256"], entry
        if entry["path"] == "metrics.json":
            writers.add(json.loads(raw)["writer"])
    assert len(writers) == 1, f"files from several writers: {writers}"
    return {k: store.get_bytes(k, limit=2**30) for k in store.list(run_id + "/")}


def rounds(store, tmp_path: Path, n: int) -> dict[str, int]:
    seen: dict[str, int] = {}
    for r in range(n):
        run_id = f"race-{r}"
        outcomes = race(store, run_id, tmp_path)
        assert outcomes.count("published") == 1, outcomes
        assert set(outcomes) <= {"published", "finished", *(e.__name__ for e in STOPPED)}
        finished = assert_whole(store, run_id)
        # A late writer, after the race, finds the run finished and changes nothing.
        late = attempt(store, run_id, tmp_path / run_id / "writer-0", threading.Barrier(1))
        assert late == "finished"
        assert {k: store.get_bytes(k, limit=2**30) for k in store.list(run_id + "/")} == finished
        for outcome in outcomes:
            seen[outcome] = seen.get(outcome, 0) + 1
    return seen


def test_one_writer_publishes_each_round_on_a_local_folder(tmp_path):
    seen = rounds(LocalStore(tmp_path / "out"), tmp_path, 300)
    assert seen["published"] == 300


@pytest.mark.slow
def test_one_writer_publishes_each_round_on_s3(s3_endpoint, bucket, tmp_path):
    storage = Storage(endpoint=s3_endpoint, access_key_id=ACCESS_KEY,
                      secret_access_key=SECRET_KEY, region=REGION)  # fmt: skip
    seen = rounds(S3Store(storage, Location("runs", bucket)), tmp_path, 40)
    assert seen["published"] == 40


# --- prune against a champion decision (job.runstore.hold) --------------------------------

RACE_OFFSETS = (0.0, 0.4, 0.8, 1.2, 1.6, 2.2)


@pytest.mark.slow
def test_prune_racing_promote_never_leaves_a_champion_without_its_run(
    finished, s3_endpoint, bucket, tmp_path
):
    """`prune --keep 0` and `promote --force` of the same run, the promote started at several
    offsets into the prune, every request 0.1 s late (a latency proxy): whichever wins, the
    champion record never names a run whose files are gone. Before the hold protocol the
    review reproduced exactly that (champion.json naming cand-1, no object of cand-1 left)."""
    from job.runstore import champion
    from job.runstore.reader import RunReader
    from tests.support.faultproxy import FaultProxy, Faults
    from tests.support.jobs import job_env, start_job
    from tests.support.s3 import all_objects, cos_env, s3_client

    client = s3_client(s3_endpoint)
    files = [p for p in (finished / "done").rglob("*") if p.is_file()]
    old = json.dumps({"state": "succeeded", "updated_at": "2026-01-01T00:00:00.000Z"}).encode()
    outcomes = []
    with FaultProxy(s3_endpoint, Faults(latency_s=0.1)) as proxy:
        for i, offset in enumerate(RACE_OFFSETS):
            prefix = f"race-{i}"
            for path in files:
                key = f"{prefix}/cand-1/{path.relative_to(finished / 'done').as_posix()}"
                body = old if path.name == "status.json" else path.read_bytes()
                client.put_object(Bucket=bucket, Key=key, Body=body)
            env = job_env(**cos_env(proxy.url), OUTPUT_URI=f"s3://{bucket}/{prefix}")
            pruning = start_job("prune", "--keep", "0", "--older-than-hours", "0", env=env,
                                cwd=tmp_path)  # fmt: skip
            time.sleep(offset)
            promoting = start_job("promote", "cand-1", "--force", env=env, cwd=tmp_path)
            pruned, promoted = pruning.communicate(timeout=120), promoting.communicate(timeout=120)
            left = {k for k in all_objects(s3_endpoint, bucket) if k.startswith(f"{prefix}/")}
            store = S3Store(Storage(endpoint=s3_endpoint, access_key_id=ACCESS_KEY,
                                    secret_access_key=SECRET_KEY, region=REGION),
                            Location(prefix, bucket))  # fmt: skip
            record, _ = champion.read(store, "mnist")
            if record is not None:  # the champion's run is whole: every listed file there
                entries = RunReader(store, record["run_id"]).manifest()
                assert all(f"{prefix}/{record['run_id']}/{e['path']}" in left for e in entries)
            outcomes.append((offset, pruning.returncode, pruned[0].strip().splitlines()[-1:],
                             promoting.returncode, (promoted[0] or promoted[1]).strip()[-90:],
                             "champion" if record else "no champion"))  # fmt: skip
    for outcome in outcomes:
        print("prune/promote race:", outcome)
    for _, prune_code, _, promote_code, _, _ in outcomes:
        assert prune_code == 0 and promote_code in (0, 65), outcomes
