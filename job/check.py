"""`python -m job check`: everything a run needs, checked before it spends compute.

Each check returns one `Result` (name, passed, one line of detail, and the exit class of its
failure: 78 configuration, 65 data, 75 transient). They are run in order and all reported; the
command exits with the class of the first failure. TensorFlow is imported only for `--devices`.
`train` runs `before_training` (the data's place, the store and WORK_DIR, about a second) before
it loads TensorFlow or writes anything, and `submit` runs `for_submitter` before it launches
anything.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from job import logs
from job.config import Config, Misspelled, near_misses
from job.errors import ConfigError, JobError, TransientError, classify
from job.launch import wml
from job.runstore import layout
from job.runstore.store import open_store
from job.training import precision
from job.training.fetch import SHA256

# What a run writes to WORK_DIR at most: the data when DATA_URI is a bucket (55 MB of MNIST),
# the checkpoint (5.6 MB), model.keras and the SavedModel (11 MB), the images (0.3 MB):
# under 100 MB. The check asks for 2.5 times that.
WORK_DIR_NEEDS = 256 * 2**20


@dataclass(frozen=True)
class Result:
    name: str
    passed: bool
    detail: str
    exit_code: int = 0
    seconds: float = 0.0


def run(name: str, check: Callable[[], str]) -> Result:
    """One check: its detail line, or the failure with the exit class of its error."""
    started = time.perf_counter()
    try:
        detail = check()
    except JobError as exc:
        return Result(name, False, str(exc), exc.exit_code, _since(started))
    except Exception as exc:  # a check must report, not crash the report
        detail, code = classify(exc)
        return Result(name, False, detail, code, _since(started))
    return Result(name, True, detail, 0, _since(started))


def _since(started: float) -> float:
    return round(time.perf_counter() - started, 3)


def configuration(cfg: Config) -> str:
    """The configuration loaded (its values were checked then); a name one typo from a
    variable (`EPOCH=3` for EPOCHS) fails it too: the setting meant is silently not in force."""
    misses = near_misses()
    if misses:
        raise Misspelled(misses)
    return f"valid; run id {cfg.run_id}"


def output_store(cfg: Config, store=None) -> str:
    """Reachable, the bucket exists, the keys work: a probe object written, read back and
    deleted at OUTPUT_URI's top (permissions, not only existence). Not inside a run folder:
    a finished or live-owned run is never touched, and no run folder is created or emptied.
    A local folder that does not exist yet is not created: the folder it would be made in
    must let this job make it."""
    location = layout.parse("OUTPUT_URI", cfg.output_uri)
    if store is None and not location.is_bucket and not os.path.lexists(location.path):
        return _creatable(cfg.output_uri, Path(os.path.abspath(location.path)))
    store = store or open_store(cfg.output_uri, cfg.storage)
    key = f"{layout.CHECK_PROBE}-{secrets.token_hex(6)}"
    payload = secrets.token_bytes(32)
    store.put_bytes(key, payload)
    try:
        echoed = store.get_bytes(key, limit=len(payload))
    except JobError:
        with contextlib.suppress(JobError):  # the read's error is the one to report
            store.delete(key)
        raise
    store.delete(key)
    if echoed != payload:
        raise ConfigError("OUTPUT_URI", cfg.output_uri, "a store that returns what was written")
    if store.exists(key):
        raise ConfigError("OUTPUT_URI", cfg.output_uri, "a store where a delete takes effect")
    return f"{cfg.output_uri}: write, read and delete work"


def _creatable(uri: str, path: Path) -> str:
    parent = next(p for p in path.parents if os.path.lexists(p))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError("OUTPUT_URI", uri, f"a folder this job can create (in {parent})")
    return f"{uri}: does not exist yet; train creates it in {parent}"


def input_data(cfg: Config, known: dict[str, dict[str, str]]) -> str:
    """Found where `train` looks, headers and counts valid (else DataError, 65), and for a
    dataset whose digests are known (`known`: dataset -> IDX file -> SHA-256), each file's
    SHA-256: a difference is reported by name, not failed."""
    from job.training import data  # deferred: numpy, only when the data is checked

    if data.locate(cfg.training.dataset, cfg.data_uri) is None:
        places = ", ".join(str(p) for p in data.local_candidates(cfg.training.dataset))
        return f"none in {places}: train downloads keras.datasets' copy (needs the network)"
    # System temp, not WORK_DIR: that has its own check, and each check fails alone.
    with tempfile.TemporaryDirectory(prefix="mnist-job-check-") as scratch:
        ds = data.configured(cfg, Path(scratch))
    counts = f"{len(ds.y_train)} train / {len(ds.y_test)} test from {ds.source}"
    digests = known.get(ds.name)
    if not digests:
        return f"{counts}; no known digests for {ds.name}: not verified"
    differ = [
        stem
        for key, stem in data.IDX_FILES.items()
        if data.idx_sha256(getattr(ds, key)) != digests[stem]
    ]
    if differ:
        # Reported, not failed: a slice or other data in MNIST's format trains just as well.
        return f"{counts}; SHA-256 of {', '.join(differ)} not {ds.name}'s: not the original data"
    return f"{counts}; SHA-256 of all four files match {ds.name}'s"


def work_dir(cfg: Config) -> str:
    folder = cfg.work_dir or tempfile.gettempdir()
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".mnist-job-check-") as probe:
            probe.write(b"x" * 4096)
            probe.flush()
        free = shutil.disk_usage(folder).free
    except OSError as exc:
        raise ConfigError("WORK_DIR", folder, f"a writable folder ({exc.strerror})") from None
    if free < WORK_DIR_NEEDS:
        raise ConfigError(
            "WORK_DIR", folder, f"at least {WORK_DIR_NEEDS >> 20} MiB free (has {free >> 20} MiB)"
        )
    return f"{folder}: writable, {free >> 20} MiB free (a run needs under 100 MiB)"


def peers(cfg: Config) -> str:
    """Every host named in the cluster resolves (a peer that cannot is exit 75: its pod may
    not be scheduled yet)."""
    cluster = cfg.cluster
    if cluster is None:
        return "single process: no peers"
    addresses = [a for role in cluster.spec.values() for a in role]
    for address in addresses:
        host, _, port = address.rpartition(":")
        try:
            socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
        except OSError as exc:
            raise TransientError(f"TF_CONFIG: peer {address} does not resolve ({exc})") from None
    return f"{len(addresses)} peers resolve"


def wml_service(cfg: Config) -> str:
    """Sign-in, the space, the specifications WML offers and those a run would get, and the
    connection asset if one is named (the submitter's side)."""
    api = wml.client(cfg.wml)
    with wml.reaching(cfg.wml):
        software, hardware = wml.offered_specs(api)
    chosen_software, chosen_hardware = wml.choose_specs(cfg.wml, software, hardware)
    wml.check_connection(api, cfg.wml)
    runtimes = [name for name in software if wml.tensorflow_runtime(name)]
    return (
        f"space {cfg.wml.space_id}: software {chosen_software}, hardware {chosen_hardware} "
        f"(TensorFlow runtimes offered: {wml.listing(runtimes)}; hardware offered: "
        f"{wml.listing(hardware)})"
    )


def devices(cfg: Config) -> str:
    logs.import_tensorflow_quietly(cfg.logging.level)
    import tensorflow as tf

    cpus = len(tf.config.list_physical_devices("CPU"))
    with logs.native_output_silenced(cfg.logging.level):
        gpus = precision.gpu_capabilities()
    chosen = precision.choose("auto", gpus, precision.cpu_flags())
    shown = ", ".join(f"compute {a}.{b}" for a, b in gpus) or "none"
    return f"TensorFlow {tf.__version__}: {cpus} CPU(s), GPUs: {shown}; auto precision: {chosen}"


def data_in_place(cfg: Config) -> str:
    """Where `train` will read its data holds data of the right kind: the files the loader
    would read, opened as it opens them and their headers checked, without reading them whole
    (job.training.data.in_place). A bucket's DATA_URI is checked as it is copied."""
    from job.training import data  # deferred: numpy, only when the data is checked

    where = data.locate(cfg.training.dataset, cfg.data_uri)
    if where is None or not isinstance(where, Path):
        return "read at the start of training"
    return data.in_place(where)


def before_training(cfg: Config, store) -> list[Result]:
    """The cheap checks `train` runs before it loads TensorFlow, on the store it opened, and
    before it writes anything. The data's place comes first and its error is raised as it is
    (65, the data's own line, as the loader words it, not a `check ... failed`), so a mistyped
    DATA_URI leaves no run folder behind (and costs no TensorFlow start)."""
    data_in_place(cfg)
    return [
        run("output", lambda: output_store(cfg, store)),
        run("work_dir", lambda: work_dir(cfg)),
    ]


def for_submitter(cfg: Config, backend: str) -> list[Result]:
    """What makes sense from the submitter's machine: the output store, data in a bucket (a
    local DATA_URI is the host's, not the run's), and WML's side for the wml backend."""
    results = [run("output", lambda: output_store(cfg))]
    if cfg.data_uri and layout.parse("DATA_URI", cfg.data_uri).is_bucket:
        results.append(run("data", lambda: input_data(cfg, {"mnist": SHA256})))
    if backend == "wml":
        results.append(run("wml", lambda: wml_service(cfg)))
    return results


def everything(cfg: Config, *, with_devices: bool) -> list[Result]:
    results = [
        run("output", lambda: output_store(cfg)),
        run("data", lambda: input_data(cfg, {"mnist": SHA256})),
        run("work_dir", lambda: work_dir(cfg)),
        run("peers", lambda: peers(cfg)),
    ]
    if cfg.wml.url:
        results.append(run("wml", lambda: wml_service(cfg)))
    if with_devices:
        results.append(run("devices", lambda: devices(cfg)))
    return results


def exit_code(results: list[Result]) -> int:
    return next((r.exit_code for r in results if not r.passed), 0)


def failure(results: list[Result]) -> JobError | None:
    """The first failure as the error `train`/`submit` stop with (its line, its exit class)."""
    first = next((r for r in results if not r.passed), None)
    if first is None:
        return None
    error = JobError(f"check {first.name} failed: {first.detail}")
    error.exit_code = first.exit_code
    return error
