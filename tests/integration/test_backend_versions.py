"""What depends on the PostgreSQL major behind the proxy, tested against a real server.

``make test-matrix`` runs the integration tests once per server build (10 to
18, ``PGTLS_TEST_PG_BINDIR``); these tests check what changes between them:
protocol 3.2 and the cancel keys longer than 4 bytes that PostgreSQL 18 hands
out, and that older servers answer a 3.2 request with NegotiateProtocolVersion
and keep 4-byte keys. Both kinds of cancel (plaintext, as psql's Ctrl-C, and
inside TLS, as libpq 17+ ``PQcancelCreate``) must reach the server either way.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgtls_proxy.demo.cluster import PgCluster, quote_literal
from tests.fixtures.clients import (
    SSL_REQUEST,
    cancel_during_sleep,
    client_tls_context,
    connect,
    raw_socket,
    startup_packet,
)
from tests.fixtures.cluster import BINDIR_ENV, requires_pg
from tests.fixtures.pki import PKIFiles
from tests.fixtures.polling import wait_for
from tests.fixtures.proxy import RunningProxy

PROTOCOL_3_2 = 3 << 16 | 2
CANCEL_REQUEST_CODE = 80877102
#: PostgreSQL 18 makes 32-byte cancel keys for protocol 3.2 sessions.
PG18_KEY_LENGTH = 32

Message = tuple[bytes, bytes]


class Backend:
    """A raw protocol client behind TLS that keeps every message, in order."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.buf = b""

    def read_until(self, kind: bytes, timeout: float = 10) -> list[Message]:
        """Messages up to and including the first of type ``kind``."""
        self.sock.settimeout(timeout)
        out: list[Message] = []
        while not out or out[-1][0] != kind:
            while len(self.buf) < 5 or len(self.buf) < 1 + struct.unpack("!I", self.buf[1:5])[0]:
                chunk = self.sock.recv(65536)
                assert chunk, f"closed before {kind!r}; got {[k for k, _ in out]}"
                self.buf += chunk
            (length,) = struct.unpack("!I", self.buf[1:5])
            out.append((self.buf[:1], self.buf[5 : 1 + length]))
            self.buf = self.buf[1 + length :]
        return out

    def query(self, sql: str) -> None:
        body = sql.encode() + b"\0"
        self.sock.sendall(b"Q" + struct.pack("!I", len(body) + 4) + body)


def open_32_session(port: int, pki: PKIFiles) -> tuple[Backend, list[Message], int, bytes]:
    """Log in asking for protocol 3.2; the messages up to ReadyForQuery, pid and key."""
    s = raw_socket(port, timeout=10)
    s.sendall(SSL_REQUEST)
    assert s.recv(1) == b"S"
    tls = client_tls_context(pki).wrap_socket(s, server_hostname="localhost")
    tls.sendall(startup_packet("alice", "postgres", protocol=PROTOCOL_3_2))
    backend = Backend(tls)
    messages = backend.read_until(b"Z")
    key_data = [body for kind, body in messages if kind == b"K"]
    assert len(key_data) == 1, [kind for kind, _ in messages]
    (pid,) = struct.unpack("!I", key_data[0][:4])
    return backend, messages, pid, key_data[0][4:]


def error_fields(body: bytes) -> dict[str, str]:
    return {chr(part[0]): part[1:].decode() for part in body.split(b"\0") if part}


def send_cancel(port: int, pki: PKIFiles, pid: int, key: bytes, *, via_tls: bool) -> None:
    """One CancelRequest, plaintext (psql, PQcancel) or inside TLS (PQcancelCreate)."""
    packet = struct.pack("!III", 12 + len(key), CANCEL_REQUEST_CODE, pid) + key
    with raw_socket(port) as s:
        if via_tls:
            s.sendall(SSL_REQUEST)
            assert s.recv(1) == b"S"
            sock: socket.socket = client_tls_context(pki).wrap_socket(
                s, server_hostname="localhost"
            )
        else:
            sock = s
        sock.sendall(packet)
        assert sock.recv(16) == b"", "a cancel request is never answered"


def cancelled_sleep(
    cluster: PgCluster, port: int, pki: PKIFiles, backend: Backend, pid: int, key: bytes
) -> None:
    """Run a pg_sleep on ``backend`` and cancel it both ways, one after the other."""
    for via_tls in (False, True):
        sql = f"select pg_sleep(30), 'cancel via_tls={via_tls}'"
        backend.query(sql)
        # A cancel that arrives before the query runs would cancel nothing.
        wait_for(
            lambda sql=sql: (
                cluster.psql(
                    "select count(*) from pg_stat_activity"
                    f" where state = 'active' and query = {quote_literal(sql)}"
                )
                == "1"
            ),
            timeout=10,
            what="the sleep runs",
        )
        started = time.monotonic()
        send_cancel(port, pki, pid, key, via_tls=via_tls)
        messages = backend.read_until(b"Z")
        errors = [error_fields(body) for kind, body in messages if kind == b"E"]
        assert [e["C"] for e in errors] == ["57014"], f"via_tls={via_tls}: {messages}"
        assert time.monotonic() - started < 5, "the cancel, not the sleep's end, stopped it"


