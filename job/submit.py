"""`python -m job submit`: start a run on a backend, record how, and optionally follow it.

Every backend gets the job's own environment contract (the variables job.config's table marks
as forwarded), the run id fixed up front, and `<run>/submission.json` in the run's store saying
which backend started it and its handle, so `cancel` and `watch` work whoever launched the run.
The record is written only once the backend has accepted the run. Handles read back from the
store are untrusted: each backend checks its own before acting on it. No TensorFlow here.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from job import config as config_mod
from job import layout, manifests
from job.config import Config
from job.errors import ConfigError, DataError, JobError, TransientError
from job.layout import CANCELLED, SUBMISSION, SUCCESS, RunFiles, to_json
from job.publish import now_iso
from job.store import PreconditionFailed, Store

K8S_IMAGE = "icr.io/mnist/mnist-job"  # the name the overlays give the image
IMAGE_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$")


def forwarded(cfg: Config, env: dict[str, str], *, secrets: bool) -> dict[str, str]:
    """The settings a container of this run gets, by the table's `forward` column: canonical
    names (fallbacks resolved), host-only paths left out, URIs only when they name a bucket."""
    values = config_mod.given(env)
    out = {}
    for var in config_mod.VARIABLES:
        if var.name not in values or var.side == "submitter" or var.forward == "no":
            continue
        if var.secret and not secrets:
            continue
        if var.forward == "remote" and not layout.parse(var.name, values[var.name]).is_bucket:
            continue
        out[var.name] = values[var.name]
    out["RUN_ID"] = cfg.run_id
    return out


# What docker and kubectl say when their daemon or API server cannot be reached: a retry (once
# it is up) helps, so exit 75 rather than 70.
UNREACHABLE = re.compile(
    r"cannot connect|connection refused|unable to connect to the server|dial tcp|"
    r"no such host|i/o timeout|is the docker daemon running",
    re.IGNORECASE,
)


def _run(cmd: list[str], *, stdin: str | None = None) -> str:
    tool = shutil.which(cmd[0])
    if tool is None:
        raise ConfigError("PATH", cmd[0], f"a {cmd[0]} binary on PATH for this backend")
    proc = subprocess.run(
        [tool, *cmd[1:]], input=stdin, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        # The first line says what went wrong; the last is often usage help ("See 'docker
        # run --help'.").
        lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
        said = next((line for line in lines if not line.startswith("See '")), "no output")
        error = TransientError if UNREACHABLE.search(said) else JobError
        raise error(f"{cmd[0]} {cmd[1]} failed (exit {proc.returncode}): {said[:300]}")
    return proc.stdout


def record(store: Store, run_id: str, backend: str, handle: str, **extra: object) -> None:
    body = {"run_id": run_id, "backend": backend, "handle": handle, "submitted_at": now_iso()}
    RunFiles(store, run_id).put_json(SUBMISSION, {**body, **extra})


# --- local: a child process ---


@dataclass(frozen=True)
class Started:
    """What a backend says once it has accepted a run: where, and optionally how to ask it for
    the run's state while `submit --wait` follows the run."""

    where: str
    platform_state: Callable[[], tuple[str, str | None]] | None = None


def run_store(cfg: Config, store: Store, submitted: dict | None) -> Store:
    """Where the run's own files are: beside submission.json, except for WML, which puts the
    job's results under `<OUTPUT_URI>/<training id>/` (job.wml)."""
    if submitted and submitted.get("backend") == "wml":
        training = layout.run_uri(cfg.output_uri, submitted["handle"])  # checked: a WML id
        return layout.open_store(training, cfg.storage)
    return store


def check_new(cfg: Config, store: Store) -> None:
    """A run id whose run has finished is never started again (nor its records changed), and
    one that a live process owns is not started twice."""
    from job.ownership import Lease, RunOwned

    run_id = cfg.run_id
    files = RunFiles(run_store(cfg, store, submission(store, run_id)), run_id)
    if files.exists(SUCCESS):
        raise ConfigError("RUN_ID", run_id, f"a run id that has not finished (it has {SUCCESS})")
    holder = Lease(files, cfg.lease_seconds).live_holder()
    if holder:
        raise RunOwned(f"run {run_id} is running ({str(holder.get('host'))[:64]}); not submitted")


def submit_local(cfg: Config, env: dict[str, str], store: Store) -> Started:
    log = Path(tempfile.gettempdir()) / f"mnist-job-{cfg.run_id}.log"
    with log.open("ab") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "job", "train"],
            env={**env, "RUN_ID": cfg.run_id},
            stdout=out,
            stderr=out,
            start_new_session=True,  # outlives the submitter unless --wait
        )
    try:
        record(store, cfg.run_id, "local", str(child.pid), log=str(log))
    except BaseException:
        child.terminate()  # no record, no orphan: nothing could cancel or find it
        child.wait(timeout=60)  # it stops at its first check (job.preemption)
        raise
    return Started(f"local process {child.pid}, log {log}", lambda: _child_state(child))


