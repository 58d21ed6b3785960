#!/usr/bin/env bash
# `make image`: build the Dockerfile as pgtls-proxy:<version> and pgtls-proxy:latest.
#
# Engine: docker where a docker engine answers, podman otherwise; ENGINE=docker
# or ENGINE=podman chooses. The Dockerfile's base image is made first when the
# engine lacks it (scripts/base-image.sh).
#
# podman runs as "$PODMAN" (default: podman --runtime runc --cgroup-manager
# cgroupfs) with $PODMAN_RUN_FLAGS (default: --ulimit nofile=1024:1024
# --ulimit nproc=4096:4096) on the build's RUN steps: on this machine kind crun
# refuses the host's hybrid cgroup layout, there is no systemd to manage
# cgroups, and podman's default rlimits are above the host's hard limits,
# which a container may not raise. README.md ("Containers") says more.
set -euo pipefail

cd "$(dirname "$0")/.."

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
name=${IMAGE_NAME:-pgtls-proxy}
base=$(sed -n 's/^FROM \([^ ]*\).*/\1/p' Dockerfile | head -n 1)

engine=${ENGINE:-}
if [ -z "$engine" ]; then
    if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
        engine=docker
    elif command -v podman >/dev/null 2>&1; then
        engine=podman
    else
        echo "make image: no container engine: install docker, or podman" \
            "(Debian: apt-get install podman runc debootstrap)" >&2
        exit 1
    fi
fi

case $engine in
podman)
    read -r -a cmd <<<"${PODMAN:-podman --runtime runc --cgroup-manager cgroupfs}"
    read -r -a run_flags <<<"${PODMAN_RUN_FLAGS:---ulimit nofile=1024:1024 --ulimit nproc=4096:4096}"
    # HEALTHCHECK is kept only in docker-format images (OCI has no such field).
    # The RUN steps use the host's network: packages come from the registries
    # without a podman bridge on the host.
    build_flags=(--format docker --network host "${run_flags[@]}")
    ;;
docker)
    cmd=(docker)
    build_flags=()
    ;;
*)
    echo "make image: ENGINE must be docker or podman, not '$engine'" >&2
    exit 2
    ;;
esac

# Behind a TLS-inspecting proxy pip needs its CA: the build secret "pip-ca"
# (see the Dockerfile). PIP_CERT names the bundle where pip is set up that way.
secret=()
if [ -n "${PIP_CERT:-}" ] && [ -s "$PIP_CERT" ]; then
    secret=(--secret "id=pip-ca,src=$PIP_CERT")
fi

bash scripts/base-image.sh "${cmd[*]}" "$base"

started=$SECONDS
"${cmd[@]}" build "${build_flags[@]}" "${secret[@]}" \
    --tag "$name:$version" --tag "$name:latest" .
echo "+ built $name:$version and $name:latest with $engine in $((SECONDS - started)) s"
"${cmd[@]}" image ls "$name"