# ------------------------------------------------------------------ the server under test


def test_the_server_is_the_build_under_test(pg_cluster: PgCluster, pg_major: int) -> None:
    """PGTLS_TEST_PG_BINDIR picks the server; pg_major reports that server's version."""
    chosen = os.environ.get(BINDIR_ENV)
    if chosen:
        assert pg_cluster.bin_dir == Path(chosen)
    version_num = int(pg_cluster.psql("show server_version_num"))
    assert version_num // 10000 == pg_major


# ------------------------------------------------------------------ protocol 3.2


@requires_pg(18, "protocol 3.2 and cancel keys longer than 4 bytes")
def test_postgresql_18_long_cancel_keys_reach_the_client_and_cancel(
    proxy: RunningProxy, pki: PKIFiles, pg_cluster: PgCluster
) -> None:
    backend, messages, pid, key = open_32_session(proxy.port, pki)
    try:
        kinds = [kind for kind, _ in messages]
        assert b"v" not in kinds, "PostgreSQL 18 speaks 3.2: no NegotiateProtocolVersion"
        assert len(key) == PG18_KEY_LENGTH, f"a {len(key)}-byte key"
        cancelled_sleep(pg_cluster, proxy.port, pki, backend, pid, key)
    finally:
        backend.sock.close()
    assert proxy.wait_sample("pgtls_cancel_requests_total", {"result": "forwarded"}, 2) == 2


@requires_pg(18, "protocol 3.2")
def test_postgresql_18_libpq_on_protocol_32_cancels_both_ways(
    daemon_factory: Any, pki: PKIFiles
) -> None:
    """libpq 18 with max_protocol_version=3.2: PQcancelCreate (TLS) and PQcancel (plaintext).

    The proxy runs as its own process: psycopg holds this process's GIL while
    libpq's blocking PQcancel waits for the proxy to close the request.
    """
    daemon = daemon_factory()
    with connect(pki, daemon.port, "alice", max_protocol_version="3.2") as conn:
        assert conn.pgconn.full_protocol_version == 30002
        assert cancel_during_sleep(conn) < 2.5  # cancel_safe(): inside TLS
        daemon.wait_metric("pgtls_cancel_requests_total", 1, result="forwarded")

        timer = threading.Timer(0.5, conn.cancel)  # PQcancel: a plaintext CancelRequest
        timer.start()
        started = time.monotonic()
        try:
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute("select pg_sleep(30)")
        finally:
            timer.join()
        assert time.monotonic() - started < 2.5
        assert conn.execute("select 1").fetchone() == (1,)
    daemon.wait_metric("pgtls_cancel_requests_total", 2, result="forwarded")


def test_protocol_32_request_on_any_server(
    proxy: RunningProxy, pki: PKIFiles, pg_cluster: PgCluster, pg_major: int
) -> None:
    """A 3.2 request gets what the server speaks, and its key cancels both ways.

    Before 18 the server answers with NegotiateProtocolVersion (3.0), which
    the client must see before authentication, and the key stays 4 bytes.
    """
    backend, messages, pid, key = open_32_session(proxy.port, pki)
    try:
        kinds = [kind for kind, _ in messages]
        if pg_major >= 18:
            assert b"v" not in kinds
            assert len(key) > 4
        else:
            assert kinds[0] == b"v", kinds
            # The server writes its whole newest version, 3.0, where the
            # protocol documentation speaks of the minor alone.
            (newest,) = struct.unpack("!I", messages[0][1][:4])
            assert newest == 3 << 16
            assert kinds.index(b"v") < kinds.index(b"R")
            assert len(key) == 4
        cancelled_sleep(pg_cluster, proxy.port, pki, backend, pid, key)
    finally:
        backend.sock.close()
    assert proxy.wait_sample("pgtls_cancel_requests_total", {"result": "forwarded"}, 2) == 2


def test_libpq_on_protocol_30_cancels_on_any_server(proxy: RunningProxy, pki: PKIFiles) -> None:
    with connect(pki, proxy.port, "alice", max_protocol_version="3.0") as conn:
        assert conn.pgconn.full_protocol_version == 30000
        assert cancel_during_sleep(conn) < 2.5
    assert proxy.wait_sample("pgtls_cancel_requests_total", {"result": "forwarded"}, 1) == 1
