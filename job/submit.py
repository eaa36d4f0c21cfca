"""`python -m job submit`: start a run on a backend, record how, and optionally follow it.

Every backend gets the job's own environment contract (the variables job.config reads), the run
id fixed up front, and `<run>/submission.json` in the run's store saying which backend started
it and its handle, so `cancel` and `watch` work whoever launched the run. No TensorFlow here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from job import config as config_mod
from job.errors import ConfigError, JobError
from job.publish import RunFiles, now_iso
from job.runs import CANCELLED, SUBMISSION
from job.store import Store

K8S_DIR = Path(__file__).resolve().parent.parent / "k8s"
K8S_IMAGE = "icr.io/mnist/mnist-job"  # the name the overlays give the image
# Never copied into a manifest: Kubernetes takes them from the Secret mnist-job-cos.
SECRET_VARIABLES = {
    "COS_ACCESS_KEY_ID",
    "COS_SECRET_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
}


def job_variables(environ: dict[str, str]) -> dict[str, str]:
    """The variables of the job's contract that are set here (secrets included)."""
    names = set(config_mod.VARIABLES) | set(config_mod.CLUSTER_INTS) | {"TF_CONFIG"}
    names |= {"WORKER_SERVICE", "JOB_NAME", "ENV_FILE"}
    for alternatives in config_mod.FALLBACKS.values():
        names |= set(alternatives)
    return {k: v for k, v in environ.items() if k in names and v.strip()}


def record(store: Store, run_id: str, backend: str, handle: str, **extra: object) -> None:
    body = {"run_id": run_id, "backend": backend, "handle": handle, "submitted_at": now_iso()}
    RunFiles(store, run_id).put_json(SUBMISSION, {**body, **extra})


def _run(cmd: list[str], *, stdin: str | None = None) -> str:
    tool = shutil.which(cmd[0])
    if tool is None:
        raise ConfigError("PATH", cmd[0], f"a {cmd[0]} binary on PATH for this backend")
    proc = subprocess.run(
        [tool, *cmd[1:]], input=stdin, capture_output=True, text=True, check=False
    )
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise JobError(f"{cmd[0]} {cmd[1]} failed (exit {proc.returncode}): {last}")
    return proc.stdout


# --- local: a child process ---


def submit_local(cfg, env: dict[str, str], store: Store) -> str:
    log = Path(tempfile.gettempdir()) / f"mnist-job-{cfg.run_id}.log"
    with log.open("ab") as out:
        child = subprocess.Popen(
            [sys.executable, "-m", "job", "train"],
            env={**env, "RUN_ID": cfg.run_id},
            stdout=out,
            stderr=out,
            start_new_session=True,  # outlives the submitter unless --wait
        )
    record(store, cfg.run_id, "local", str(child.pid), log=str(log))
    return f"local process {child.pid}, log {log}"


def cancel_local(handle: str, env: dict[str, str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(int(handle), signal.SIGTERM)  # the job checkpoints and exits 143


# --- docker: the image, credentials through an env file ---


def docker_command(cfg, env: dict[str, str], image: str, gpus: bool, env_file: Path) -> list[str]:
    name = f"mnist-job-{cfg.run_id}"
    cmd = ["docker", "run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp"]
    cmd += ["--env-file", str(env_file), "-e", f"RUN_ID={cfg.run_id}"]
    if "://" not in cfg.output_uri or cfg.output_uri.startswith("file://"):
        host = Path(cfg.output_uri.removeprefix("file://")).resolve()
        host.mkdir(parents=True, exist_ok=True)
        cmd += ["-v", f"{host}:/runs", "-e", "OUTPUT_URI=/runs"]
    if gpus:
        cmd += ["--gpus", "all"]
    return [*cmd, image, "train"]


def submit_docker(cfg, env: dict[str, str], store: Store, image: str, gpus: bool) -> str:
    variables = {k: v for k, v in job_variables(env).items() if k not in ("RUN_ID", "OUTPUT_URI")}
    if "://" in cfg.output_uri and not cfg.output_uri.startswith("file://"):
        variables["OUTPUT_URI"] = cfg.output_uri
    with tempfile.TemporaryDirectory() as tmp:
        env_file = Path(tmp) / "job.env"
        env_file.touch(mode=0o600)
        env_file.write_text("".join(f"{k}={v}\n" for k, v in sorted(variables.items())))
        name = f"mnist-job-{cfg.run_id}"
        record(store, cfg.run_id, "docker", name, image=image)
        _run(docker_command(cfg, env, image, gpus, env_file))
    return f"container {name} ({image})"


def cancel_docker(handle: str, env: dict[str, str]) -> None:
    _run(["docker", "stop", "--time", "60", handle])


# --- k8s: the overlay, rendered by kustomize with the run id, image and settings ---


def render_job(cfg, env: dict[str, str], overlay: str, image: str | None) -> str:
    """The Job manifest for this run: kustomize over k8s/overlays/<overlay>, no templating."""
    source = K8S_DIR / "overlays" / overlay
    if not source.is_dir():
        raise ConfigError(
            "--overlay", overlay, f"one of {sorted(p.name for p in source.parent.iterdir())}"
        )
    skip = SECRET_VARIABLES | {"RUN_ID", "ENV_FILE"}
    settings = {k: v for k, v in job_variables(env).items() if k not in skip}
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
        kustomization["resources"] = [os.path.relpath(source, tmp)]
        (Path(tmp) / "kustomization.yaml").write_text(json.dumps(kustomization, indent=2))
        return _run(["kubectl", "kustomize", "--load-restrictor", "LoadRestrictionsNone", tmp])


def submit_k8s(cfg, env: dict[str, str], store: Store, overlay: str, image: str | None) -> str:
    manifest = render_job(cfg, env, overlay, image)
    record(store, cfg.run_id, "k8s", cfg.run_id, overlay=overlay)
    _run(["kubectl", "apply", "-f", "-"], stdin=manifest)
    return f"Kubernetes Job {cfg.run_id} (overlay {overlay})"


def cancel_k8s(handle: str, env: dict[str, str]) -> None:
    _run(["kubectl", "delete", "job", handle, "--wait=false"])


# --- wml: Watson Machine Learning runs the job package (job.wml, its own environment) ---


def submit_wml(cfg, env: dict[str, str], store: Store) -> str:
    from job import wml

    with tempfile.TemporaryDirectory() as tmp:
        started = wml.submit(cfg, env, Path(tmp))
    handle = started.pop("handle")
    record(store, cfg.run_id, "wml", handle, **started)
    return f"WML training {handle}; the job writes under {started['results_uri']}"


def cancel_wml(handle: str, env: dict[str, str]) -> None:
    from job import wml

    wml.cancel(handle, env)


CANCEL = {"local": cancel_local, "docker": cancel_docker, "k8s": cancel_k8s, "wml": cancel_wml}


def submission(store: Store, run_id: str) -> dict | None:
    return RunFiles(store, run_id).read_json(SUBMISSION)


def cancel(store: Store, run_id: str, env: dict[str, str]) -> str:
    submitted = submission(store, run_id)
    if submitted is None:
        raise ConfigError("RUN_ID", run_id, "a run started by `python -m job submit`")
    CANCEL[submitted["backend"]](submitted["handle"], env)
    RunFiles(store, run_id).put_json(CANCELLED, {"run_id": run_id, "cancelled_at": now_iso()})
    return f"{submitted['backend']} {submitted['handle']}"
