"""``metrics.tls``: the metrics endpoint over TLS, for scrapers with a client certificate."""

from __future__ import annotations

import http.client
import signal
import socket
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pgtls_proxy.ca import authority
from tests.fixtures.clients import current_user
from tests.fixtures.pki import PKIFiles
from tests.fixtures.proxy import ProxyFactory


@dataclass(frozen=True)
class MetricsPKI:
    """A CA of its own for the scraper, and the endpoint's certificate."""

    dir: Path
    ca: Path  # issued the endpoint's certificate and the scraper's
    cert: Path
    key: Path
    scraper: tuple[Path, Path]
    scraper_cas: Path  # metrics.tls.client_ca_file: a copy of ``ca`` at first

    def config(self) -> dict[str, Any]:
        return {
            "metrics": {
                "tls": {
                    "cert_file": str(self.cert),
                    "key_file": str(self.key),
                    "client_ca_file": str(self.scraper_cas),
                }
            }
        }


def make_metrics_pki(base: Path, name: str = "Metrics CA") -> MetricsPKI:
    authority.init_ca(base, common_name=name)
    cert, key = authority.issue_server(base, "localhost", ["IP:127.0.0.1"])
    scraper = authority.issue_client(base, "prometheus")
    scraper_cas = base / "scraper-cas.crt"
    scraper_cas.write_bytes((base / "ca.crt").read_bytes())
    return MetricsPKI(base, base / "ca.crt", cert, key, scraper, scraper_cas)


@pytest.fixture
def metrics_pki(tmp_path: Path) -> MetricsPKI:
    return make_metrics_pki(tmp_path / "metrics-pki")


def scrape(
    port: int, ca: Path, client: tuple[Path, Path] | None, path: str = "/metrics"
) -> tuple[int, str]:
    """GET over TLS as Prometheus' tls_config would: ca_file, cert_file, key_file."""
    ctx = ssl.create_default_context(cafile=str(ca))
    if client is not None:
        ctx.load_cert_chain(*client)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def refused(port: int, ca: Path, client: tuple[Path, Path] | None) -> bool:
    """True when the endpoint will not answer this client (TLS 1.3 may fail at the read)."""
    try:
        scrape(port, ca, client)
    except (ssl.SSLError, ConnectionError, http.client.HTTPException, OSError):
        return True
    return False


def assert_guarded(port: int, mp: MetricsPKI, pki: PKIFiles) -> None:
    status, body = scrape(port, mp.ca, mp.scraper)
    assert status == 200 and "pgtls_handshakes_total" in body
    assert scrape(port, mp.ca, mp.scraper, "/healthz")[0] == 200
    assert scrape(port, mp.ca, mp.scraper, "/readyz")[0] == 200
    assert refused(port, mp.ca, None), "no client certificate"
    # A certificate from the database clients' CA is no licence to scrape.
    assert refused(port, mp.ca, pki.client("alice"))
    # Plain HTTP gets nothing either.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        s.settimeout(5)
        assert b"pgtls_" not in s.recv(65536)
    # A client that connects and says nothing is cut off, and blocks no one.
    idle = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        assert scrape(port, mp.ca, mp.scraper)[0] == 200
    finally:
        idle.close()
    assert scrape(port, mp.ca, mp.scraper)[0] == 200, "failed handshakes do not disturb it"


def test_scrape_needs_a_client_certificate_from_the_metrics_ca(
    proxy_factory: ProxyFactory, pki: PKIFiles, metrics_pki: MetricsPKI, tmp_path: Path
) -> None:
    proxy = proxy_factory(metrics_pki.config())
    assert_guarded(proxy.metrics_port, metrics_pki, pki)
    assert current_user(pki, proxy.port) == "alice"
    # Reload: a new scraper CA takes over for new connections.
    other = make_metrics_pki(tmp_path / "other-metrics-pki", "Other Metrics CA")
    metrics_pki.scraper_cas.write_bytes(other.ca.read_bytes())
    assert proxy.reload()
    assert refused(proxy.metrics_port, metrics_pki.ca, metrics_pki.scraper)
    assert scrape(proxy.metrics_port, metrics_pki.ca, other.scraper)[0] == 200


def test_multi_worker_endpoint_is_guarded_too(
    daemon_factory: Any, pki: PKIFiles, metrics_pki: MetricsPKI, tmp_path: Path
) -> None:
    d = daemon_factory({**metrics_pki.config(), "workers": 2})
    d.wait_log(r"admin endpoint on https://")
    d.wait_log("all 2 workers ready")
    assert_guarded(d.metrics_port, metrics_pki, pki)
    assert current_user(pki, d.port) == "alice"
    # SIGHUP re-reads the endpoint's files in the supervisor too.
    other = make_metrics_pki(tmp_path / "other-metrics-pki", "Other Metrics CA")
    metrics_pki.scraper_cas.write_bytes(other.ca.read_bytes())
    d.signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while refused(d.metrics_port, metrics_pki.ca, other.scraper):
        assert time.monotonic() < deadline, "the new scraper CA never took over"
        time.sleep(0.1)
    assert refused(d.metrics_port, metrics_pki.ca, metrics_pki.scraper)