def _child_state(child: subprocess.Popen) -> tuple[str, str | None]:
    """The local backend's view of the run, for `submit --wait`: a child that died without a
    marker is a failure `watch` reports at once instead of waiting for the stall limit."""
    code = child.poll()
    if code is None:
        return "running", None
    return ("completed", None) if code == 0 else ("failed", f"the job exited with {code}")


def _our_process(pid: int, run_id: str) -> bool:
    """True when `pid` is a live `python -m job train` of this run, started by us: a PID read
    from a store may be stale (reused by another process) or hostile."""
    proc = Path("/proc") / str(pid)
    try:
        cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        environ = (proc / "environ").read_bytes().split(b"\0")
    except OSError:  # gone, or not ours to read
        return False
    return b"job" in cmdline and b"train" in cmdline and f"RUN_ID={run_id}".encode() in environ


def cancel_local(handle: str, cfg: Config) -> None:
    if not _our_process(int(handle), cfg.run_id):
        raise ConfigError("RUN_ID", cfg.run_id, f"a running local run (process {handle} is not it)")
    os.kill(int(handle), signal.SIGTERM)  # the job checkpoints and exits 143


# --- docker: the image, credentials through an env file ---


def docker_command(cfg: Config, image: str, gpus: bool, env_file: Path) -> list[str]:
    name = f"mnist-job-{cfg.run_id}"
    cmd = ["docker", "run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp"]
    cmd += ["--env-file", str(env_file), "-e", f"RUN_ID={cfg.run_id}"]
    output = layout.parse("OUTPUT_URI", cfg.output_uri)
    if not output.is_bucket:
        host = Path(output.path).resolve()
        host.mkdir(parents=True, exist_ok=True)
        cmd += ["-v", f"{host}:/runs", "-e", "OUTPUT_URI=/runs"]
    data = layout.parse("DATA_URI", cfg.data_uri) if cfg.data_uri else None
    if data is not None and not data.is_bucket:
        # A host path means nothing in the container: mount it, read-only, where it points.
        host = Path(data.path).resolve()
        inside = f"/data/{host.name}"
        cmd += ["-v", f"{host}:{inside}:ro", "-e", f"DATA_URI={inside}"]
    if gpus:
        cmd += ["--gpus", "all"]
    return [*cmd, image, "train"]


def submit_docker(
    cfg: Config, env: dict[str, str], store: Store, image: str, gpus: bool
) -> Started:
    if not IMAGE_REF.match(image):
        raise ConfigError("--image", image, "an image reference such as mnist-job:gpu")
    variables = forwarded(cfg, env, secrets=True)  # control characters were refused by config
    variables.pop("RUN_ID")  # on the command line, where `docker inspect` shows it
    name = f"mnist-job-{cfg.run_id}"
    with tempfile.TemporaryDirectory() as tmp:
        env_file = Path(tmp) / "job.env"
        env_file.touch(mode=0o600)
        env_file.write_text("".join(f"{k}={v}\n" for k, v in sorted(variables.items())))
        try:
            _run(docker_command(cfg, image, gpus, env_file))
        except JobError:
            # `docker run -d` can fail after creating the container (no GPU driver, say): no
            # orphan left to block the next submit under the same name.
            with contextlib.suppress(JobError):
                _run(["docker", "rm", "-f", name])
            raise
    record(store, cfg.run_id, "docker", name, image=image)
    return Started(f"container {name} ({image})")


def cancel_docker(handle: str, cfg: Config) -> None:
    _run(["docker", "stop", "--time", "60", handle])


# --- k8s: the overlay, rendered by kustomize with the run id, image and settings ---


