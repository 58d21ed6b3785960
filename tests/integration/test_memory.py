"""Memory that comes back: short connections do not make the proxy grow.

The proxy runs as a real subprocess (``pgtls-proxy run``) so its RSS is its
own, read from ``/proc/PID/status``. Real psycopg clients with certificates
connect, run ``select 1`` and close, as a pooler-less application does.
Before the fix, OpenSSL's server-side session cache kept every TLS 1.3
session (about 11 KB each, never resumed): +44 MB over these 4,000
connections.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any

from tests.fixtures.clients import connect
from tests.fixtures.pki import PKIFiles

WARMUP = 1_000
TOTAL = 5_000
CLIENTS = 4  # threads, each connecting one connection after another
ALLOWED_GROWTH_MB = 5.0


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def connect_many(pki: PKIFiles, port: int, count: int) -> None:
    def run(n: int) -> None:
        for _ in range(n):
            with connect(pki, port, "alice") as conn:
                assert conn.execute("select 1").fetchone() == (1,)

    shares = [count // CLIENTS + (i < count % CLIENTS) for i in range(CLIENTS)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        for done in pool.map(run, shares):
            assert done is None


def test_rss_stays_flat_over_thousands_of_short_connections(
    daemon_factory: Any, pki: PKIFiles
) -> None:
    d = daemon_factory()
    connect_many(pki, d.port, WARMUP)
    after_warmup = rss_mb(d.proc.pid)
    connect_many(pki, d.port, TOTAL - WARMUP)
    after_all = rss_mb(d.proc.pid)
    d.wait_metric("pgtls_sessions_total", TOTAL, outcome="completed")
    assert d.metric("pgtls_handshakes_total", result="ok") == TOTAL
    growth = after_all - after_warmup
    assert growth < ALLOWED_GROWTH_MB, (
        f"RSS grew {growth:.1f} MB from connection {WARMUP} ({after_warmup:.1f} MB)"
        f" to {TOTAL} ({after_all:.1f} MB)"
    )
