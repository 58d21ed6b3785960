"""PROXY protocol listeners: hand-made headers, and a real HAProxy in front."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgtls_proxy.wire.proxyproto import V2_SIGNATURE
from tests.fixtures.clients import (
    SSL_REQUEST,
    client_tls_context,
    connect,
    current_user,
    raw_socket,
    recv_all,
    startup_packet,
)
from tests.fixtures.pki import PKIFiles
from tests.fixtures.proxy import ProxyFactory, RunningProxy

PP_CONFIG = {
    "listen": [{"address": "127.0.0.1:0", "proxy_protocol": True}],
    "rules": [{"identity": "alice", "user": "alice", "sources": ["10.1.0.0/16"]}],
}


def v2_header(src: str, sport: int, dst: str = "10.0.0.1", dport: int = 6432) -> bytes:
    body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
    return V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


def login_via_header(proxy: RunningProxy, pki: PKIFiles, header: bytes) -> bytes:
    """Send a header, then SSLRequest + TLS + StartupMessage; return the reply."""
    with raw_socket(proxy.port) as s:
        s.sendall(header + SSL_REQUEST)
        assert s.recv(1) == b"S"
        tls = client_tls_context(pki).wrap_socket(s, server_hostname="localhost")
        tls.sendall(startup_packet("alice", "postgres"))
        reply = tls.recv(65536)
        tls.close()
    return reply


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(b"PROXY TCP4 10.1.2.3 10.0.0.1 5555 6432\r\n", id="v1"),
        pytest.param(v2_header("10.1.2.3", 5555), id="v2"),
    ],
)
def test_header_source_drives_rules_and_audit(
    proxy_factory: ProxyFactory, pki: PKIFiles, json_log: io.StringIO, header: bytes
) -> None:
    proxy = proxy_factory(PP_CONFIG)
    assert login_via_header(proxy, pki, header).startswith(b"R\x00\x00\x00\x08\x00\x00\x00\x00")
    proxy.wait_sample("pgtls_sessions_total", {"outcome": "completed"}, 1)
    records = [json.loads(x) for x in json_log.getvalue().splitlines()]
    audit = [r for r in records if r.get("event") == "session"]
    assert audit[-1]["client_addr"] == "10.1.2.3:5555"


def test_header_source_outside_rule_is_denied(proxy_factory: ProxyFactory, pki: PKIFiles) -> None:
    proxy = proxy_factory(PP_CONFIG)
    reply = login_via_header(proxy, pki, v2_header("192.0.2.7", 4000))
    assert reply.startswith(b"E") and b"28000" in reply


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(SSL_REQUEST, id="missing-header"),
        pytest.param(b"PROXY TCP4 10.1.2.3 10.0.0.1 99999 6432\r\n" + SSL_REQUEST, id="bad-port"),
        pytest.param(b"PROXY TCP4 " + b"1" * 120 + b"\r\n", id="v1-too-long"),
        pytest.param(V2_SIGNATURE + b"\x21\x11\xff\xff" + b"\x00" * 64, id="v2-too-long"),
        pytest.param(b"GET / HTTP/1.0\r\n\r\n", id="garbage"),
    ],
)
def test_bad_headers_close_without_a_word(
    proxy_factory: ProxyFactory, pki: PKIFiles, payload: bytes
) -> None:
    proxy = proxy_factory(PP_CONFIG)
    with raw_socket(proxy.port) as s:
        s.sendall(payload)
        assert recv_all(s) == b""
    assert login_via_header(proxy, pki, v2_header("10.1.9.9", 1)).startswith(b"R")


def test_no_header_within_timeout_closes(proxy_factory: ProxyFactory, pki: PKIFiles) -> None:
    proxy = proxy_factory({**PP_CONFIG, "tls": {"handshake_timeout": 0.5}})
    with raw_socket(proxy.port) as s:
        started = time.monotonic()
        assert recv_all(s) == b""
        assert time.monotonic() - started < 3


# ------------------------------------------------------------------ real HAProxy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def haproxy_bin() -> str:
    path = shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if os.path.exists("/usr/sbin/haproxy") else None
    )
    if path is None:
        if "CI" in os.environ:
            pytest.fail("haproxy is required under CI")
        pytest.skip("haproxy not installed")
    return path


def test_haproxy_send_proxy_v2_to_two_instances(
    proxy_factory: ProxyFactory,
    pki: PKIFiles,
    tmp_path: Path,
    haproxy_bin: str,
    json_log: io.StringIO,
) -> None:
    config: dict[str, Any] = {
        "listen": [{"address": "127.0.0.1:0", "proxy_protocol": True}],
        "rules": [{"identity": "alice", "user": "alice", "sources": ["127.0.0.0/8"]}],
    }
    a = proxy_factory(config)
    b = proxy_factory(config)
    front = _free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(
        f"""
global
    maxconn 200
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend pg
    bind 127.0.0.1:{front}
    default_backend proxies
backend proxies
    balance roundrobin
    server a 127.0.0.1:{a.port} send-proxy-v2
    server b 127.0.0.1:{b.port} send-proxy-v2
"""
    )
    check = subprocess.run([haproxy_bin, "-c", "-f", str(cfg)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.Popen(
        [haproxy_bin, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", front), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "haproxy did not start"
                time.sleep(0.05)
        local_ports = []
        for _ in range(6):
            with connect(pki, front, "alice") as conn:
                assert conn.execute("select current_user").fetchone() == ("alice",)
                with socket.socket(fileno=os.dup(conn.pgconn.socket)) as s:
                    local_ports.append(s.getsockname()[1])
        deadline = time.monotonic() + 5
        done = (0.0, 0.0)
        while sum(done) < 6 and time.monotonic() < deadline:
            time.sleep(0.05)
            done = tuple(p.sample("pgtls_sessions_total", {"outcome": "completed"}) for p in (a, b))
        assert sum(done) == 6 and min(done) >= 2, f"both instances serve: {done}"
        records = [json.loads(x) for x in json_log.getvalue().splitlines()]
        addrs = [
            r["client_addr"]
            for r in records
            if r.get("event") == "session" and r["outcome"] == "completed"
        ]
        ports = sorted(int(x.rsplit(":", 1)[1]) for x in addrs)
        assert ports == sorted(local_ports), "the audit shows the client, not HAProxy's hop"
        with pytest.raises(psycopg.OperationalError):
            # Straight to an instance, bypassing HAProxy: no header, no session.
            current_user(pki, a.port, "alice", connect_timeout=3)
    finally:
        proc.terminate()
        proc.wait(10)
