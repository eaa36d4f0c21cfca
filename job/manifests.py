"""Where the Kubernetes manifests (the kustomize base and overlays) are.

The repository keeps them at its top level, `k8s/`, for `kubectl apply -k k8s/overlays/gpu`;
the wheel ships the same files inside the package as `job/k8s/` (package data, mapped in
pyproject.toml), so `submit --backend k8s` works from an installed wheel too.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from job.errors import JobError

_SOURCE_TREE = Path(__file__).resolve().parent.parent / "k8s"


def root() -> Path:
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
