"""The main path end to end: real PostgreSQL, real proxy, real clients."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import shutil
import socket
import ssl
import subprocess
import time

import psycopg
import pytest

from tests.fixtures.clients import (
    GSSENC_REQUEST,
    SSL_REQUEST,
    client_tls_context,
    connect,
    conninfo,
    current_user,
    parse_error,
    raw_socket,
    recv_all,
    startup_packet,
)
from tests.fixtures.pki import PKIFiles
from tests.fixtures.proxy import ProxyFactory, RunningProxy


def handshakes(proxy: RunningProxy, result: str, expected: float = 1) -> float:
    return proxy.wait_sample("pgtls_handshakes_total", {"result": result}, expected)


def sessions(proxy: RunningProxy, outcome: str, expected: float = 1) -> float:
    return proxy.wait_sample("pgtls_sessions_total", {"outcome": outcome}, expected)


def assert_serves(proxy: RunningProxy, pki: PKIFiles) -> None:
    """The proxy still serves a good client after whatever came before."""
    assert current_user(pki, proxy.port, "alice") == "alice"


# ------------------------------------------------------------------ success paths


def test_verify_full_maps_identity_to_user(proxy: RunningProxy, pki: PKIFiles) -> None:
    with connect(pki, proxy.port, "alice") as conn:
        assert conn.execute("select current_user").fetchone() == ("alice",)
        assert conn.pgconn.ssl_in_use
        assert conn.info.backend_pid != 0
    assert handshakes(proxy, "ok") == 1
    assert (
        proxy.sample("pgtls_handshake_duration_seconds_count", {"negotiation": "sslrequest"}) == 1
    )


def test_direct_tls(proxy: RunningProxy, pki: PKIFiles) -> None:
    assert current_user(pki, proxy.port, "alice", sslnegotiation="direct") == "alice"
    assert proxy.sample("pgtls_handshake_duration_seconds_count", {"negotiation": "direct"}) == 1


def test_gssencmode_prefer_falls_back_to_tls(proxy: RunningProxy, pki: PKIFiles) -> None:
    assert current_user(pki, proxy.port, "alice", gssencmode="prefer") == "alice"


def test_gssenc_request_gets_n_then_tls(proxy: RunningProxy, pki: PKIFiles) -> None:
    with raw_socket(proxy.port) as s:
        s.sendall(GSSENC_REQUEST)
        assert s.recv(1) == b"N"
        s.sendall(SSL_REQUEST)
        assert s.recv(1) == b"S"
        tls = client_tls_context(pki).wrap_socket(s, server_hostname="localhost")
        tls.sendall(startup_packet("alice", "postgres"))
        assert tls.recv(1) == b"R"
        tls.close()


def test_psql_cli_connects(proxy: RunningProxy, pki: PKIFiles) -> None:
    psql = shutil.which("psql")
    assert psql, "the psql client is part of the test environment"
    params = conninfo(pki, proxy.port, "alice")
    dsn = " ".join(f"{k}={v}" for k, v in params.items())
    out = subprocess.run(
        [psql, dsn, "-XAtc", "select current_user"],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PGCONNECT_TIMEOUT": "10"},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "alice"


def test_regex_rule_with_rewrite(proxy_factory: ProxyFactory, pki: PKIFiles) -> None:
    proxy = proxy_factory({"identity": {"on_user_mismatch": "rewrite"}})
    assert (
        current_user(pki, proxy.port, "app-reporting", user="whoever", dbname="app") == "app_user"
    )


def test_san_uri_identity(proxy_factory: ProxyFactory, pki: PKIFiles) -> None:
    proxy = proxy_factory(
        {
            "identity": {"field": "san_uri"},
            "rules": [{"identity": "/spiffe://example.org/ns/prod/sa/(.*)/", "user": "\\1"}],
        }
    )
    assert current_user(pki, proxy.port, "spiffe", user="app_user", dbname="app") == "app_user"


def test_copy_50mb_round_trip_is_byte_exact(proxy: RunningProxy, pki: PKIFiles) -> None:
    row = b"x" * 1023 + b"\n"
    payload = row * (50 * 1024)
    digest = hashlib.sha256(payload).hexdigest()
    with connect(pki, proxy.port, "alice") as conn:
        conn.execute("create temp table blob (line text)")
        with conn.cursor() as cur:
            with cur.copy("copy blob from stdin") as copy:
                for i in range(0, len(payload), 1 << 20):
                    copy.write(payload[i : i + (1 << 20)])
            out = hashlib.sha256()
            with cur.copy("copy blob to stdout") as copy:
                for chunk in copy:
                    out.update(chunk)
    assert out.hexdigest() == digest
    proxy.wait_sample("pgtls_sessions_total", {"outcome": "completed"}, 1)
    assert proxy.sample("pgtls_bytes_total", {"direction": "client_to_backend"}) > len(payload)
    assert proxy.sample("pgtls_bytes_total", {"direction": "backend_to_client"}) > len(payload)


def test_100_concurrent_sessions(proxy: RunningProxy, pki: PKIFiles) -> None:
    def one(i: int) -> int:
        with connect(pki, proxy.port, "alice") as conn:
            row = conn.execute("select %s::int + 1, pg_sleep(0.2)", (i,)).fetchone()
            assert row is not None
            return int(row[0])

    with concurrent.futures.ThreadPoolExecutor(max_workers=100) as pool:
        results = list(pool.map(one, range(100)))
    assert results == [i + 1 for i in range(100)]
    assert sessions(proxy, "completed", 100) == 100
    deadline = time.monotonic() + 5
    while (
        proxy.sample("pgtls_sessions_active", {"backend": "main"}) and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert proxy.sample("pgtls_sessions_active", {"backend": "main"}) == 0


# ------------------------------------------------------------------ TLS refusals


@pytest.mark.parametrize(
    ("cert", "result", "libpq_text"),
    [
        (None, "no_certificate", "certificate required"),
        ("other", "unknown_ca", "unknown ca"),
        ("expired", "expired", "certificate expired"),
        ("notyet", "not_yet_valid", "bad certificate"),
        ("serveronly", "bad_certificate", "unsupported certificate"),
    ],
)
def test_bad_client_certificates_are_refused_with_their_alert(
    proxy: RunningProxy, pki: PKIFiles, cert: str | None, result: str, libpq_text: str
) -> None:
    params = conninfo(pki, proxy.port, "alice")
    if cert is None:
        params["sslcert"] = "/nonexistent/none.crt"
        params["sslkey"] = "/nonexistent/none.key"
    elif cert == "other":
        params["sslcert"] = str(pki.other_ca / "alice.crt")
        params["sslkey"] = str(pki.other_ca / "alice.key")
    else:
        params["sslcert"], params["sslkey"] = (str(p) for p in pki.client(cert))
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(**params)
    assert libpq_text in str(info.value)
    assert handshakes(proxy, result) == 1
    assert sessions(proxy, "client_error") == 1
    assert_serves(proxy, pki)


def test_tls_below_min_version_is_refused(proxy_factory: ProxyFactory, pki: PKIFiles) -> None:
    proxy = proxy_factory({"tls": {"min_version": "1.3"}})
    ctx = client_tls_context(pki)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    with raw_socket(proxy.port) as s:
        s.sendall(SSL_REQUEST)
        assert s.recv(1) == b"S"
        with pytest.raises(ssl.SSLError):
            ctx.wrap_socket(s, server_hostname="localhost")
    time.sleep(0.2)
    assert handshakes(proxy, "protocol_version") == 1
    assert_serves(proxy, pki)


def test_direct_tls_without_alpn_is_refused(proxy: RunningProxy, pki: PKIFiles) -> None:
    ctx = client_tls_context(pki)  # no ALPN offered
    with raw_socket(proxy.port) as s:
        tls = ctx.wrap_socket(s, server_hostname="localhost")
        tls.sendall(startup_packet("alice", "postgres"))
        assert recv_all(tls) == b""
    time.sleep(0.2)
    assert handshakes(proxy, "no_alpn") == 1
    assert_serves(proxy, pki)


def test_handshake_timeout(proxy_factory: ProxyFactory, pki: PKIFiles) -> None:
    proxy = proxy_factory({"tls": {"handshake_timeout": 0.5}})
    with raw_socket(proxy.port) as s:
        s.sendall(SSL_REQUEST)
        assert s.recv(1) == b"S"
        started = time.monotonic()
        assert recv_all(s) == b""
        assert time.monotonic() - started < 3
    time.sleep(0.1)
    assert handshakes(proxy, "timeout") == 1
    assert_serves(proxy, pki)


# ------------------------------------------------------------------ plaintext and framing


def test_plaintext_startup_gets_28000(proxy: RunningProxy, pki: PKIFiles) -> None:
    params = conninfo(pki, proxy.port, "alice", sslmode="disable")
    with pytest.raises(psycopg.OperationalError) as info:
        psycopg.connect(**params)
    assert "TLS is required" in str(info.value)
    assert getattr(info.value, "sqlstate", None) in (None, "28000")
    with raw_socket(proxy.port) as s:
        s.sendall(startup_packet("alice", "postgres"))
        fields = parse_error(recv_all(s))
    assert fields["S"] == "FATAL" and fields["V"] == "FATAL"
    assert fields["C"] == "28000"
    assert "TLS is required" in fields["M"]
    assert handshakes(proxy, "plaintext_rejected", 2) == 2
    assert_serves(proxy, pki)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(SSL_REQUEST + startup_packet("alice"), id="data-after-sslrequest"),
        pytest.param(b"\x00\x00\x00\x07\x00\x03\x00", id="length-7"),
        pytest.param(b"\x00\x00\x27\x15" + b"\x00" * 16, id="length-10005"),
        pytest.param(b"\x7f\xff\xff\xff" + b"\x00" * 16, id="length-huge"),
        pytest.param(b"\x00\x00\x00\x10\x00\x02\x00\x00" + b"\x00" * 8, id="protocol-2"),
    ],
)
def test_bad_plaintext_input_closes_without_tls(
    proxy: RunningProxy, pki: PKIFiles, payload: bytes
) -> None:
    with raw_socket(proxy.port) as s:
        s.sendall(payload)
        got = recv_all(s)
    assert not got.startswith(b"S")
    if payload.startswith(SSL_REQUEST):
        assert got == b"", "nothing, not even S, after unencrypted data with SSLRequest"
    assert_serves(proxy, pki)


def test_ssl_request_inside_tls_is_refused(proxy: RunningProxy, pki: PKIFiles) -> None:
    with raw_socket(proxy.port) as s:
        s.sendall(SSL_REQUEST)
        assert s.recv(1) == b"S"
        tls = client_tls_context(pki).wrap_socket(s, server_hostname="localhost")
        tls.sendall(SSL_REQUEST)
        fields = parse_error(recv_all(tls))
    assert fields["C"] == "08P01"
    assert sessions(proxy, "startup_error") == 1
    assert_serves(proxy, pki)


def test_oversized_startup_inside_tls_is_refused(proxy: RunningProxy, pki: PKIFiles) -> None:
    with raw_socket(proxy.port) as s:
        s.sendall(SSL_REQUEST)
        assert s.recv(1) == b"S"
        tls = client_tls_context(pki).wrap_socket(s, server_hostname="localhost")
        tls.sendall(b"\x00\x00\x27\x15" + b"\x00\x03\x00\x00")
        recv_all(tls)
    assert sessions(proxy, "startup_error") == 1
    assert_serves(proxy, pki)


# ------------------------------------------------------------------ policy refusals


@pytest.mark.parametrize(
    ("cert", "user", "dbname", "reason"),
    [
        ("spiffe", "spiffe", "postgres", "no_rule"),  # no rule for this CN
        ("alice", "bob", "postgres", "user_mismatch"),
        ("carol", "carol", "postgres", "reject_rule"),
        ("bob", "bob", "postgres", "no_rule"),  # bob's rule is for database app only
    ],
)
def test_policy_refusals_are_28000(
    proxy: RunningProxy, pki: PKIFiles, cert: str, user: str, dbname: str, reason: str
) -> None:
    with pytest.raises(psycopg.OperationalError) as info:
        connect(pki, proxy.port, cert, user=user, dbname=dbname)
    text = str(info.value)
    assert f'"{user}"' in text and f'"{dbname}"' in text
    assert "/" not in text.split("FATAL")[-1], "the rules themselves are never shown"
    assert proxy.sample("pgtls_auth_denied_total", {"reason": reason}) == 1
    assert sessions(proxy, "denied") == 1
    assert_serves(proxy, pki)


def test_bob_reaches_his_database(proxy: RunningProxy, pki: PKIFiles) -> None:
    assert current_user(pki, proxy.port, "bob", dbname="app") == "bob"


def test_source_cidr_excludes_client(proxy_factory: ProxyFactory, pki: PKIFiles) -> None:
    proxy = proxy_factory(
        {"rules": [{"identity": "alice", "user": "alice", "sources": ["10.0.0.0/8"]}]}
    )
    with pytest.raises(psycopg.OperationalError, match="not allowed"):
        connect(pki, proxy.port, "alice")


# ------------------------------------------------------------------ backend and limits


def test_backend_down_gives_08006_promptly(proxy_factory: ProxyFactory, pki: PKIFiles) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    proxy = proxy_factory({"backends": {"main": {"address": f"127.0.0.1:{dead_port}"}}})
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError) as info:
        connect(pki, proxy.port, "alice")
    assert time.monotonic() - started < 3
    assert 'backend "main"' in str(info.value)
    assert proxy.sample("pgtls_backend_connect_errors_total", {"backend": "main"}) == 1
    assert sessions(proxy, "backend_error") == 1


def test_backend_that_never_answers_gives_08006(proxy_factory: ProxyFactory, pki: PKIFiles) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        proxy = proxy_factory(
            {
                "backends": {"main": {"address": f"127.0.0.1:{silent.getsockname()[1]}"}},
                "limits": {"startup_timeout": 1.5},
            }
        )
        with pytest.raises(psycopg.OperationalError) as info:
            connect(pki, proxy.port, "alice")
    assert "did not complete the login" in str(info.value)


def test_max_connections_gives_53300(proxy_factory: ProxyFactory, pki: PKIFiles) -> None:
    proxy = proxy_factory({"limits": {"max_connections": 2}})
    with connect(pki, proxy.port, "alice"), connect(pki, proxy.port, "alice"):
        with pytest.raises(psycopg.OperationalError) as info:
            connect(pki, proxy.port, "alice")
        assert "too many clients" in str(info.value)
    proxy.wait_sample("pgtls_sessions_total", {"outcome": "completed"}, 2)
    assert_serves(proxy, pki)


def test_protocol_32_request_passes_through(proxy: RunningProxy, pki: PKIFiles) -> None:
    """libpq 18 asks for protocol 3.2; the backend's NegotiateProtocolVersion reaches it."""
    with connect(pki, proxy.port, "alice", max_protocol_version="3.2") as conn:
        assert conn.execute("select current_user").fetchone() == ("alice",)
        # PostgreSQL 18 speaks 3.2 itself; older servers answer with
        # NegotiateProtocolVersion and the session continues on 3.0.
        assert conn.pgconn.protocol_version == 3


def test_startup_with_pq_option_is_answered_by_the_backend(
    proxy: RunningProxy, pki: PKIFiles
) -> None:
    with raw_socket(proxy.port) as s:
        s.sendall(SSL_REQUEST)
        assert s.recv(1) == b"S"
        tls = client_tls_context(pki).wrap_socket(s, server_hostname="localhost")
        body = (196608 + 2).to_bytes(
            4, "big"
        ) + b"user\0alice\0database\0postgres\0_pq_.unknown_option\0x\0\0"
        tls.sendall((len(body) + 4).to_bytes(4, "big") + body)
        reply = b""
        while b"Z\x00\x00\x00\x05" not in reply:
            chunk = tls.recv(65536)
            assert chunk, reply
            reply += chunk
        tls.close()
    # The backend's NegotiateProtocolVersion first, as libpq expects, then
    # AuthenticationOk from the proxy.
    assert reply.startswith(b"v") and b"_pq_.unknown_option" in reply
    length = int.from_bytes(reply[1:5], "big")
    assert reply[1 + length :].startswith(b"R\x00\x00\x00\x08\x00\x00\x00\x00")
