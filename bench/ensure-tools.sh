#!/usr/bin/env bash
# Install what `make bench` needs and the machine lacks: PostgreSQL's server
# and client tools (pgbench, psql) and PgBouncer, from Debian's packages.
# Packaged services are not started: the benchmark runs its own instances.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ]; }

have_pg_server() {
    local bin
    for bin in /usr/lib/postgresql/*/bin; do
        if [ -x "$bin/initdb" ] && [ -x "$bin/pg_ctl" ]; then
            return 0
        fi
    done
    have initdb && have pg_ctl
}

wanted=()
if ! have_pg_server; then
    wanted+=(postgresql)
fi
if ! have pgbench || ! have psql; then
    wanted+=(postgresql postgresql-client)  # pgbench comes with the server package
fi
if ! have pgbouncer; then
    wanted+=(pgbouncer)
fi
[ "${#wanted[@]}" -eq 0 ] && exit 0

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
        echo "bench: missing ${wanted[*]}; install them (Debian: apt-get install ${wanted[*]})" >&2
        exit 1
    fi
    SUDO=(sudo)
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "bench: missing ${wanted[*]}; install them with your package manager" >&2
    exit 1
fi

echo "bench: installing ${wanted[*]}"
# policy-rc.d exit 101 keeps the package scripts from starting the services.
if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
    "${SUDO[@]}" chmod 755 /usr/sbin/policy-rc.d
    trap '"${SUDO[@]}" rm -f /usr/sbin/policy-rc.d' EXIT
fi
"${SUDO[@]}" apt-get update -q
"${SUDO[@]}" apt-get install -y -q --no-install-recommends "${wanted[@]}"
