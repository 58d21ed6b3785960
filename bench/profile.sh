#!/usr/bin/env bash
# Profile pgtls-proxy under the steady workload with py-spy, nothing else:
# a throwaway PKI and PostgreSQL, one proxy worker on a CPU of its own,
# `pgbench -S -c 8 -j 2` on the other, 10 s of samples. Writes
# bench/results/profile-top.txt (top functions by own time),
# bench/results/profile.svg (flame graph) and profile.raw.txt (collapsed
# stacks). Extra arguments go to bench/run.py, e.g. --profile-secs 20,
# --native, --profile-workers 2.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python bench/run.py --quick --profile-only "$@"
