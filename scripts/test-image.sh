#!/usr/bin/env bash
# `make test-image`: build the image with podman and run tests/image against it.
#
# The tests drive podman (healthcheck run, slirp4netns networking), so podman
# builds the image here whatever engine `make image` would pick. Where podman
# is installed but no container can start at all (no privileges for
# namespaces, say), the tests are skipped with one line saying why; anything
# else that fails, fails.
set -euo pipefail

cd "$(dirname "$0")/.."

PODMAN=${PODMAN:-podman --runtime runc --cgroup-manager cgroupfs}
PODMAN_RUN_FLAGS=${PODMAN_RUN_FLAGS:---ulimit nofile=1024:1024 --ulimit nproc=4096:4096}
export PODMAN PODMAN_RUN_FLAGS
read -r -a cmd <<<"$PODMAN"
read -r -a run_flags <<<"$PODMAN_RUN_FLAGS"

for tool in podman slirp4netns psql; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        echo "make test-image: $tool not found (Debian: apt-get install podman runc" \
            "slirp4netns debootstrap postgresql-client)" >&2
        exit 1
    fi
done

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' pyproject.toml)
base=$(sed -n 's/^FROM \([^ ]*\).*/\1/p' Dockerfile | head -n 1)
bash scripts/base-image.sh "$PODMAN" "$base"

if ! probe=$("${cmd[@]}" run --rm "${run_flags[@]}" --network none "$base" true 2>&1); then
    echo "make test-image: SKIPPED: containers cannot run on this machine" \
        "($PODMAN run: $(tail -n 1 <<<"$probe"))"
    exit 0
fi

started=$SECONDS
ENGINE=podman bash scripts/build-image.sh
built=$((SECONDS - started))

started=$SECONDS
PGTLS_CONTAINER_ENGINE=$PODMAN \
    PGTLS_CONTAINER_RUN_FLAGS=$PODMAN_RUN_FLAGS \
    PGTLS_IMAGE="pgtls-proxy:$version" \
    .venv/bin/pytest -q -m image tests/image
echo "+ make test-image: image build ${built} s, image tests $((SECONDS - started)) s"
