"""Admission: strangers' idle and slow connections cannot shut the door.

Attackers connect from other loopback addresses (127.0.0.2, 127.0.1.x) so
the per-source accounting sees them apart from the good client on
127.0.0.1, which connects as users do (psycopg, verify-full, certificate).
"""

from __future__ import annotations

import contextlib
import re
import resource
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.fixtures import daemon as daemon_mod
from tests.fixtures.clients import (
    SSL_REQUEST,
    client_tls_context,
    connect,
    raw_socket,
    recv_all,
    startup_packet,
)
from tests.fixtures.pki import PKIFiles
from tests.fixtures.proxy import ProxyFactory, RunningProxy
from tests.integration.test_proxy_protocol import PP_CONFIG, v2_header

REFUSAL_LINE = re.compile(
    r"refused (\d+) connection\(s\) since the last report \(([^)]*)\); most from (\S+) \(\d+\)"
)
ACCEPT_ERROR_LINE = re.compile(r"accept failed (\d+) time\(s\) since the last report \(([^)]*)\)")
# A slow start under load is not what these tests measure; the attack must
# still be in place when the good client comes.
PATIENT = {"limits": {"startup_timeout": 30}, "tls": {"handshake_timeout": 30}}


@pytest.fixture(autouse=True)
def _descriptors() -> None:
    """Thousands of attacker sockets live in this test process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < 6000:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is too low for the flood")


def open_idle(port: int, source: str, count: int) -> list[socket.socket]:
    """``count`` TCP connections from ``source`` that never send a byte."""
    out = []
    for _ in range(count):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((source, 0))
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        out.append(s)
    return out


class Slowloris:
    """Connections that ask for TLS, then send a ClientHello a byte at a time."""

    def __init__(self, port: int, source: str, count: int) -> None:
        self.socks = open_idle(port, source, count)
        for s in self.socks:
            s.sendall(SSL_REQUEST)
        self.live: list[socket.socket] = []
        for s in self.socks:
            s.settimeout(2)
            with contextlib.suppress(OSError):
                if s.recv(1) == b"S":
                    # A handshake record announcing 512 bytes, of which 4 come now.
                    s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01")
                    self.live.append(s)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._dribble, daemon=True)
        self._thread.start()

    def _dribble(self) -> None:
        while not self._stop.wait(0.5):
            for s in list(self.live):
                try:
                    s.send(b"\x03")
                except OSError:
                    self.live.remove(s)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        for s in self.socks:
            s.close()


def good_client_time(pki: PKIFiles, port: int) -> float:
    """Seconds for a good mTLS client to connect and run a query."""
    started = time.monotonic()
    with connect(pki, port, "alice") as conn:
        assert conn.execute("select current_user").fetchone() == ("alice",)
    return time.monotonic() - started


def refusals_logged(log: list[str], source: str) -> tuple[int, int]:
    """(lines, connections) of the rate-limited refusal lines naming ``source``."""
    lines = [m for line in log if (m := REFUSAL_LINE.search(line)) and m.group(3) == source]
    return len(lines), sum(int(m.group(1)) for m in lines)


def refused_total(d: Any) -> float:
    return sum(
        d.metric("pgtls_connections_refused_total", reason=reason)
        for reason in ("per_source", "pending_full", "evicted")
    )


def poll(condition: Any, timeout: float = 15, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never true: {what}"
        time.sleep(0.05)


@contextlib.contextmanager
def closing_all(*groups: list[socket.socket]) -> Iterator[None]:
    try:
        yield
    finally:
        for group in groups:
            for s in group:
                s.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_one_address_with_idle_and_slow_sockets_locks_nobody_out(
    daemon_factory: Any, pki: PKIFiles, workers: int
) -> None:
    d = daemon_factory({**PATIENT, "workers": workers, "limits": {"max_connections": 100}})
    if workers > 1:
        d.wait_log(f"all {workers} workers ready")
    assert good_client_time(pki, d.port) < 5  # warm: the first libpq start is slow
    started = time.monotonic()
    slow = Slowloris(d.port, "127.0.0.2", 500)
    idle = open_idle(d.port, "127.0.0.2", 800)
    with closing_all(idle):
        try:
            took = good_client_time(pki, d.port)
            assert took < 1.0, f"good client took {took:.2f}s"
            # Every attacker connection is either pending or was refused, and
            # the source holds at most its share (limits.per_source_pending).
            poll(
                lambda: d.metric("pgtls_connections_pending") + refused_total(d) == 1300,
                what="all 1300 attacker connections accounted for",
            )
            assert d.metric("pgtls_connections_pending") <= 128 * workers
            assert d.metric("pgtls_connections_refused_total", reason="per_source") >= 1300 - 256
            # A session is not pending, and pending connections are not
            # sessions: the good client's slot is free again, the 1300 did not
            # take any of max_connections.
            assert good_client_time(pki, d.port) < 1.0
        finally:
            slow.close()
    # Each refusal is in the log, on at most one line a second per worker.
    refused = d.metric("pgtls_connections_refused_total", reason="per_source")
    poll(lambda: refusals_logged(d.log, "127.0.0.2")[1] == refused, 5, "refusals logged")
    lines, _ = refusals_logged(d.log, "127.0.0.2")
    elapsed = time.monotonic() - started
    assert 1 <= lines <= workers * (elapsed + 2)


@pytest.mark.parametrize("workers", [1, 2])
def test_many_addresses_cannot_fill_the_door(
    daemon_factory: Any, pki: PKIFiles, workers: int
) -> None:
    """5,000 idle sockets over 50 addresses: the budget is full, an unseen address gets in."""
    d = daemon_factory({**PATIENT, "workers": workers, "limits": {"max_connections": 100}})
    if workers > 1:
        d.wait_log(f"all {workers} workers ready")
    assert good_client_time(pki, d.port) < 5
    attack: list[socket.socket] = []
    with closing_all(attack):
        for _ in range(100):
            for n in range(50):
                attack.extend(open_idle(d.port, f"127.0.1.{n + 1}", 1))
        took = good_client_time(pki, d.port)
        assert took < 1.0, f"good client took {took:.2f}s"
        poll(
            lambda: d.metric("pgtls_connections_pending") + refused_total(d) == 5000,
            what="all 5000 attacker connections accounted for",
        )
        # Every worker's budget (the default max_pending) is full but for
        # the slot the good client took and gave back.
        assert workers * 1024 - 1 <= d.metric("pgtls_connections_pending") <= workers * 1024
        # The good client got in by evicting an attacker's oldest socket.
        assert d.metric("pgtls_connections_refused_total", reason="evicted") >= 1
        assert d.metric("pgtls_connections_refused_total", reason="pending_full") >= 1
        assert d.metric("pgtls_connections_refused_total", reason="per_source") == 0


def test_pending_and_sessions_have_separate_budgets(
    proxy_factory: ProxyFactory, pki: PKIFiles
) -> None:
    proxy = proxy_factory(
        {**PATIENT, "limits": {"max_connections": 3, "max_pending": 3, "per_source_pending": 50}}
    )
    first, second = connect(pki, proxy.port), connect(pki, proxy.port)
    idle: list[socket.socket] = []
    with first, second, closing_all(idle):
        assert proxy.sample("pgtls_connections_pending") == 0  # sessions are not pending
        idle.extend(open_idle(proxy.port, "127.0.0.2", 3))
        poll(lambda: proxy.sample("pgtls_connections_pending") == 3, what="3 pending")
        # The pending budget is full and two sessions run: a third client
        # evicts a stranger's idle socket and becomes the third session.
        with connect(pki, proxy.port) as third:
            assert third.execute("select 1").fetchone() == (1,)
            assert proxy.sample("pgtls_connections_refused_total", {"reason": "evicted"}) == 1
            assert recv_all(idle[0]) == b""  # the oldest one was closed
            # A fourth is one session too many, whatever is pending.
            with pytest.raises(psycopg.OperationalError, match="too many clients"):
                connect(pki, proxy.port)
        poll(lambda: proxy.proxy.rt.connections == 2, what="two sessions left")
    poll(lambda: proxy.proxy.rt.connections == 0, what="sessions ended")
    assert proxy.sample("pgtls_connections_refused_total", {"reason": "per_source"}) == 0


def test_proxy_protocol_caps_the_client_address_not_the_balancer(
    proxy_factory: ProxyFactory, pki: PKIFiles
) -> None:
    proxy = proxy_factory(
        {**PP_CONFIG, **PATIENT, "limits": {"per_source_pending": 10, "startup_timeout": 30}}
    )
    via_balancer: list[socket.socket] = []
    with closing_all(via_balancer):
        # 60 clients behind one balancer (the TCP peer): far more than 10 pending.
        for i in range(60):
            s = raw_socket(proxy.port)
            s.sendall(v2_header(f"10.1.{i}.1", 40000))
            via_balancer.append(s)
        # One client address behind it opens 15: 5 over its cap.
        for _ in range(15):
            s = raw_socket(proxy.port)
            s.sendall(v2_header("10.9.9.9", 40000))
            via_balancer.append(s)
        poll(
            lambda: proxy.sample("pgtls_connections_refused_total", {"reason": "per_source"}) == 5,
            what="5 refused",
        )
        poll(lambda: proxy.sample("pgtls_connections_pending") == 70, what="70 pending")
        # And a good client behind the same balancer still gets in.
        with raw_socket(proxy.port) as s:
            s.sendall(v2_header("10.1.200.7", 40000) + SSL_REQUEST)
            assert s.recv(1) == b"S"
            tls = client_tls_context(pki).wrap_socket(s, server_hostname="localhost")
            tls.sendall(startup_packet("alice", "postgres"))
            reply = tls.recv(65536)
            assert reply.startswith(b"R\x00\x00\x00\x08\x00\x00\x00\x00"), reply
            tls.close()


def _stuck_session(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    """A session waiting on a backend that never answers: two descriptors in the proxy."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(SSL_REQUEST)
    assert s.recv(1) == b"S"
    tls = ctx.wrap_socket(s, server_hostname="localhost")
    tls.sendall(startup_packet("alice", "stuck"))
    return tls


