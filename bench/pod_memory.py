"""Memory of one pgtls-proxy instance, idle and holding idle mTLS sessions.

The Kubernetes Deployment's memory request and limit are sized from these
numbers (deploy/kubernetes/deployment.yaml shows the arithmetic). It starts
PostgreSQL and ``python -m pgtls_proxy run`` as shipped (``workers`` as in the
shipped ConfigMap, no backend session pool, strict revocation with a CRL) and
reads the supervisor and its workers together at four points: started, after
warm-up sessions, with ``--sessions`` idle verify-full sessions held (each
ran ``select 1``), and after closing them.

Two sums are printed. ``rss``: VmRSS of every process, what ``ps`` shows;
pages the workers share with the supervisor after fork are counted in each.
``pss``: the proportional set size from ``smaps_rollup``, shared pages
divided among their users, which is closer to what a container's memory
cgroup charges for the processes. Neither includes the kernel's socket
buffers, which the cgroup charges too: that is what the limit's headroom
is for.

    .venv/bin/python bench/pod_memory.py --workers 2 --sessions 1000
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from stack import BENCH_DB, BENCH_USER, Stack, StackError  # noqa: E402
from workloads import _connect_kwargs, process_tree  # noqa: E402


def _rollup_kib(pid: int, key: str) -> int:
    """One ``kB`` field of ``/proc/PID/smaps_rollup`` (0 if the process is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_memory(pid: int) -> dict[str, int]:
    """RSS and PSS (KiB) summed over ``pid`` and its descendants, and how many there are."""
    members = process_tree(pid)
    return {
        "processes": len(members),
        "rss_kib": sum(_rollup_kib(m, "Rss:") for m in members),
        "pss_kib": sum(_rollup_kib(m, "Pss:") for m in members),
    }


def measure(stack: Stack, workers: int, sessions: int, warmup: int) -> dict[str, Any]:
    """Start a fresh instance and read its memory around ``sessions`` held sessions."""
    import psycopg

    target = stack.start_proxy("pgtls-pod", workers)
    assert target.pid is not None
    pid = target.pid
    conninfo = psycopg.conninfo.make_conninfo(**_connect_kwargs(stack.client_env(target)))
    readings: dict[str, Any] = {"workers": workers, "sessions": sessions}
    time.sleep(3.0)
    readings["started"] = tree_memory(pid)
    for _ in range(warmup):
        psycopg.connect(conninfo, autocommit=True).close()
    time.sleep(2.0)
    readings["warm"] = tree_memory(pid)
    conns: list[Any] = []
    try:
        for _ in range(sessions):
            conn = psycopg.connect(conninfo, autocommit=True)
            conns.append(conn)
            conn.execute("select 1").fetchone()
        time.sleep(3.0)  # the proxy's periodic work runs over the held sessions
        readings["held"] = tree_memory(pid)
    finally:
        for conn in conns:
            conn.close()
    time.sleep(3.0)
    readings["closed"] = tree_memory(pid)
    for key in ("rss_kib", "pss_kib"):
        added = readings["held"][key] - readings["warm"][key]
        readings[f"{key}_per_session"] = round(added / sessions, 1) if sessions else 0.0
    return readings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workers", type=int, default=2, help="workers of the instance (default 2)")
    p.add_argument("--sessions", type=int, default=1000, help="idle sessions held (default 1000)")
    p.add_argument("--warmup", type=int, default=20, help="sessions opened and closed first")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = p.parse_args(argv)

    stack = Stack(
        scale=1,
        copy_mb=0,
        workers=args.workers,
        pool_size=0,
        idle_sessions=args.sessions,
        as_shipped=True,
        keep=args.keep,
        log=lambda line: print(line, file=sys.stderr),
    )
    try:
        stack._make_pki()
        stack._make_cluster()
        assert stack.cluster is not None
        stack.cluster.create_user(BENCH_USER)
        stack.cluster.create_database(BENCH_DB, owner=BENCH_USER)
        readings = measure(stack, args.workers, args.sessions, args.warmup)
    except StackError as exc:
        print(f"pod_memory: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.stop()
    print(json.dumps(readings, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
