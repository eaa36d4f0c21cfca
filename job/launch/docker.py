"""The docker backend: the job's image, its settings through an env file (credentials never on
the command line), local folders mounted where the variables point."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable
from pathlib import Path

from job.config import Config
from job.errors import ConfigError, JobError
from job.launch.backend import (
    IMAGE_REF,
    Backend,
    Options,
    Started,
    forwarded,
    record,
    run_tool,
    stream_tool,
)
from job.runstore import layout
from job.runstore.store import Store

DEFAULT_IMAGE = "mnist-job:gpu"


class Docker(Backend):
    name = "docker"

    def submit(self, cfg: Config, env: dict[str, str], store: Store, opts: Options) -> Started:
        image = opts.image or DEFAULT_IMAGE
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
                run_tool(docker_command(cfg, image, opts.gpus, env_file))
            except JobError:
                # `docker run -d` can fail after creating the container (no GPU driver, say): no
                # orphan left to block the next submit under the same name.
                with contextlib.suppress(JobError):
                    run_tool(["docker", "rm", "-f", name])
                raise
        record(store, cfg.run_id, "docker", name, image=image)
        return Started(f"container {name} ({image})")

    def cancel(self, handle: str, cfg: Config) -> None:
        run_tool(["docker", "stop", "--time", "60", handle])

    def valid_handle(self, handle: str, run_id: str) -> bool:
        return handle == f"mnist-job-{run_id}"

    def logs(
        self,
        handle: str,
        cfg: Config,
        submitted: dict,
        *,
        follow: bool,
        interval: float,
        out: Callable[[str], None],
    ) -> None:
        """`docker logs [--follow] <container>`: the container stays after it ends (no --rm),
        so its log does too until it is removed."""
        stream_tool(logs_command(handle, follow), out)


def logs_command(handle: str, follow: bool) -> list[str]:
    return ["docker", "logs", *(["--follow"] if follow else []), handle]


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
