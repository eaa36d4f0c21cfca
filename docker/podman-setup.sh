#!/usr/bin/env bash
# Prepare podman on a machine without a Docker engine or a reachable container registry:
# install it, and create a local stand-in for the CPU base image (python:3.11-slim) from
# Debian bookworm (whose python3 is 3.11) with debootstrap, so the real Dockerfile builds
# unchanged with --pull=never.
set -euo pipefail
BASE_TAG=${BASE_TAG:-docker.io/library/python:3.11-slim}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

missing=()
for tool in podman runc debootstrap fuse-overlayfs slirp4netns newuidmap; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing podman and friends (missing: ${missing[*]})"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    podman buildah fuse-overlayfs slirp4netns uidmap debootstrap runc >/dev/null
fi

if ! podman image exists "$BASE_TAG"; then
  echo "building a local stand-in for $BASE_TAG with debootstrap (bookworm, python3 3.11)"
  rootfs=$(mktemp -d /var/tmp/mnist-base.XXXXXX)
  trap 'rm -rf "$rootfs"' EXIT
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$rootfs" "$MIRROR" >/dev/null
  tar -C "$rootfs" -c . | podman import - "$BASE_TAG" >/dev/null
fi
podman --version
