"""Backend session reuse (``backends.<name>.pool``) against a real PostgreSQL.

A backend session is identified by (pid, backend_start) from pg_stat_activity:
the pair tells a reused session from a new one even if the kernel hands out a
pid again.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import shutil
import socket
import ssl
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import psycopg
import pytest
import yaml

from pgtls_proxy.demo.cluster import PgCluster
from pgtls_proxy.wire.codec import MessageReader, encode_message, terminate
from tests.fixtures.clients import (
    SSL_REQUEST,
    cancel_during_sleep,
    client_tls_context,
    connect,
    conninfo,
    raw_socket,
    startup_packet,
)
from tests.fixtures.cluster import ClusterFactory
from tests.fixtures.logs import audit_records
from tests.fixtures.pki import PKIFiles
from tests.fixtures.polling import wait_for
from tests.fixtures.proxy import ProxyFactory, RunningProxy

Identity = tuple[int, datetime]

SESSION_IDENTITY = "select pid, backend_start from pg_stat_activity where pid = pg_backend_pid()"


def pool(size: int = 2, **extra: Any) -> dict[str, Any]:
    return {"backends": {"main": {"pool": {"size": size, **extra}}}}


def results(proxy: RunningProxy, result: str) -> float:
    return proxy.sample("pgtls_backend_pool_results_total", {"backend": "main", "result": result})


def idle(proxy: RunningProxy) -> float:
    return proxy.sample("pgtls_backend_pool_idle", {"backend": "main"})


def wait_results(proxy: RunningProxy, result: str, expected: float) -> None:
    value = proxy.wait_sample(
        "pgtls_backend_pool_results_total", {"backend": "main", "result": result}, expected
    )
    assert value == expected, f"pool result {result}: {value}, expected {expected}"


def identity_of(conn: psycopg.Connection[Any]) -> Identity:
    row = conn.execute(SESSION_IDENTITY).fetchone()
    assert row is not None
    return int(row[0]), row[1]


def session_identity(pki: PKIFiles, port: int, cert: str = "alice", **kw: Any) -> Identity:
    """Connect, note the backend session, leave cleanly (Terminate)."""
    with connect(pki, port, cert, **kw) as conn:
        return identity_of(conn)


@pytest.fixture
def admin(pg_cluster: PgCluster) -> Iterator[psycopg.Connection[Any]]:
    """A superuser connection straight to the cluster, not through the proxy."""
    with psycopg.connect(pg_cluster.conninfo(), autocommit=True) as conn:
        yield conn


def alive(admin: psycopg.Connection[Any], pid: int) -> bool:
    row = admin.execute("select count(*) from pg_stat_activity where pid = %s", (pid,)).fetchone()
    assert row is not None
    return bool(row[0])


def terminate_backend(admin: psycopg.Connection[Any], pid: int) -> None:
    """Kill a backend session and wait until it is gone.

    pg_terminate_backend's own timeout argument needs PostgreSQL 14; polling
    works on every version.
    """
    row = admin.execute("select pg_terminate_backend(%s)", (pid,)).fetchone()
    assert row == (True,)
    wait_for(lambda: not alive(admin, pid), what="the terminated backend is gone")


# ------------------------------------------------------------------ reuse


def test_clean_client_leaves_its_session_to_the_next(
    proxy_factory: ProxyFactory,
    pki: PKIFiles,
    admin: psycopg.Connection[Any],
    json_log: io.StringIO,
) -> None:
    proxy = proxy_factory(pool(2))
    first = session_identity(pki, proxy.port)
    wait_results(proxy, "kept", 1)
    assert idle(proxy) == 1
    assert alive(admin, first[0]), "the kept session stays open"
    row = admin.execute(
        "select state, query from pg_stat_activity where pid = %s", (first[0],)
    ).fetchone()
    assert row is not None
    state, last_query = row
    assert state == "idle"
    assert last_query.startswith("SELECT '"), f"the reset's nonce query ran last: {last_query!r}"

    second = session_identity(pki, proxy.port)
    assert second == first, "same user and database: the kept backend session is reused"
    assert results(proxy, "reused") == 1
    wait_results(proxy, "kept", 2)
    assert results(proxy, "discarded") == 0
    assert idle(proxy) == 1
    assert proxy.wait_sample("pgtls_sessions_total", {"outcome": "completed"}, 2) == 2
    assert len(proxy.proxy.rt.cancels) == 0, "a parked session holds no cancel key"

    wait_for(lambda: len(audit_records(json_log)) >= 2, what="two audit records")
    a, b = audit_records(json_log)[:2]
    assert "backend_reused" not in a
    assert b["backend_reused"] is True
    assert a["outcome"] == b["outcome"] == "completed"
    assert b["user"] == "alice" and b["backend"] == "main"


def test_reused_session_is_usable_and_cancellable(
    proxy_factory: ProxyFactory, pki: PKIFiles
) -> None:
    proxy = proxy_factory(pool(2))
    first = session_identity(pki, proxy.port)
    wait_results(proxy, "kept", 1)
    with connect(pki, proxy.port, "alice") as conn:
        assert identity_of(conn) == first
        assert conn.info.backend_pid != 0
        assert conn.execute("select current_user, current_database()").fetchone() == (
            "alice",
            "postgres",
        )

        assert cancel_during_sleep(conn, 0.3) < 5
        assert conn.execute("select 1").fetchone() == (1,)
    assert proxy.sample("pgtls_cancel_requests_total", {"result": "forwarded"}) == 1
    wait_results(proxy, "kept", 2)
    assert session_identity(pki, proxy.port) == first


def test_no_session_state_leaks_to_the_next_client(
    proxy_factory: ProxyFactory, pki: PKIFiles, admin: psycopg.Connection[Any]
) -> None:
    proxy = proxy_factory(pool(2))
    # A role alice may SET ROLE to (the shared cluster: a unique name, created once).
    admin.execute(
        "do $$ begin if not exists (select from pg_roles where rolname = 'pool_leak_role')"
        " then create role pool_leak_role; end if; end $$"
    )
    admin.execute("grant pool_leak_role to alice")
    with connect(pki, proxy.port, "alice") as conn:
        first = identity_of(conn)
        baseline_datestyle = conn.info.parameter_status("DateStyle")
        conn.execute("set role pool_leak_role")
        assert conn.execute("select current_user").fetchone() == ("pool_leak_role",)
        conn.execute("reset role")
        conn.execute("create function pg_temp.leak_fn() returns int language sql as 'select 1'")
        conn.execute("create temp table pool_leak_tmp (x int)")
        conn.execute("insert into pool_leak_tmp values (1)")
        conn.execute("set application_name = 'leaky'")
        conn.execute("set search_path = leaky_schema")
        conn.execute("set myapp.x = '1'")
        conn.execute("set DateStyle = 'German'")
        conn.execute("set default_transaction_read_only = on")
        conn.execute("prepare leak_stmt as select 1")
        conn.execute("select pg_advisory_lock(424242)")
        conn.execute("declare leak_cursor cursor with hold for select 1")
        conn.execute("listen leak_channel")
        # A protocol-level named statement (psycopg names them _pg3_0, _pg3_1, ...).
        conn.execute("select %s::int", (1,), prepare=True)
        assert conn.info.parameter_status("application_name") == "leaky"
        assert conn.info.parameter_status("DateStyle") == "German, DMY"
        conn.execute("set client_encoding = 'LATIN1'")
        conn.execute("set role pool_leak_role")  # left in place
    wait_results(proxy, "kept", 1)
    # Nobody holds the advisory lock any more, seen from outside.
    row = admin.execute(
        "select count(*) from pg_locks where locktype = 'advisory' and objid = 424242"
    ).fetchone()
    assert row == (0,)

    with connect(pki, proxy.port, "alice") as conn:
        assert identity_of(conn) == first, "the test is about a reused session"
        assert conn.execute("select current_user, session_user").fetchone() == ("alice", "alice")
        assert conn.execute("select to_regclass('pool_leak_tmp')").fetchone() == (None,)
        assert conn.execute("select to_regprocedure('pg_temp.leak_fn()')").fetchone() == (None,)
        assert conn.execute("show client_encoding").fetchone() == ("UTF8",)
        assert conn.info.parameter_status("client_encoding") == "UTF8"
        assert conn.execute("show application_name").fetchone() == ("",)
        assert conn.execute("show search_path").fetchone() == ('"$user", public',)
        value = conn.execute("select current_setting('myapp.x', true)").fetchone()
        assert value is not None and value[0] in (None, ""), value
        assert conn.execute("show default_transaction_read_only").fetchone() == ("off",)
        assert conn.execute("select count(*) from pg_prepared_statements").fetchone() == (0,)
        assert conn.execute(
            "select count(*) from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()"
        ).fetchone() == (0,)
        assert conn.execute("select count(*) from pg_cursors").fetchone() == (0,)
        assert conn.execute("select count(*) from pg_listening_channels()").fetchone() == (0,)
        # What the client was told at login matches the session it got.
        assert conn.info.parameter_status("application_name") in ("", None)
        assert conn.info.parameter_status("DateStyle") == baseline_datestyle
        assert conn.execute("show DateStyle").fetchone() == (baseline_datestyle,)
        # psycopg prepares under the same name again: it must not exist already.
        assert conn.execute("select %s::int", (2,), prepare=True).fetchone() == (2,)
        # The session is a working one: it can write (not read-only) and use temp tables.
        conn.execute("create temp table pool_leak_tmp (y text)")
        conn.execute("insert into pool_leak_tmp values ('ok')")
    assert results(proxy, "reused") == 1


def _raw_login(pki: PKIFiles, port: int) -> tuple[ssl.SSLSocket, bytes]:
    """A TLS client logged in as alice; also returns what the proxy sent at login."""
    sock = raw_socket(port)
    sock.sendall(SSL_REQUEST)
    assert sock.recv(1) == b"S"
    tls = client_tls_context(pki).wrap_socket(sock, server_hostname="localhost")
    tls.sendall(startup_packet("alice", "postgres"))
    reply = b""
    while not reply.endswith(b"Z\x00\x00\x00\x05I"):
        chunk = tls.recv(65536)
        assert chunk, f"login ended early: {reply!r}"
        reply += chunk
    return tls, reply


def _cancel_key(login_reply: bytes) -> tuple[int, bytes]:
    reader = MessageReader()
    reader.feed(login_reply)
    while (message := reader.next_message()) is not None:
        if message[0] == b"K":
            return struct.unpack("!I", message[1][:4])[0], message[1][4:]
    raise AssertionError("no BackendKeyData at login")


def test_previous_clients_cancel_key_cannot_reach_the_next_client(
    proxy_factory: ProxyFactory, pki: PKIFiles
) -> None:
    proxy = proxy_factory(pool(2))
    tls, reply = _raw_login(pki, proxy.port)
    pid, key = _cancel_key(reply)
    tls.sendall(terminate())
    tls.close()
    wait_results(proxy, "kept", 1)
    with connect(pki, proxy.port, "alice") as conn:

        def later() -> None:
            time.sleep(0.3)
            # The first client's key, as a plaintext CancelRequest.
            with raw_socket(proxy.port) as s:
                s.sendall(struct.pack("!III", 12 + len(key), 80877102, pid) + key)
                s.recv(1)

        t = threading.Thread(target=later)
        t.start()
        try:
            row = conn.execute("select pg_sleep(1.0), 7").fetchone()
        finally:
            t.join()
        assert row is not None and row[1] == 7, "the old client's key cancelled nothing"
    assert results(proxy, "reused") == 1, "the second client had the first one's backend"
    assert proxy.sample("pgtls_cancel_requests_total", {"result": "forwarded"}) == 0
    assert proxy.wait_sample("pgtls_cancel_requests_total", {"result": "unknown_key"}, 1) == 1


# ------------------------------------------------------------------ not reused


def _open_transaction(conn: psycopg.Connection[Any]) -> None:
    conn.execute("begin")
    conn.execute("select pg_advisory_xact_lock(515151)")


def _failed_transaction(conn: psycopg.Connection[Any]) -> None:
    conn.execute("begin")
    with pytest.raises(psycopg.errors.DivisionByZero):
        conn.execute("select 1/0")


def _running_query(conn: psycopg.Connection[Any]) -> None:
    conn.pgconn.send_query(b"select pg_sleep(1)")
    conn.pgconn.flush()
    time.sleep(0.1)  # the query reached the backend before the Terminate


def _copy_in(conn: psycopg.Connection[Any]) -> None:
    conn.execute("create temp table pool_copy (x int)")
    conn.pgconn.send_query(b"copy pool_copy from stdin")
    conn.pgconn.flush()
    time.sleep(0.1)


@pytest.mark.parametrize(
    "leave",
    [_open_transaction, _failed_transaction, _running_query, _copy_in],
    ids=["open-transaction", "failed-transaction", "running-query", "copy-in"],
)
def test_client_leaving_a_busy_session_does_not_pass_it_on(
    proxy_factory: ProxyFactory,
    pki: PKIFiles,
    admin: psycopg.Connection[Any],
    leave: Callable[[psycopg.Connection[Any]], None],
) -> None:
    proxy = proxy_factory(pool(2))
    conn = connect(pki, proxy.port, "alice")
    first = identity_of(conn)
    leave(conn)
    conn.close()  # Terminate, no COMMIT: psycopg's context exit would commit
    wait_results(proxy, "discarded", 1)
    assert results(proxy, "kept") == 0
    assert idle(proxy) == 0
    wait_for(lambda: not alive(admin, first[0]), what="the discarded backend ends")
    row = admin.execute(
        "select count(*) from pg_locks where locktype = 'advisory' and objid = 515151"
    ).fetchone()
    assert row == (0,)

    second = session_identity(pki, proxy.port)
    assert second != first
    assert results(proxy, "reused") == 0
    wait_results(proxy, "kept", 1)  # a clean session is still kept afterwards


def test_query_pipelined_with_terminate_runs_and_is_not_kept(
    proxy_factory: ProxyFactory, pki: PKIFiles, admin: psycopg.Connection[Any]
) -> None:
    """Query + Terminate in one TLS record: the Query goes on, the session is not kept."""
    proxy = proxy_factory(pool(2))
    admin.execute("listen pool_pipelined")
    tls, _ = _raw_login(pki, proxy.port)
    sql = b"select pg_notify('pool_pipelined', 'ran')\0"
    tls.sendall(encode_message(b"Q", sql) + terminate())
    tls.close()
    gen = admin.notifies(timeout=5, stop_after=1)
    assert [n.payload for n in gen] == ["ran"], "the Query before the Terminate was passed on"
    wait_results(proxy, "discarded", 1)
    assert results(proxy, "kept") == 0
    assert idle(proxy) == 0


def test_terminate_alone_in_a_raw_client_is_kept(
    proxy_factory: ProxyFactory, pki: PKIFiles
) -> None:
    proxy = proxy_factory(pool(2))
    tls, _ = _raw_login(pki, proxy.port)
    tls.sendall(terminate())
    tls.close()
    wait_results(proxy, "kept", 1)
    assert results(proxy, "discarded") == 0


def test_client_vanishing_without_terminate_does_not_pass_it_on(
    proxy_factory: ProxyFactory, pki: PKIFiles, admin: psycopg.Connection[Any]
) -> None:
    proxy = proxy_factory(pool(2))
    conn = connect(pki, proxy.port, "alice")
    first = identity_of(conn)
    dup = socket.socket(fileno=os.dup(conn.fileno()))
    dup.shutdown(socket.SHUT_RDWR)  # EOF to the proxy, no Terminate
    dup.close()
    wait_for(lambda: not alive(admin, first[0]), what="the backend ends with the client")
    conn.close()
    assert results(proxy, "kept") == 0
    assert idle(proxy) == 0
    assert session_identity(pki, proxy.port) != first
    assert results(proxy, "reused") == 0


def test_sessions_are_only_reused_for_the_same_login(
    proxy_factory: ProxyFactory, pki: PKIFiles
) -> None:
    proxy = proxy_factory(pool(10))
    alice = session_identity(pki, proxy.port)
    wait_results(proxy, "kept", 1)
    others = [
        session_identity(pki, proxy.port, "bob", dbname="app"),  # other user
        session_identity(pki, proxy.port, "alice", dbname="app"),  # other database
        session_identity(pki, proxy.port, "alice", application_name="other"),  # parameter
        session_identity(pki, proxy.port, "alice", options="-c work_mem=8MB"),  # options
        session_identity(pki, proxy.port, "alice", max_protocol_version="3.2"),  # protocol
    ]
    assert results(proxy, "reused") == 0, "none of these matched the kept session"
    assert len({alice, *others}) == 1 + len(others)
    wait_results(proxy, "kept", 1 + len(others))
    assert idle(proxy) == 1 + len(others)
    # The original login still finds its own session, and every other finds its own.
    assert session_identity(pki, proxy.port) == alice
    assert session_identity(pki, proxy.port, "bob", dbname="app") == others[0]
    assert session_identity(pki, proxy.port, "alice", application_name="other") == others[2]
    assert session_identity(pki, proxy.port, "alice", options="-c work_mem=8MB") == others[3]
    assert session_identity(pki, proxy.port, "alice", max_protocol_version="3.2") == others[4]
    assert results(proxy, "reused") == 5


def test_users_never_share_a_session(proxy_factory: ProxyFactory, pki: PKIFiles) -> None:
    proxy = proxy_factory(pool(4))
    with connect(pki, proxy.port, "bob", dbname="app") as conn:
        bob = identity_of(conn)
    wait_results(proxy, "kept", 1)
    with connect(pki, proxy.port, "alice", dbname="app") as conn:
        assert identity_of(conn) != bob
        assert conn.execute("select current_user, session_user").fetchone() == (
            "alice",
            "alice",
        )
    assert results(proxy, "reused") == 0


def test_pool_off_by_default(proxy: RunningProxy, pki: PKIFiles) -> None:
    first = session_identity(pki, proxy.port)
    second = session_identity(pki, proxy.port)
    assert first != second
    assert proxy.wait_sample("pgtls_sessions_total", {"outcome": "completed"}, 2) == 2
    for result in ("reused", "kept", "discarded"):
        assert results(proxy, result) == 0
    assert idle(proxy) == 0


def test_pool_size_limits_kept_sessions(proxy_factory: ProxyFactory, pki: PKIFiles) -> None:
    proxy = proxy_factory(pool(1))
    a = connect(pki, proxy.port, "alice")
    b = connect(pki, proxy.port, "alice")
    ids = {identity_of(a), identity_of(b)}
    a.close()
    wait_results(proxy, "kept", 1)
    b.close()
    wait_results(proxy, "discarded", 1)
    assert results(proxy, "kept") == 1
    assert idle(proxy) == 1
    assert session_identity(pki, proxy.port) in ids
    assert results(proxy, "reused") == 1


def test_concurrent_clients_never_share_a_backend_at_once(
    proxy_factory: ProxyFactory, pki: PKIFiles
) -> None:
    proxy = proxy_factory(pool(3))

    def client(n: int) -> list[Identity]:
        seen = []
        for i in range(4):
            mark = f"client-{n}-{i}"
            with connect(pki, proxy.port, "alice") as conn:
                seen.append(identity_of(conn))
                conn.execute(f"set application_name = '{mark}'")
                conn.execute("select pg_sleep(0.02)")
                assert conn.execute("show application_name").fetchone() == (mark,)
                assert conn.execute("select count(*) from pg_prepared_statements").fetchone() == (
                    0,
                )
                conn.execute(f"prepare p_{n}_{i} as select 1")
        return seen

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as ex:
        seen = [ident for idents in ex.map(client, range(8)) for ident in idents]
    assert len(seen) == 32
    proxy.wait_sample("pgtls_sessions_total", {"outcome": "completed"}, 32)
    reused = results(proxy, "reused")
    assert reused > 0, "sequential clients of the same login reuse sessions"
    assert len(set(seen)) == 32 - reused, "every client either reused a session or opened one"
    wait_for(lambda: results(proxy, "kept") + results(proxy, "discarded") == 32)
    assert idle(proxy) <= 3


class SlowForwarder:
    """A TCP hop to PostgreSQL that, once ``delay`` is set, holds every server chunk."""

    def __init__(self, target_port: int) -> None:
        self.delay = 0.0
        self._target = target_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self._target))
            for src, dst, slow in ((client, server, False), (server, client, True)):
                threading.Thread(target=self._pipe, args=(src, dst, slow), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, slow: bool) -> None:
        try:
            while data := src.recv(65536):
                if slow and self.delay:
                    time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def close(self) -> None:
        self._listener.close()


def test_pool_size_holds_when_clients_leave_together(
    proxy_factory: ProxyFactory, pki: PKIFiles, pg_cluster: PgCluster
) -> None:
    """Resets that overlap must not keep more than pool.size sessions between them."""
    slow = SlowForwarder(pg_cluster.port)
    try:
        proxy = proxy_factory(
            {"backends": {"main": {"address": f"127.0.0.1:{slow.port}", "pool": {"size": 1}}}}
        )
        conns = [connect(pki, proxy.port, "alice") for _ in range(3)]
        for conn in conns:
            conn.execute("select 1")
        slow.delay = 0.3  # every reset now takes 0.3 s: the three overlap
        for conn in conns:
            conn.close()
        wait_for(lambda: results(proxy, "kept") + results(proxy, "discarded") == 3)
        assert (results(proxy, "kept"), results(proxy, "discarded")) == (1, 2)
        assert idle(proxy) == 1, "backends.main.pool.size is 1"
    finally:
        slow.close()


def test_sessions_ending_while_draining_are_not_kept(
    proxy_factory: ProxyFactory, pki: PKIFiles, admin: psycopg.Connection[Any]
) -> None:
    proxy = proxy_factory(pool(2))
    conn = connect(pki, proxy.port, "alice")
    first = identity_of(conn)
    proxy.call(proxy.proxy.request_stop)
    assert conn.execute("select 1").fetchone() == (1,), "draining keeps sessions"
    conn.close()
    wait_for(lambda: not alive(admin, first[0]), what="the backend closes with its client")
    assert results(proxy, "kept") == 0
    assert idle(proxy) == 0


# ------------------------------------------------------------------ expiry and death


def test_idle_timeout_closes_kept_sessions(
    proxy_factory: ProxyFactory, pki: PKIFiles, admin: psycopg.Connection[Any]
) -> None:
    proxy = proxy_factory(pool(2, idle_timeout=0.5))
    first = session_identity(pki, proxy.port)
    wait_results(proxy, "kept", 1)
    assert alive(admin, first[0])
    wait_for(lambda: not alive(admin, first[0]), timeout=5, what="the idle session expires")
    wait_for(lambda: idle(proxy) == 0, what="the idle gauge drops")
    assert results(proxy, "discarded") == 1
    assert session_identity(pki, proxy.port) != first
    assert results(proxy, "reused") == 0


def test_max_lifetime_retires_a_busy_kept_session(
    proxy_factory: ProxyFactory, pki: PKIFiles, admin: psycopg.Connection[Any]
) -> None:
    """Reuse does not keep a session alive for ever: ALTER ROLE reaches clients."""
    proxy = proxy_factory(pool(2, idle_timeout=600, max_lifetime=1.0))
    first = session_identity(pki, proxy.port)
    # The session is reset after its client left; only then can the next one get it.
    wait_results(proxy, "kept", 1)
    assert session_identity(pki, proxy.port) == first, "young: reused"
    wait_results(proxy, "kept", 2)
    # Kept again and again, it would never be idle for long; its age retires it.
    wait_for(lambda: not alive(admin, first[0]), timeout=5, what="the old session is closed")
    wait_for(lambda: idle(proxy) == 0, what="the idle gauge drops")
    assert session_identity(pki, proxy.port) != first
    assert results(proxy, "discarded") >= 1


def test_reload_turning_the_pool_off_closes_kept_sessions(
    proxy_factory: ProxyFactory, pki: PKIFiles, admin: psycopg.Connection[Any]
) -> None:
    proxy = proxy_factory(pool(2, idle_timeout=600))
    first = session_identity(pki, proxy.port)
    wait_results(proxy, "kept", 1)
    path = proxy.config_path  # type: ignore[attr-defined]
    data = yaml.safe_load(path.read_text())
    data["backends"]["main"]["pool"]["size"] = 0
    path.write_text(yaml.safe_dump(data))
    assert proxy.reload()
    wait_for(lambda: not alive(admin, first[0]), what="kept session closed after the reload")
    wait_for(lambda: idle(proxy) == 0, what="the idle gauge drops")
    assert session_identity(pki, proxy.port) != first
    assert results(proxy, "reused") == 0


def test_session_killed_on_the_server_is_not_handed_out(
    proxy_factory: ProxyFactory, pki: PKIFiles, admin: psycopg.Connection[Any]
) -> None:
    proxy = proxy_factory(pool(2))
    first = session_identity(pki, proxy.port)
    wait_results(proxy, "kept", 1)
    terminate_backend(admin, first[0])
    with connect(pki, proxy.port, "alice") as conn:
        assert identity_of(conn) != first
        assert conn.execute("select 41 + 1").fetchone() == (42,)
    assert results(proxy, "reused") == 0
    assert results(proxy, "discarded") == 1
    wait_results(proxy, "kept", 2)


def test_stopping_the_proxy_closes_kept_sessions(
    proxy_factory: ProxyFactory, pki: PKIFiles, admin: psycopg.Connection[Any]
) -> None:
    proxy = proxy_factory(pool(2, idle_timeout=600))
    first = session_identity(pki, proxy.port)
    wait_results(proxy, "kept", 1)
    proxy.stop(timeout=10)
    wait_for(lambda: not alive(admin, first[0]), what="kept session closed at stop")


def test_reuse_over_a_tls_backend(
    proxy_factory: ProxyFactory, pki: PKIFiles, pg_cluster_factory: ClusterFactory
) -> None:
    """The same over TLS to the server: the idle check and the reset go through OpenSSL."""
    cluster = pg_cluster_factory(
        start=False, hba_lines=["local all all trust", "hostssl all all 127.0.0.1/32 trust"]
    )
    cluster.install_file(pki.server_cert, "server.crt")
    cluster.install_file(pki.server_key, "server.key", mode=0o600)
    cluster.set_settings({"ssl": "on", "ssl_cert_file": "server.crt", "ssl_key_file": "server.key"})
    cluster.start()
    cluster.create_user("alice")
    proxy = proxy_factory(
        {
            "backends": {
                "main": {
                    "address": f"127.0.0.1:{cluster.port}",
                    "tls": {"mode": "require"},
                    "pool": {"size": 2},
                }
            }
        }
    )
    with connect(pki, proxy.port, "alice") as conn:
        first = identity_of(conn)
        assert conn.execute(
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()"
        ).fetchone() == (True,)
        conn.execute("create temp table tls_tmp (x int)")
    wait_results(proxy, "kept", 1)
    with connect(pki, proxy.port, "alice") as conn:
        assert identity_of(conn) == first
        assert conn.execute("select to_regclass('tls_tmp')").fetchone() == (None,)
    assert results(proxy, "reused") == 1
    wait_results(proxy, "kept", 2)
    with psycopg.connect(cluster.conninfo(), autocommit=True) as admin:
        terminate_backend(admin, first[0])
    with connect(pki, proxy.port, "alice") as conn:
        assert identity_of(conn) != first
    assert results(proxy, "discarded") == 1
    assert results(proxy, "reused") == 1


# ------------------------------------------------------------------ psql


def test_psql_twice_through_the_pool(proxy_factory: ProxyFactory, pki: PKIFiles) -> None:
    psql = shutil.which("psql")
    assert psql, "the psql client is part of the test environment"
    proxy = proxy_factory(pool(2))
    params = conninfo(pki, proxy.port, "alice")
    dsn = " ".join(f"{k}={v}" for k, v in params.items())

    def run() -> str:
        out = subprocess.run(
            [psql, dsn, "-XAtc", "select pg_backend_pid(), current_user"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    first = run()
    assert first.endswith("|alice")
    wait_results(proxy, "kept", 1)
    assert run() == first, "psql's second run got the same backend session"
    assert results(proxy, "reused") == 1
    wait_results(proxy, "kept", 2)
