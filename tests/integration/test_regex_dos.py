"""A catastrophic rule and a hostile certificate cost good clients nothing noticeable.

With Python's backtracking ``re``, ``identity: /(a+)+$/`` and a CA-signed
certificate whose identity is ``aaaa…a!`` froze the worker's event loop (and
the relay of every open session on it) for as long as the match ran:
doubling with each character. Here the daemon runs that rule with two
workers while hostile clients connect over and over, one with a 64 KiB SAN
URI (past the identity bound) and one just under the bound (so RE2 itself
runs); a good client's connect time and an open session's ``select 1``
latency must not grow by 100 ms.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from pgtls_proxy.pki.rules import MAX_IDENTITY_CHARS
from tests.fixtures.clients import connect, conninfo
from tests.fixtures.pki import PKIFiles, issue_custom

pytestmark = pytest.mark.integration

ADDED = 0.1  # the most a hostile client may add, in seconds
ROUNDS = 3  # a busy test machine may spoil one round; a freeze spoils all
GOOD_SPIFFE_RULE = {"identity": "/spiffe://example\\.org/ns/prod/sa/(\\w+)/", "user": "\\1"}


def good_connect_time(pki: PKIFiles, port: int) -> float:
    started = time.perf_counter()
    with connect(pki, port, "spiffe", user="app_user", dbname="app") as conn:
        conn.execute("select 1")
    return time.perf_counter() - started


class QueryLoop:
    """An open session running ``select 1`` back to back, timing each."""

    def __init__(self, pki: PKIFiles, port: int) -> None:
        self.conn = connect(pki, port, "spiffe", user="app_user", dbname="app")
        self.latencies: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            started = time.perf_counter()
            self.conn.execute("select 1")
            self.latencies.append(time.perf_counter() - started)
            time.sleep(0.002)

    def window(self, seconds: float) -> list[float]:
        """The latencies of the next ``seconds``."""
        start = len(self.latencies)
        time.sleep(seconds)
        return self.latencies[start:]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.conn.close()


class Attackers:
    """Clients with hostile certificates, connecting again and again until stopped."""

    def __init__(self, pki: PKIFiles, port: int, certs: list[tuple[Path, Path]]) -> None:
        self.attempts = 0
        self.unexpected: list[str] = []
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(pki, port, crt, key), daemon=True)
            for crt, key in certs
        ]
        for thread in self.threads:
            thread.start()

    def _run(self, pki: PKIFiles, port: int, crt: Path, key: Path) -> None:
        params = conninfo(pki, port, "spiffe", user="app_user", dbname="app")
        params.update(sslcert=str(crt), sslkey=str(key), connect_timeout=30)
        while not self.stop.is_set():
            try:
                psycopg.connect(**params).close()
            except psycopg.OperationalError as exc:
                if "is not allowed to connect" not in str(exc):
                    self.unexpected.append(str(exc))
            else:
                self.unexpected.append("a hostile client got in")
            self.attempts += 1

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def test_catastrophic_rule_and_64k_identity_do_not_stall_good_clients(
    daemon_factory: Any, pki: PKIFiles, tmp_path: Path
) -> None:
    hostile = [
        issue_custom(
            tmp_path,
            name,
            ca_dir=pki.dir,
            cn=name,
            sans=[x509.UniformResourceIdentifier("a" * length + "!")],
        )
        for name, length in (("huge", 64 * 1024), ("at-bound", MAX_IDENTITY_CHARS - 1))
    ]
    assert len(hostile[0].public_bytes(Encoding.DER)) > 64 * 1024
    certs = [(tmp_path / f"{n}.crt", tmp_path / f"{n}.key") for n in ("huge", "at-bound")]
    d = daemon_factory(
        {
            "workers": 2,
            "identity": {"field": "san_uri"},
            "rules": [{"identity": "/(a+)+$/", "user": "nobody"}, GOOD_SPIFFE_RULE],
        }
    )
    d.wait_log("all 2 workers ready")
    session = QueryLoop(pki, d.port)
    try:
        results = []
        for _ in range(ROUNDS):
            quiet_connect = statistics.median(good_connect_time(pki, d.port) for _ in range(5))
            quiet_queries = session.window(2)
            attackers = Attackers(pki, d.port, certs * 2)
            try:
                time.sleep(0.5)
                loud_connect = statistics.median(good_connect_time(pki, d.port) for _ in range(5))
                loud_queries = session.window(2)
            finally:
                attackers.close()
            assert not attackers.unexpected, attackers.unexpected[:3]
            assert attackers.attempts >= 8, "the hostile clients barely ran"
            result = (
                loud_connect - quiet_connect,
                p95(loud_queries) - p95(quiet_queries),
                max(loud_queries),
                attackers.attempts,
            )
            results.append(result)
            if result[0] < ADDED and result[1] < ADDED:
                break
        else:
            raise AssertionError(f"hostile clients slowed good ones (s): {results}")
    finally:
        session.close()
    assert d.metric("pgtls_auth_denied_total", reason="no_rule") >= 8
    # Still serving, both workers alive.
    assert good_connect_time(pki, d.port) < 10
    assert "died" not in "".join(d.log)
