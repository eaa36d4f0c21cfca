#!/usr/bin/env bash
# Build the image: `docker/build.sh VARIANT TAG` (VARIANT cpu|gpu), what `make image` runs.
# With a Docker engine, a plain `docker build`. Without one (ENGINE=podman, as on machines with
# no Docker engine and no reachable registry), podman with the settings docker/podman-setup.sh
# prepares: the local stand-in of the python:3.11-slim base (--pull=never), and this machine's
# CA bundle and pip settings lent to the build (its egress goes through a TLS-intercepting
# proxy); neither is baked into the image.
set -euo pipefail
cd "$(dirname "$0")/.."
variant=${1:?usage: docker/build.sh cpu|gpu TAG}
tag=${2:?usage: docker/build.sh cpu|gpu TAG}
case "$variant" in cpu|gpu) ;; *) echo "VARIANT must be cpu or gpu, got '$variant'" >&2; exit 64 ;; esac
engine=${ENGINE:-$(docker info >/dev/null 2>&1 && echo docker || echo podman)}
args=(build -f docker/Dockerfile -t "$tag" --build-arg "VARIANT=$variant"
      --build-arg "VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)"
      --build-arg "REVISION=${REVISION:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}")
if [ "$engine" = podman ]; then
  export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/docker/containers.conf}
  docker/podman-setup.sh >&2
  args+=(--pull=never --network host --format docker)  # docker format: honours SHELL
  for lent in /etc/ssl/certs/ca-certificates.crt /etc/pip.conf; do
    [ -f "$lent" ] && args+=(-v "$lent:$lent:ro")
  done
fi
exec "$engine" "${args[@]}" .
