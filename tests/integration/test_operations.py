"""Operating the daemon: SIGHUP reload under load, drain, systemd notifications."""

from __future__ import annotations

import ipaddress
import re
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography import x509

from pgtls_proxy.ca import authority
from tests.fixtures.clients import connect, current_user, served_serial
from tests.fixtures.pki import PKIFiles, issue_custom
from tests.fixtures.proxy import deep_merge


def test_sighup_under_load_changes_policy_cert_and_crl(
    daemon_factory: Any, pki: PKIFiles, tmp_path: Path
) -> None:
    # A private copy of the PKI state that the reload changes.
    d = daemon_factory()
    old_serial = served_serial(pki, d.port)
    errors: list[BaseException] = []
    done = threading.Event()
    counts = [0] * 20

    def worker(i: int) -> None:
        try:
            with connect(pki, d.port, "alice") as conn:
                while not done.is_set():
                    conn.execute("select 1").fetchone()
                    counts[i] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    try:
        while min(counts) == 0:
            time.sleep(0.05)
            assert not errors, errors
        # bob may not reach postgres before the reload
        with pytest.raises(psycopg.OperationalError):
            connect(pki, d.port, "bob", dbname="postgres")
        # rotate the server certificate, revoke alice's expired twin, change a rule
        rotated = tmp_path / "rotated"
        rotated.mkdir()
        cert = issue_custom(
            rotated,
            "server",
            ca_dir=pki.dir,
            cn="localhost",
            usage="server",
            sans=[x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        )
        ca = authority.load_certificates(pki.ca)[0]
        ca_key = authority.load_private_key(pki.ca_key)
        revoked_serial = authority.load_certificates(pki.client("carol")[0])[0].serial_number
        crl = authority.build_crl(
            issuer_cert=ca, issuer_key=ca_key, revoked=[(revoked_serial, ca.not_valid_before_utc)]
        )
        authority.write_pem(rotated / "crl.pem", crl)
        new = deep_merge(
            d.data,
            {
                "tls": {
                    "cert_file": str(rotated / "server.crt"),
                    "key_file": str(rotated / "server.key"),
                    "crl_files": [str(rotated / "crl.pem")],
                }
            },
        )
        new["rules"] = [
            *new["rules"],
            {"identity": "bob", "user": "bob", "databases": ["postgres"]},
        ]
        d.write(new)
        d.signal(signal.SIGHUP)
        d.wait_metric("pgtls_config_reloads_total", 1, result="ok")
        time.sleep(0.3)
        assert not errors, errors
    finally:
        done.set()
        for t in threads:
            t.join(10)
    assert not errors, errors
    assert min(counts) > 0
    assert served_serial(pki, d.port) == cert.serial_number != old_serial
    assert current_user(pki, d.port, "bob", dbname="postgres") == "bob"
    with pytest.raises(psycopg.OperationalError, match="revoked"):
        connect(pki, d.port, "carol")


def test_sighup_with_broken_config_keeps_serving(daemon_factory: Any, pki: PKIFiles) -> None:
    d = daemon_factory()
    broken = dict(d.data)
    broken["tls"] = {**d.data["tls"], "min_version": "1.1"}
    d.write(broken)
    d.signal(signal.SIGHUP)
    d.wait_metric("pgtls_config_reloads_total", 1, result="failed")
    d.wait_log(r"reload failed.*tls\.min_version")
    assert current_user(pki, d.port, "alice") == "alice"
    assert d.metric("pgtls_config_reloads_total", result="ok") == 0


def test_reload_rebinds_changed_listener(daemon_factory: Any, pki: PKIFiles) -> None:
    d = daemon_factory()
    new_port, start = d.move_listener()
    d.wait_log(rf"listening on 127\.0\.0\.1:{new_port}", start=start)
    d.wait_metric("pgtls_config_reloads_total", 1, result="ok")
    assert current_user(pki, new_port, "alice") == "alice"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", d.port), timeout=2).close()


def test_sigterm_drains_then_exits_0(daemon_factory: Any, pki: PKIFiles) -> None:
    d = daemon_factory({"shutdown": {"drain_timeout": 10}})
    result: list[Any] = []

    def slow_query() -> None:
        with connect(pki, d.port, "alice") as conn:
            result.append(conn.execute("select 42, pg_sleep(1.5)").fetchone())

    t = threading.Thread(target=slow_query)
    t.start()
    d.wait_metric("pgtls_sessions_active", 1, backend="main")
    started = time.monotonic()
    d.signal(signal.SIGTERM)
    d.wait_log("draining 1 session")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", d.port), timeout=2).close()
    t.join(10)
    assert result and result[0][0] == 42, "the running session finished"
    assert d.proc.wait(10) == 0
    assert time.monotonic() - started < 10


def test_drain_timeout_closes_idle_sessions(daemon_factory: Any, pki: PKIFiles) -> None:
    d = daemon_factory({"shutdown": {"drain_timeout": 1}})
    conn = connect(pki, d.port, "alice")
    try:
        started = time.monotonic()
        d.signal(signal.SIGTERM)
        assert d.proc.wait(10) == 0
        assert 0.9 < time.monotonic() - started < 5
        with pytest.raises(psycopg.OperationalError):
            conn.execute("select 1")
    finally:
        conn.close()


def test_second_sigterm_ends_at_once(daemon_factory: Any, pki: PKIFiles) -> None:
    d = daemon_factory({"shutdown": {"drain_timeout": 30}})
    conn = connect(pki, d.port, "alice")
    try:
        d.signal(signal.SIGTERM)
        d.wait_log("draining 1 session")
        started = time.monotonic()
        d.signal(signal.SIGTERM)
        assert d.proc.wait(10) == 0
        assert time.monotonic() - started < 5
    finally:
        conn.close()


def test_systemd_notifications(daemon_factory: Any, tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    env = {**__import__("os").environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"}
    try:
        d = daemon_factory(env=env)
        messages: list[str] = []

        def until(prefix: str) -> str:
            while True:
                msg = sock.recv(4096).decode()
                messages.append(msg)
                if msg.startswith(prefix):
                    return msg

        until("READY=1")
        until("WATCHDOG=1")
        d.signal(signal.SIGHUP)
        reloading = until("RELOADING=1")
        assert re.search(r"MONOTONIC_USEC=\d+", reloading)
        until("READY=1")
        d.signal(signal.SIGTERM)
        until("STOPPING=1")
        assert d.proc.wait(10) == 0
    finally:
        sock.close()
