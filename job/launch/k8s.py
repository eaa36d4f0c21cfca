"""The Kubernetes backend: the kustomize overlays (k8s/), rendered for the run and applied.

The repository keeps the manifests at its top level, `k8s/`, for `kubectl apply -k
k8s/overlays/gpu`; the wheel ships the same files inside the package as `job/k8s/` (package
data, mapped in pyproject.toml), so `submit --backend k8s` works from an installed wheel too.
Everything goes into the namespace the manifests name (k8s/components/namespace), which
`submit` renders into and `cancel` deletes from.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from urllib.parse import urlsplit

from job.config import Config
from job.errors import ConfigError, DataError, JobError
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
from job.logs import printable
from job.runstore import layout
from job.runstore.layout import SUBMISSION
from job.runstore.store import Store

K8S_IMAGE = "icr.io/mnist/mnist-job"  # the name the overlays give the image
# The object store's port the NetworkPolicy `mnist-job` allows (k8s/base/networkpolicy.yaml),
# and where its object-store rule is: an endpoint on another port is added to that rule.
OBJECT_STORE_PORT = 443
OBJECT_STORE_RULE = "/spec/egress/1"
_NAMESPACE_LINE = re.compile(
    r"^namespace:[ \t]*([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)[ \t]*(#.*)?$", re.M
)


class Kubernetes(Backend):
    name = "k8s"

    def submit(self, cfg: Config, env: dict[str, str], store: Store, opts: Options) -> Started:
        manifest = render_job(cfg, env, opts.overlay, opts.image)
        # Every object names its namespace, so the kubeconfig's current one does not matter.
        run_tool(["kubectl", "apply", "-f", "-"], stdin=manifest)
        ns = namespace()
        record(store, cfg.run_id, "k8s", cfg.run_id, overlay=opts.overlay, namespace=ns)
        return Started(f"Kubernetes Job {cfg.run_id} in namespace {ns} (overlay {opts.overlay})")

    def cancel(self, handle: str, cfg: Config) -> None:
        run_tool(["kubectl", "delete", "job", handle, "--namespace", namespace(), "--wait=false"])

    def valid_handle(self, handle: str, run_id: str) -> bool:
        return handle == run_id

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
        """`kubectl logs [--follow] job/<run id>` in the namespace the submission recorded (the
        kubeconfig's current context: the record names none). kubectl picks one pod of the
        Job: for a multi-worker run, `kubectl logs -l job-name=<run id>` shows every worker's."""
        where = f"{layout.run_uri(cfg.output_uri, cfg.run_id)}/{SUBMISSION}"
        stream_tool(logs_command(handle, recorded_namespace(submitted, where), follow), out)


def logs_command(handle: str, ns: str, follow: bool) -> list[str]:
    follows = ["--follow"] if follow else []
    return ["kubectl", "logs", f"job/{handle}", "--namespace", ns, *follows]


DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def recorded_namespace(submitted: dict, where: str) -> str:
    """The namespace a submission record names (read from a store: checked as a DNS label
    before it becomes an argument); the manifests' own for a record that names none."""
    ns = submitted.get("namespace")
    if ns is None:
        return namespace()
    if not isinstance(ns, str) or not DNS_LABEL.fullmatch(ns):
        shown = printable(ns, 80)
        raise DataError(f"{where}: namespace {shown!r} is not a Kubernetes namespace name")
    return ns


def render_job(cfg: Config, env: dict[str, str], overlay: str, image: str | None) -> str:
    """The Job manifest for this run: kustomize over k8s/overlays/<overlay>, no templating.
    Credentials stay in the Secret the manifests name (mounted as files); none is copied into
    the Job. The overlay's ConfigMap and NetworkPolicies come along; the Namespace object does
    not: creating one needs cluster-wide rights, and it must exist anyway to hold the Secret."""
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
            # Kubernetes expands $(NAME) in a value from the container's other variables and
            # turns $$ into $: every $ doubled is the value as written.
            "value": {"name": k, "value": v.replace("$", "$$")},
        }
        for k, v in sorted(settings.items())
    ]
    ns = namespace()
    # Deletions by target: one that matches nothing (the multiworker overlay has no CronJob)
    # is no error, where a patch naming its object would be.
    patches = [
        {"target": {"kind": "Job"}, "patch": json.dumps(patch)},
        {"target": {"kind": "CronJob"}, "patch": json.dumps(
            {"$patch": "delete", "apiVersion": "batch/v1", "kind": "CronJob",
             "metadata": {"name": "any"}})},
        {"target": {"kind": "Namespace"}, "patch": json.dumps(
            {"$patch": "delete", "apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": "any"}})},
    ]  # fmt: skip
    port = _endpoint_port(settings.get("COS_ENDPOINT"))
    if port != OBJECT_STORE_PORT:
        # The pod must reach the endpoint it is given; the rule's address range stays as set.
        allow = {"op": "add", "path": f"{OBJECT_STORE_RULE}/ports/-",
                 "value": {"protocol": "TCP", "port": port}}  # fmt: skip
        patches.append(
            {"target": {"kind": "NetworkPolicy", "name": "mnist-job"}, "patch": json.dumps([allow])}
        )
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": ns,  # the overlays' own, so that `cancel` looks where `submit` put it
        "resources": [],  # relative to the temporary folder below: kustomize wants that
        "patches": patches,
    }
    if image:
        kustomization["images"] = [image_override(image)]
    with tempfile.TemporaryDirectory() as tmp:
        kustomization["resources"] = [os.path.relpath(overlays / overlay, tmp)]
        (Path(tmp) / "kustomization.yaml").write_text(json.dumps(kustomization, indent=2))
        return run_tool(["kubectl", "kustomize", "--load-restrictor", "LoadRestrictionsNone", tmp])


def image_override(image: str) -> dict[str, str]:
    """The kustomize `images` entry that makes the overlays' image `image`: a tag, a digest
    (`name@sha256:...`, which keeps the run pinned) or both. A tag alone replaces the overlay's
    digest too: kustomize drops it."""
    ref, _, digest = image.partition("@")
    name, _, tag = ref.rpartition(":") if ":" in ref.rsplit("/", 1)[-1] else (ref, "", "")
    entry = {"name": K8S_IMAGE, "newName": name}
    if tag:
        entry["newTag"] = tag
    if digest:
        entry["digest"] = digest
    return entry


def _endpoint_port(endpoint: str | None) -> int:
    """The port of the object store's endpoint URL (already validated as http(s)://host[:port]);
    the overlays' own endpoint (in their ConfigMap) when none is forwarded."""
    if not endpoint:
        return OBJECT_STORE_PORT
    url = urlsplit(endpoint)
    try:
        port = url.port
    except ValueError:  # a port above 65535: the pattern allows any digits
        port = 0
    if port == 0:
        raise ConfigError("COS_ENDPOINT", endpoint, "a URL whose port is from 1 to 65535")
    return port or (443 if url.scheme == "https" else 80)


def namespace() -> str:
    """The namespace the manifests put everything in: `namespace:` of k8s/components/namespace,
    the one place it is set (read as text: PyYAML is not a dependency of the job)."""
    path = manifests_root() / "components" / "namespace" / "kustomization.yaml"
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise JobError(f"the Kubernetes manifests are incomplete: {path}: {exc}") from None
    found = _NAMESPACE_LINE.findall(text)
    if len(found) != 1:
        raise JobError(f"{path}: expected one top-level line `namespace: <DNS label>`")
    return found[0][0]


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
