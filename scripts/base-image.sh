#!/usr/bin/env bash
# Make sure the Dockerfile's base image exists in the local store of ENGINE.
#
#   scripts/base-image.sh ENGINE IMAGE        (ENGINE: "podman ..." or "docker")
#
# Present already (pulled, or made by an earlier run): nothing to do.
# docker: nothing to do either, `docker build` pulls it from the registry.
# podman: made here from Debian's package archive, for machines that reach
# no container registry: debootstrap --variant=minbase bookworm, slimmed the
# way the official debian:bookworm-slim is (no apt lists or caches, no
# documentation, manuals or translations), imported, then tagged IMAGE.
# Someone with a registry can `podman pull IMAGE` first instead.
set -euo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 ENGINE IMAGE" >&2
    exit 2
fi
read -r -a engine <<<"$1"
image=$2
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
local_name=localhost/debian-bootstrap:bookworm

if "${engine[@]}" image inspect "$image" >/dev/null 2>&1; then
    exit 0
fi
case "${engine[0]}" in
docker) exit 0 ;;
esac

if ! command -v debootstrap >/dev/null 2>&1 && [ ! -x /usr/sbin/debootstrap ]; then
    echo "$0: $image is missing and debootstrap is not installed (apt-get install debootstrap)" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "$0: $image is missing; making it with debootstrap needs root" >&2
    exit 1
fi

work=$(mktemp -d "${TMPDIR:-/var/tmp}/pgtls-proxy-base.XXXXXX")
root=$work/rootfs
cleanup() { rm -rf --one-file-system "$work"; }
trap cleanup EXIT

echo "+ debootstrap --variant=minbase bookworm ($mirror), about 2 minutes"
PATH=$PATH:/usr/sbin:/sbin debootstrap --variant=minbase bookworm "$root" "$mirror" \
    >"$work/debootstrap.log" 2>&1 || {
    tail -n 20 "$work/debootstrap.log" >&2
    exit 1
}

# Security and point-release updates, as in the official image.
rm -f "$root/etc/apt/sources.list"
cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF

# What later `apt-get install`s leave out, as in the official slim image.
cat >"$root/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
EOF
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$root/usr/share/man/"* "$root/usr/share/info/"* "$root/usr/share/locale/"* \
    "$root/usr/share/lintian" "$root/usr/share/linda"
rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/cache/apt/"*.bin \
    "$root/var/lib/apt/lists/"* "$root/var/log/"*.log "$root/var/log/apt/"* \
    "$root/etc/hostname" "$root/etc/resolv.conf"

"${engine[@]}" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    - "$local_name" < <(tar --numeric-owner -C "$root" -c .) >/dev/null
"${engine[@]}" tag "$local_name" "$image"
echo "+ made $image from Debian bookworm (minbase), tagged from $local_name"