def render_job(cfg: Config, env: dict[str, str], overlay: str, image: str | None) -> str:
    """The Job manifest for this run: kustomize over k8s/overlays/<overlay>, no templating.
    Credentials stay in the Secret the manifests name; none is copied into the Job."""
    overlays = manifests.root() / "overlays"
    names = sorted(p.name for p in overlays.iterdir() if p.is_dir())
    if overlay not in names:
        raise ConfigError("--overlay", overlay, f"one of {', '.join(names)}")
    if image is not None and not IMAGE_REF.match(image):
        raise ConfigError("--image", image, "an image reference such as icr.io/ns/mnist-job:tag")
    for variable, uri in (("OUTPUT_URI", cfg.output_uri), ("DATA_URI", cfg.data_uri)):
        if uri and not layout.parse(variable, uri).is_bucket:
            # A pod cannot see this machine's folders, and `watch` would look in the wrong place.
            raise ConfigError(variable, uri, "an s3:// URI for a Kubernetes run")
    settings = forwarded(cfg, env, secrets=False)
    settings.pop("RUN_ID")  # the manifests take it from the Job's name
    patch = [{"op": "replace", "path": "/metadata/name", "value": cfg.run_id}]
    patch += [
        {
            "op": "add",
            "path": "/spec/template/spec/containers/0/env/-",
            "value": {"name": k, "value": v},
        }
        for k, v in sorted(settings.items())
    ]
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [],  # relative to the temporary folder below: kustomize wants that
        "patches": [
            {"target": {"kind": "Job"}, "patch": json.dumps(patch)},
            {"patch": json.dumps({"$patch": "delete", "apiVersion": "batch/v1",
                                  "kind": "CronJob", "metadata": {"name": "mnist-retrain"}})},
        ],
    }  # fmt: skip
    if image:
        name, _, tag = image.rpartition(":") if ":" in image.rsplit("/", 1)[-1] else (image, "", "")
        kustomization["images"] = [
            {"name": K8S_IMAGE, "newName": name, **({"newTag": tag} if tag else {})}
        ]
    with tempfile.TemporaryDirectory() as tmp:
        kustomization["resources"] = [os.path.relpath(overlays / overlay, tmp)]
        (Path(tmp) / "kustomization.yaml").write_text(json.dumps(kustomization, indent=2))
        return _run(["kubectl", "kustomize", "--load-restrictor", "LoadRestrictionsNone", tmp])


def submit_k8s(
    cfg: Config, env: dict[str, str], store: Store, overlay: str, image: str | None
) -> Started:
    manifest = render_job(cfg, env, overlay, image)
    _run(["kubectl", "apply", "-f", "-"], stdin=manifest)
    record(store, cfg.run_id, "k8s", cfg.run_id, overlay=overlay)
    return Started(f"Kubernetes Job {cfg.run_id} (overlay {overlay})")


def cancel_k8s(handle: str, cfg: Config) -> None:
    _run(["kubectl", "delete", "job", handle, "--wait=false"])


# --- wml: Watson Machine Learning runs the job package (job.wml, its own environment) ---


def submit_wml(cfg: Config, env: dict[str, str], store: Store) -> Started:
    from job import wml

    with tempfile.TemporaryDirectory() as tmp:
        started = wml.submit(cfg, env, Path(tmp))
    handle = started.pop("handle")
    record(store, cfg.run_id, "wml", handle, **started)
    return Started(f"WML training {handle}; the job writes under {started['results_uri']}")


def cancel_wml(handle: str, cfg: Config) -> None:
    from job import wml

    wml.cancel(handle, cfg)


CANCEL = {"local": cancel_local, "docker": cancel_docker, "k8s": cancel_k8s, "wml": cancel_wml}


def _valid_handle(backend: str, handle: str, run_id: str) -> bool:
    """What each backend's handle must look like for this run, before it becomes a process id
    or a command argument (a store may hold anything)."""
    if backend == "local":
        return handle.isascii() and handle.isdigit() and int(handle) > 1
    if backend == "docker":
        return handle == f"mnist-job-{run_id}"
    if backend == "k8s":
        return handle == run_id
    return re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}", handle) is not None  # a WML id


def submission(store: Store, run_id: str) -> dict | None:
    """The record `submit` left, checked: a known backend and that backend's handle."""
    files = RunFiles(store, run_id)
    submitted = files.read_json(SUBMISSION)
    if submitted is None:
        return None
    backend, handle = submitted.get("backend"), submitted.get("handle")
    if backend not in CANCEL or not isinstance(handle, str):
        raise DataError(f"{files.where(SUBMISSION)}: no known backend and handle")
    if not _valid_handle(backend, handle, run_id):
        raise DataError(f"{files.where(SUBMISSION)}: {handle[:80]!r} is not a {backend} handle")
    return submitted


def cancel(store: Store, cfg: Config) -> str:
    """Stop `cfg.run_id` through the backend that started it (the run id was validated like
    RUN_ID: it becomes part of keys and handles)."""
    run_id = cfg.run_id
    submitted = submission(store, run_id)
    if submitted is None:
        raise ConfigError("RUN_ID", run_id, "a run started by `python -m job submit`")
    files = RunFiles(run_store(cfg, store, submitted), run_id)
    if files.exists(SUCCESS):
        raise ConfigError("RUN_ID", run_id, f"a run that has not finished (it has {SUCCESS})")
    CANCEL[submitted["backend"]](submitted["handle"], cfg)
    # The job may have finished its publication while it was being stopped: then it stands,
    # and no marker goes beside its _SUCCESS.
    if not files.exists(SUCCESS):
        body = to_json({"run_id": run_id, "cancelled_at": now_iso()})
        with contextlib.suppress(PreconditionFailed):  # cancelled before: one marker is enough
            store.put_bytes(files.key(CANCELLED), body, if_none_match=True)
    return f"{submitted['backend']} {submitted['handle']}"
