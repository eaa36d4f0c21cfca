"""The Kubernetes backend: the kustomize overlays (k8s/), rendered for the run and applied.

The repository keeps the manifests at its top level, `k8s/`, for `kubectl apply -k
k8s/overlays/gpu`; the wheel ships the same files inside the package as `job/k8s/` (package
data, mapped in pyproject.toml), so `submit --backend k8s` works from an installed wheel too.
"""

from __future__ import annotations

import json
import os
import tempfile
from importlib import resources
from pathlib import Path

from job.config import Config
from job.errors import ConfigError, JobError
from job.launch.backend import IMAGE_REF, Backend, Options, Started, forwarded, record, run_tool
from job.runstore import layout
from job.runstore.store import Store

K8S_IMAGE = "icr.io/mnist/mnist-job"  # the name the overlays give the image


class Kubernetes(Backend):
    name = "k8s"

    def submit(self, cfg: Config, env: dict[str, str], store: Store, opts: Options) -> Started:
        manifest = render_job(cfg, env, opts.overlay, opts.image)
        run_tool(["kubectl", "apply", "-f", "-"], stdin=manifest)
        record(store, cfg.run_id, "k8s", cfg.run_id, overlay=opts.overlay)
        return Started(f"Kubernetes Job {cfg.run_id} (overlay {opts.overlay})")

    def cancel(self, handle: str, cfg: Config) -> None:
        run_tool(["kubectl", "delete", "job", handle, "--wait=false"])

    def valid_handle(self, handle: str, run_id: str) -> bool:
        return handle == run_id


def render_job(cfg: Config, env: dict[str, str], overlay: str, image: str | None) -> str:
    """The Job manifest for this run: kustomize over k8s/overlays/<overlay>, no templating.
    Credentials stay in the Secret the manifests name; none is copied into the Job."""
    overlays = manifests_root() / "overlays"
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
            # Kubernetes expands $(NAME) in a value from the container's other variables, the
            # Secret's included; $$( is a literal $( to it.
            "value": {"name": k, "value": v.replace("$(", "$$(")},
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
        return run_tool(["kubectl", "kustomize", "--load-restrictor", "LoadRestrictionsNone", tmp])


_SOURCE_TREE = Path(__file__).resolve().parents[2] / "k8s"


def manifests_root() -> Path:
    """The folder holding `base/` and `overlays/`: the installed package data when present,
    else the repository's `k8s/` beside the package (a source checkout or editable install)."""
    installed = resources.files("job") / "k8s"
    # A wheel installs plain files, so the resource is a real folder; a zipped package is not.
    if isinstance(installed, Path) and (installed / "overlays").is_dir():
        return installed
    if (_SOURCE_TREE / "overlays").is_dir():
        return _SOURCE_TREE
    raise JobError(
        f"the Kubernetes manifests are missing: neither {installed} (installed package data) "
        f"nor {_SOURCE_TREE} (source checkout) holds overlays/"
    )
