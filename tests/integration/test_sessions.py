"""Routing, cancel, and how sessions end: real clusters, real clients."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import threading
import time
from typing import Any

import psycopg
import pytest

from tests.fixtures.clients import (
    SSL_REQUEST,
    cancel_during_sleep,
    client_tls_context,
    connect,
    conninfo,
    current_user,
    raw_socket,
    startup_packet,
)
from tests.fixtures.pki import PKIFiles
from tests.fixtures.polling import wait_for
from tests.fixtures.proxy import ProxyFactory, RunningProxy


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# ------------------------------------------------------------------ routing


def test_routing_by_database_and_by_rule(
    proxy_factory: ProxyFactory, pki: PKIFiles, pg_cluster: Any, pg_cluster_factory: Any
) -> None:
    other = pg_cluster_factory()
    for role in ("alice", "bob"):
        other.create_user(role)
    other.create_database("reports", owner="alice")
    proxy = proxy_factory(
        {
            "rules": [
                {"identity": "bob", "user": "bob", "backend": "second"},
                {"identity": "alice", "user": "alice"},
            ],
            "backends": {
                "main": {"address": f"127.0.0.1:{pg_cluster.port}", "databases": ["*"]},
                "second": {"address": f"127.0.0.1:{other.port}", "databases": ["reports"]},
            },
        }
    )

    def port_of(cert: str, dbname: str) -> int:
        with connect(pki, proxy.port, cert, dbname=dbname) as conn:
            row = conn.execute("select current_setting('port')::int").fetchone()
            assert row is not None
            return int(row[0])

    assert port_of("alice", "reports") == other.port  # listed database
    assert port_of("alice", "postgres") == pg_cluster.port  # "*" fallback
    assert port_of("bob", "postgres") == other.port  # the rule's backend


# ------------------------------------------------------------------ cancel


def test_encrypted_cancel_during_pg_sleep(proxy: RunningProxy, pki: PKIFiles) -> None:
    with connect(pki, proxy.port, "alice") as conn:
        assert cancel_during_sleep(conn) < 2.5
        assert conn.execute("select 1").fetchone() == (1,)
    assert proxy.sample("pgtls_cancel_requests_total", {"result": "forwarded"}) == 1


def psql_ctrl_c(pki: PKIFiles, port: int, sql: str) -> tuple[int, str, float]:
    """Run ``sql`` in psql and press Ctrl-C after 0.5 s (a plaintext PQcancel).

    psql runs in its own process: libpq's blocking PQcancel must not hold
    this process's GIL while the in-process proxy serves it.
    """
    params = conninfo(pki, port, "alice")
    dsn = " ".join(f"{k}={v}" for k, v in params.items())
    proc = subprocess.Popen(
        ["psql", dsn, "-XAtc", sql], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    time.sleep(1.0)
    started = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out + err, time.monotonic() - started


def test_psql_ctrl_c_cancels(proxy: RunningProxy, pki: PKIFiles) -> None:
    code, output, took = psql_ctrl_c(pki, proxy.port, "select pg_sleep(30)")
    assert code == 1, "psql reports the cancelled query as an error"
    assert "canceling statement due to user request" in output
    assert took < 2.5
    assert proxy.sample("pgtls_cancel_requests_total", {"result": "forwarded"}) == 1


def test_protocol_32_cancel(proxy: RunningProxy, pki: PKIFiles) -> None:
    # Whatever the server speaks, the client gets a key of the backend's length.
    with connect(pki, proxy.port, "alice", max_protocol_version="3.2") as conn:
        assert cancel_during_sleep(conn) < 2.5


def test_forged_key_cancels_nothing(proxy: RunningProxy, pki: PKIFiles) -> None:
    with connect(pki, proxy.port, "alice") as conn:
        forged = struct.pack("!IIII", 16, 80877102, conn.info.backend_pid, 12345)
        with raw_socket(proxy.port) as s:
            s.sendall(forged)
            assert s.recv(16) == b""  # closed without a word
        proxy.wait_sample("pgtls_cancel_requests_total", {"result": "unknown_key"}, 1)
        row = conn.execute("select 1, pg_sleep(0.2)").fetchone()
        assert row is not None and row[0] == 1, "nothing was cancelled"
    assert proxy.sample("pgtls_cancel_requests_total", {"result": "forwarded"}) == 0


def test_plaintext_cancel_can_be_refused(proxy_factory: ProxyFactory, pki: PKIFiles) -> None:
    proxy = proxy_factory({"limits": {"plaintext_cancel": False}})
    _, output, took = psql_ctrl_c(pki, proxy.port, "select pg_sleep(2)")
    # psql hides the result once Ctrl-C was pressed; the query's full length
    # and the missing cancel error show that nothing was cancelled.
    assert "canceling statement" not in output
    assert took > 0.8
    assert proxy.sample("pgtls_cancel_requests_total", {"result": "forwarded"}) == 0
    with connect(pki, proxy.port, "alice") as conn:
        assert cancel_during_sleep(conn) < 2.5, "cancels inside TLS still work"


def test_cancel_inside_tls_ends_with_close_notify(proxy: RunningProxy, pki: PKIFiles) -> None:
    with raw_socket(proxy.port) as s:
        s.sendall(SSL_REQUEST)
        assert s.recv(1) == b"S"
        tls = client_tls_context(pki).wrap_socket(s, server_hostname="localhost")
        tls.sendall(struct.pack("!IIII", 16, 80877102, 1, 2))
        assert tls.recv(16) == b""  # a clean TLS close, not a reset or a raw EOF


# ------------------------------------------------------------------ session end


def test_backend_terminated_mid_query(proxy: RunningProxy, pki: PKIFiles, pg_cluster: Any) -> None:
    conn = connect(pki, proxy.port, "alice")
    # The client holds a substitute pid; the real one comes from the server.
    real = conn.execute("select pg_backend_pid()").fetchone()
    assert real is not None
    killer = threading.Thread(
        target=lambda: (time.sleep(0.3), pg_cluster.psql(f"select pg_terminate_backend({real[0]})"))
    )
    killer.start()
    with pytest.raises(psycopg.OperationalError) as info:
        conn.execute("select pg_sleep(10)")
    killer.join()
    assert "terminating connection due to administrator command" in str(info.value)
    conn.close()
    wait_for(lambda: proxy.sample("pgtls_sessions_active", {"backend": "main"}) == 0)
    assert current_user(pki, proxy.port, "alice") == "alice"


def test_backend_killed_hard(
    proxy_factory: ProxyFactory, pki: PKIFiles, pg_cluster_factory: Any
) -> None:
    cluster = pg_cluster_factory()
    cluster.create_user("alice")
    proxy = proxy_factory({"backends": {"main": {"address": f"127.0.0.1:{cluster.port}"}}})
    conn = connect(pki, proxy.port, "alice")
    killer = threading.Thread(target=lambda: (time.sleep(0.3), cluster.kill()))
    killer.start()
    with pytest.raises(psycopg.OperationalError):
        conn.execute("select pg_sleep(10)")
    killer.join()  # no pg_ctl of this test may still run during teardown
    conn.close()
    wait_for(lambda: proxy.sample("pgtls_sessions_active", {"backend": "main"}) == 0)
    with pytest.raises(psycopg.OperationalError, match='backend "main"'):
        connect(pki, proxy.port, "alice")  # the proxy still answers, with 08006
    cluster.start()
    assert current_user(pki, proxy.port, "alice") == "alice"


def test_client_vanishing_frees_the_backend(
    proxy: RunningProxy, pki: PKIFiles, pg_cluster: Any
) -> None:
    def backends() -> int:
        out = pg_cluster.psql(
            "select count(*) from pg_stat_activity"
            " where usename = 'alice' and backend_type = 'client backend'"
        )
        return int(out)

    baseline = backends()
    with raw_socket(proxy.port) as s:
        s.sendall(SSL_REQUEST)
        assert s.recv(1) == b"S"
        tls = client_tls_context(pki).wrap_socket(s, server_hostname="localhost")
        tls.sendall(startup_packet("alice", "postgres"))
        reply = b""
        while b"Z\x00\x00\x00\x05I" not in reply:
            reply += tls.recv(65536)
        assert backends() == baseline + 1
        # vanish: RST instead of Terminate
        tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        tls.close()
    wait_for(lambda: backends() == baseline)
    wait_for(lambda: proxy.sample("pgtls_sessions_active", {"backend": "main"}) == 0)


def test_no_leaks_after_many_sessions(proxy: RunningProxy, pki: PKIFiles) -> None:
    assert current_user(pki, proxy.port, "alice") == "alice"  # warm up
    wait_for(lambda: proxy.sample("pgtls_sessions_active", {"backend": "main"}) == 0)
    before = open_fds()
    for _ in range(30):
        with connect(pki, proxy.port, "alice") as conn:
            conn.execute("select 1")
    with pytest.raises(psycopg.OperationalError):
        connect(pki, proxy.port, "carol")
    wait_for(lambda: proxy.sample("pgtls_sessions_total", {"outcome": "completed"}) == 31)
    wait_for(lambda: proxy.proxy.rt.connections == 0)
    wait_for(lambda: open_fds() <= before + 2)
    assert len(proxy.proxy.rt.cancels) == 0