def test_out_of_descriptors_is_counted_logged_and_recovers(
    daemon_factory: Any, pki: PKIFiles, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under a low RLIMIT_NOFILE: accept fails, is counted and logged; then a client gets in."""
    nofile = 200
    monkeypatch.setattr(daemon_mod, "CLI", ["prlimit", f"--nofile={nofile}", *daemon_mod.CLI])
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(512)  # accepts nothing: logins there never finish
    try:
        d = daemon_factory(
            {
                **PATIENT,
                "workers": 1,
                "backends": {
                    "silent": {
                        "address": f"127.0.0.1:{silent.getsockname()[1]}",
                        "databases": ["stuck"],
                    }
                },
            }
        )
        d.wait_log(r"limits\.max_connections: the limits need \d+ file descriptors")
        ctx = client_tls_context(pki)
        stuck = [_stuck_session(d.port, ctx) for _ in range(70)]
        flood: list[socket.socket] = []
        with closing_all(stuck, flood):
            started = time.monotonic()
            # Idle sockets until the process runs out of descriptors, and a
            # second more of them.
            while not any("accept failed" in line for line in d.log):
                assert time.monotonic() - started < 10, "".join(d.log[-10:])
                flood.extend(open_idle(d.port, "127.0.0.2", 20))
            flood.extend(open_idle(d.port, "127.0.0.2", 100))
            time.sleep(1)
            d.wait_log(r"accept failed \d+ time\(s\) since the last report \(emfile=\d+\)")
        # The flood ends: its sockets close, and the stuck sessions fail.
        silent.close()
        took = 0.0
        deadline = time.monotonic() + 10
        while True:
            try:
                took = good_client_time(pki, d.port)
                break
            except psycopg.OperationalError:
                assert time.monotonic() < deadline, "no good client got in after the flood"
                time.sleep(0.1)
        assert took < 1.0
        assert d.metric("pgtls_accept_errors_total", error="emfile") >= 1
        assert d.metric("pgtls_connections_refused_total", reason="no_descriptors") >= 1
        elapsed = time.monotonic() - started
        lines = [m for line in d.log if (m := ACCEPT_ERROR_LINE.search(line))]
        assert 1 <= len(lines) <= elapsed + 2
        poll(
            lambda: (
                sum(int(m.group(1)) for m in map(ACCEPT_ERROR_LINE.search, d.log) if m)
                == d.metric("pgtls_accept_errors_total", error="emfile")
            ),
            5,
            "every accept error logged",
        )
    finally:
        silent.close()


def test_proxy_still_serves_after_refusing(proxy: RunningProxy, pki: PKIFiles) -> None:
    """A source at its cap is refused; everyone else, and it later, is served."""
    # proxy: default limits, so 128 pending per source.
    idle = open_idle(proxy.port, "127.0.0.2", 130)
    with closing_all(idle):
        poll(
            lambda: proxy.sample("pgtls_connections_refused_total", {"reason": "per_source"}) == 2,
            what="2 refused",
        )
        assert good_client_time(pki, proxy.port) < 1.0
    poll(lambda: proxy.sample("pgtls_connections_pending") == 0, what="pending drained")
