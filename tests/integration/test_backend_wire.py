"""The backend link against a scripted server: what PostgreSQL 15 cannot show.

Protocol 3.2 cancel keys (up to 256 bytes, PostgreSQL 18), bytes injected
after the server's ``S``, a backend that dies after a FATAL, a client that
vanishes, and that none of it leaves tasks, sockets or keys behind.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
import trio

from tests.fixtures.clients import (
    SSL_REQUEST,
    client_tls_context,
    connect,
    parse_error,
    raw_socket,
    recv_all,
    startup_packet,
)
from tests.fixtures.fake_backend import FakeBackend, FakeBackendFactory
from tests.fixtures.pki import PKIFiles
from tests.fixtures.polling import wait_for
from tests.fixtures.proxy import ProxyFactory, RunningProxy

PROTOCOL_3_2 = 3 << 16 | 2
CANCEL_REQUEST_CODE = 80877102


def in_front_of(proxy_factory: ProxyFactory, backend: FakeBackend, **tls: Any) -> RunningProxy:
    main: dict[str, Any] = {"address": f"127.0.0.1:{backend.port}"}
    if tls:
        main["tls"] = tls
    return proxy_factory({"backends": {"main": main}})


def read_messages(sock: socket.socket, until: bytes) -> dict[bytes, bytes]:
    """Backend messages up to and including the first of type ``until``, by type."""
    buf = b""
    seen: dict[bytes, bytes] = {}
    while until not in seen:
        while len(buf) < 5 or len(buf) < 1 + struct.unpack("!I", buf[1:5])[0]:
            chunk = sock.recv(65536)
            assert chunk, f"closed before {until!r}; got {list(seen)}"
            buf += chunk
        (length,) = struct.unpack("!I", buf[1:5])
        seen[buf[:1]] = buf[5 : 1 + length]
        buf = buf[1 + length :]
    return seen


def open_session(port: int, pki: PKIFiles, **wrap: Any) -> tuple[ssl.SSLSocket, int, bytes]:
    """A raw client asking for protocol 3.2; returns the socket and its cancel key."""
    s = raw_socket(port)
    s.sendall(SSL_REQUEST)
    assert s.recv(1) == b"S"
    tls = client_tls_context(pki).wrap_socket(s, server_hostname="localhost", **wrap)
    tls.sendall(startup_packet("alice", "postgres", protocol=PROTOCOL_3_2))
    key_data = read_messages(tls, b"Z")[b"K"]
    (pid,) = struct.unpack("!I", key_data[:4])
    return tls, pid, key_data[4:]


def cancel_request(pid: int, key: bytes) -> bytes:
    return struct.pack("!III", 12 + len(key), CANCEL_REQUEST_CODE, pid) + key


def send_cancel(port: int, pki: PKIFiles, packet: bytes, *, via_tls: bool) -> None:
    """Send one CancelRequest as psql (plaintext) or libpq 17+ (inside TLS) would."""
    with raw_socket(port) as s:
        if via_tls:
            s.sendall(SSL_REQUEST)
            assert s.recv(1) == b"S"
            tls = client_tls_context(pki).wrap_socket(
                s, server_hostname="localhost", suppress_ragged_eofs=False
            )
            tls.sendall(packet)
            assert tls.recv(16) == b"", "close_notify, as libpq 18 expects"
        else:
            s.sendall(packet)
            assert s.recv(16) == b""


def simple_query(sql: str) -> bytes:
    body = sql.encode() + b"\0"
    return b"Q" + struct.pack("!I", len(body) + 4) + body


# ------------------------------------------------------------------ cancel keys


@pytest.mark.parametrize("via_tls", [False, True], ids=["plaintext", "inside-tls"])
@pytest.mark.parametrize("key_len", [4, 32, 256])
def test_cancel_keys_of_any_length_are_substituted_and_forwarded(
    proxy_factory: ProxyFactory,
    fake_backend_factory: FakeBackendFactory,
    pki: PKIFiles,
    key_len: int,
    via_tls: bool,
) -> None:
    backend = fake_backend_factory(key=os.urandom(key_len))
    proxy = in_front_of(proxy_factory, backend)
    tls, pid, key = open_session(proxy.port, pki)
    with tls:
        assert len(key) == key_len, "the client gets a key as long as the backend's"
        assert (pid, key) != (backend.pid, backend.key), "never the backend's own"
        tls.sendall(simple_query("select pg_sleep(30)"))
        started = time.monotonic()
        send_cancel(proxy.port, pki, cancel_request(pid, key), via_tls=via_tls)
        reply = read_messages(tls, b"Z")
        assert time.monotonic() - started < 2
        assert b"C57014\0" in reply[b"E"]
    assert backend.cancels == [(backend.pid, backend.key)]
    assert proxy.sample("pgtls_cancel_requests_total", {"result": "forwarded"}) == 1


def test_a_forged_long_key_cancels_nothing(
    proxy_factory: ProxyFactory, fake_backend_factory: FakeBackendFactory, pki: PKIFiles
) -> None:
    backend = fake_backend_factory(key=os.urandom(32))
    proxy = in_front_of(proxy_factory, backend)
    tls, pid, key = open_session(proxy.port, pki)
    with tls:
        forged = bytes([key[0] ^ 1]) + key[1:]
        for packet in (
            cancel_request(pid, forged),
            cancel_request(pid ^ 1, key),
            cancel_request(pid, key[:4]),  # a 3.0-length prefix of the right key
            cancel_request(backend.pid, backend.key),  # the real key, never handed out
        ):
            send_cancel(proxy.port, pki, packet, via_tls=False)
        assert proxy.wait_sample("pgtls_cancel_requests_total", {"result": "unknown_key"}, 4) == 4
    assert backend.cancels == []


def test_plaintext_cancels_refused_by_config_are_counted(
    proxy_factory: ProxyFactory, fake_backend_factory: FakeBackendFactory, pki: PKIFiles
) -> None:
    backend = fake_backend_factory(key=os.urandom(32))
    proxy = proxy_factory(
        {
            "backends": {"main": {"address": f"127.0.0.1:{backend.port}"}},
            "limits": {"plaintext_cancel": False},
        }
    )
    tls, pid, key = open_session(proxy.port, pki)
    with tls:
        send_cancel(proxy.port, pki, cancel_request(pid, key), via_tls=False)
        assert proxy.wait_sample("pgtls_cancel_requests_total", {"result": "refused"}, 1) == 1
        assert backend.cancels == []
        send_cancel(proxy.port, pki, cancel_request(pid, key), via_tls=True)
        wait_for(lambda: backend.cancels == [(backend.pid, backend.key)])


def test_a_cancel_whose_backend_is_gone_is_counted_failed(
    proxy_factory: ProxyFactory, fake_backend_factory: FakeBackendFactory, pki: PKIFiles
) -> None:
    backend = fake_backend_factory()
    proxy = in_front_of(proxy_factory, backend)
    tls, pid, key = open_session(proxy.port, pki)
    with tls:
        backend.close()  # the session lives on; new connections are refused
        send_cancel(proxy.port, pki, cancel_request(pid, key), via_tls=True)
        assert proxy.wait_sample("pgtls_cancel_requests_total", {"result": "failed"}, 1) == 1
    assert proxy.sample("pgtls_cancel_requests_total", {"result": "forwarded"}) == 0


def test_libpq_encrypted_cancel_with_a_32_byte_key(
    proxy_factory: ProxyFactory, fake_backend_factory: FakeBackendFactory, pki: PKIFiles
) -> None:
    backend = fake_backend_factory(key=os.urandom(32))
    proxy = in_front_of(proxy_factory, backend)
    conn = connect(pki, proxy.port, "alice", max_protocol_version="3.2")
    try:
        pgconn = conn.pgconn
        pgconn.send_query(b"select pg_sleep(30)")
        conn.cancel_safe(timeout=5)
        wait_for(lambda: backend.cancels == [(backend.pid, backend.key)], 2)
        while pgconn.is_busy():
            pgconn.consume_input()
            time.sleep(0.01)
        result = pgconn.get_result()
        assert result is not None
        assert result.error_field(psycopg.pq.DiagnosticField.SQLSTATE) == b"57014"
        while pgconn.get_result() is not None:
            pass
    finally:
        conn.close()


# ------------------------------------------------------------------ backend TLS negotiation


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"Sjunk", "sent unencrypted data after its SSL answer"),  # CVE-2021-23222 class
        (b"N", "does not accept TLS"),
        (b"E", "instead of S or N"),
    ],
)
def test_bad_answers_to_ssl_request_are_08006(
    proxy_factory: ProxyFactory,
    fake_backend_factory: FakeBackendFactory,
    pki: PKIFiles,
    answer: bytes,
    reason: str,
) -> None:
    backend = fake_backend_factory(ssl_answer=answer)
    proxy = in_front_of(proxy_factory, backend, mode="require")
    with raw_socket(proxy.port) as s:
        s.sendall(SSL_REQUEST)
        assert s.recv(1) == b"S"
        tls = client_tls_context(pki).wrap_socket(s, server_hostname="localhost")
        tls.sendall(startup_packet("alice", "postgres"))
        fields = parse_error(recv_all(tls))
    assert fields["C"] == "08006" and fields["S"] == "FATAL"
    assert reason in fields["M"] and 'backend "main"' in fields["M"]
    assert backend.open_sessions == 0, "nothing after the answer was read as protocol"


def test_a_backend_that_skips_the_scram_proof_is_refused(
    proxy_factory: ProxyFactory,
    fake_backend_factory: FakeBackendFactory,
    pki: PKIFiles,
    tmp_path: Path,
) -> None:
    backend = fake_backend_factory(skip_scram=True)
    userlist = tmp_path / "userlist.txt"
    userlist.write_text('"alice" "Alice-Secret-9"\n')
    userlist.chmod(0o600)
    main = {"address": f"127.0.0.1:{backend.port}", "auth": {"passwords_file": str(userlist)}}
    proxy = proxy_factory({"backends": {"main": main}})
    with pytest.raises(psycopg.OperationalError) as info:
        connect(pki, proxy.port, "alice")
    assert "without completing SCRAM" in str(info.value)
    assert "Alice-Secret-9" not in str(info.value)


# ------------------------------------------------------------------ session end


def test_a_backend_fatal_reaches_the_client_then_tls_closes_cleanly(
    proxy_factory: ProxyFactory, fake_backend_factory: FakeBackendFactory, pki: PKIFiles
) -> None:
    proxy = in_front_of(proxy_factory, fake_backend_factory())
    # Without ragged-EOF suppression a close without close_notify raises.
    tls, _, _ = open_session(proxy.port, pki, suppress_ragged_eofs=False)
    with tls:
        tls.sendall(simple_query("die"))
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    fields = parse_error(data)
    assert (fields["S"], fields["C"]) == ("FATAL", "57P01")
    assert proxy.wait_sample("pgtls_sessions_total", {"outcome": "completed"}, 1) == 1
    assert proxy.sample("pgtls_sessions_active", {"backend": "main"}) == 0


def test_a_vanished_client_gets_the_backend_a_terminate(
    proxy_factory: ProxyFactory, fake_backend_factory: FakeBackendFactory, pki: PKIFiles
) -> None:
    backend = fake_backend_factory()
    proxy = in_front_of(proxy_factory, backend)
    tls, _, _ = open_session(proxy.port, pki)
    tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    tls.close()  # a reset, no Terminate
    assert backend.terminated.wait(5)
    wait_for(lambda: backend.open_sessions == 0)
    wait_for(lambda: proxy.sample("pgtls_sessions_active", {"backend": "main"}) == 0)


def trio_tasks(proxy: RunningProxy) -> int:
    """How many tasks the proxy's trio loop runs right now."""

    def count() -> int:
        def walk(task: trio.lowlevel.Task) -> int:
            return 1 + sum(walk(t) for n in task.child_nurseries for t in n.child_tasks)

        return walk(trio.lowlevel.current_root_task())  # type: ignore[arg-type]

    return int(proxy.call(count))


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_no_task_socket_or_key_outlives_its_session(
    proxy_factory: ProxyFactory, fake_backend_factory: FakeBackendFactory, pki: PKIFiles
) -> None:
    backend = fake_backend_factory(key=os.urandom(32))
    proxy = in_front_of(proxy_factory, backend)
    tasks, fds = trio_tasks(proxy), open_fds()
    assert tasks > 1, "the walk sees the proxy's task tree"
    for _ in range(5):
        # a cancelled query, then a clean end
        tls, pid, key = open_session(proxy.port, pki)
        tls.sendall(simple_query("select pg_sleep(30)"))
        send_cancel(proxy.port, pki, cancel_request(pid, key), via_tls=True)
        read_messages(tls, b"Z")
        tls.sendall(b"X\0\0\0\4")
        tls.close()
        # the backend dies
        tls, _, _ = open_session(proxy.port, pki)
        tls.sendall(simple_query("die"))
        recv_all(tls)
        tls.close()
        # the client vanishes
        tls, _, _ = open_session(proxy.port, pki)
        tls.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        tls.close()
        # a forged cancel
        send_cancel(proxy.port, pki, cancel_request(1, b"1234"), via_tls=False)
    assert proxy.wait_sample("pgtls_sessions_total", {"outcome": "completed"}, 15) == 15
    wait_for(lambda: proxy.proxy.rt.connections == 0)
    wait_for(lambda: trio_tasks(proxy) == tasks)
    wait_for(lambda: open_fds() <= fds)
    wait_for(lambda: backend.open_sessions == 0)
    assert len(proxy.proxy.rt.cancels) == 0
    assert proxy.sample("pgtls_sessions_active", {"backend": "main"}) == 0
    with pytest.raises(psycopg.OperationalError):
        connect(pki, proxy.port, "carol")  # a denied client leaves nothing either
    wait_for(lambda: trio_tasks(proxy) == tasks)
    wait_for(lambda: open_fds() <= fds)
