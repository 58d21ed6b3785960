"""Metrics over HTTP, health endpoints and the audit record, from real traffic."""

from __future__ import annotations

import hashlib
import io
import time
import urllib.error
import urllib.request

import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from prometheus_client.parser import text_string_to_metric_families

from pgtls_proxy import metrics as m
from tests.fixtures.clients import connect, conninfo
from tests.fixtures.logs import audit_records
from tests.fixtures.pki import PKIFiles
from tests.fixtures.proxy import ProxyFactory, RunningProxy


def http_get(port: int, path: str, accept: str | None = None) -> tuple[int, str, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if accept:
        req.add_header("Accept", accept)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def scrape(proxy: RunningProxy) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, _, body = http_get(proxy.metrics_port, "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_every_spec_series_is_exported_at_zero(proxy: RunningProxy) -> None:
    samples = scrape(proxy)
    for result in m.HANDSHAKE_RESULTS:
        assert value(samples, "pgtls_handshakes_total", result=result) == 0
    for outcome in m.SESSION_OUTCOMES:
        assert value(samples, "pgtls_sessions_total", outcome=outcome) == 0
    for reason in m.DENIAL_REASONS:
        assert value(samples, "pgtls_auth_denied_total", reason=reason) == 0
    for direction in m.DIRECTIONS:
        assert value(samples, "pgtls_bytes_total", direction=direction) == 0
    for result in m.CANCEL_RESULTS:
        assert value(samples, "pgtls_cancel_requests_total", result=result) == 0
    for result in m.RELOAD_RESULTS:
        assert value(samples, "pgtls_config_reloads_total", result=result) == 0
    for negotiation in m.NEGOTIATIONS:
        assert (
            value(samples, "pgtls_handshake_duration_seconds_count", negotiation=negotiation) == 0
        )
    assert value(samples, "pgtls_sessions_active", backend="main") == 0
    assert value(samples, "pgtls_backend_connect_errors_total", backend="main") == 0
    assert value(samples, "pgtls_client_cert_expiry_seconds_count") == 0
    assert value(samples, "pgtls_server_cert_expiry_timestamp_seconds") > 0
    issuers = [k for k in samples if k[0] == "pgtls_crl_next_update_timestamp_seconds"]
    assert issuers and dict(issuers[0][1])["issuer"] == "CN=pgtls-proxy CA"
    assert any(k[0] == "pgtls_build_info" for k in samples)


def test_counters_move_by_exactly_the_traffic(proxy: RunningProxy, pki: PKIFiles) -> None:
    with connect(pki, proxy.port, "alice") as conn:
        conn.execute("select 1")
        during = scrape(proxy)
    assert value(during, "pgtls_sessions_active", backend="main") == 1
    with pytest.raises(psycopg.OperationalError):
        connect(pki, proxy.port, "carol")  # reject rule
    params = conninfo(pki, proxy.port, "alice", sslcert="/none.crt", sslkey="/none.key")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(**params)  # no certificate
    proxy.wait_sample("pgtls_sessions_total", {"outcome": "client_error"}, 1)
    after = scrape(proxy)
    assert value(after, "pgtls_handshakes_total", result="ok") == 2
    assert value(after, "pgtls_handshakes_total", result="no_certificate") == 1
    assert sum(value(after, "pgtls_handshakes_total", result=r) for r in m.HANDSHAKE_RESULTS) == 3
    assert value(after, "pgtls_sessions_total", outcome="completed") == 1
    assert value(after, "pgtls_sessions_total", outcome="denied") == 1
    assert value(after, "pgtls_sessions_total", outcome="client_error") == 1
    assert value(after, "pgtls_auth_denied_total", reason="reject_rule") == 1
    assert value(after, "pgtls_handshake_duration_seconds_count", negotiation="sslrequest") == 2
    assert value(after, "pgtls_client_cert_expiry_seconds_count") == 2
    assert value(after, "pgtls_sessions_active", backend="main") == 0
    assert value(after, "pgtls_bytes_total", direction="client_to_backend") > 0
    assert value(after, "pgtls_bytes_total", direction="backend_to_client") > 0


def test_openmetrics_on_request(proxy: RunningProxy) -> None:
    status, ctype, body = http_get(
        proxy.metrics_port, "/metrics", accept="application/openmetrics-text; version=1.0.0"
    )
    assert status == 200
    assert ctype.startswith("application/openmetrics-text")
    assert body.rstrip().endswith("# EOF")


def test_health_and_readiness(proxy: RunningProxy, pki: PKIFiles) -> None:
    assert http_get(proxy.metrics_port, "/healthz")[0] == 200
    assert http_get(proxy.metrics_port, "/readyz")[0] == 200
    assert http_get(proxy.metrics_port, "/nope")[0] == 404
    conn = connect(pki, proxy.port, "alice")  # keeps the drain waiting
    try:
        proxy.call(proxy.proxy.request_stop)
        assert http_get(proxy.metrics_port, "/readyz")[0] == 503
        assert http_get(proxy.metrics_port, "/healthz")[0] == 200
        assert conn.execute("select 1").fetchone() == (1,), "draining keeps sessions"
    finally:
        conn.close()


REFERENCE_FIELDS = (
    "event",
    "client_addr",
    "identity",
    "cert_serial",
    "cert_fingerprint_sha256",
    "user",
    "database",
    "backend",
    "outcome",
    "duration_s",
    "bytes_in",
    "bytes_out",
)


def test_audit_records(proxy_factory: ProxyFactory, pki: PKIFiles, json_log: io.StringIO) -> None:
    proxy = proxy_factory()
    cert = x509.load_pem_x509_certificate(pki.client("alice")[0].read_bytes())
    with connect(pki, proxy.port, "alice") as conn:
        conn.execute("select 1")
    # Records are written as sessions end: let this one end before the next starts.
    proxy.wait_sample("pgtls_sessions_total", {"outcome": "completed"}, 1)
    with pytest.raises(psycopg.OperationalError):
        connect(pki, proxy.port, "alice", user="bob")
    proxy.wait_sample("pgtls_sessions_total", {"outcome": "denied"}, 1)
    params = conninfo(pki, proxy.port, "alice", sslcert="/none.crt", sslkey="/none.key")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(**params)
    deadline = time.monotonic() + 5  # the counter moves just before the record is written
    while len(audit_records(json_log)) < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    records = audit_records(json_log)
    assert [r["outcome"] for r in records] == ["completed", "denied", "client_error"]
    for record in records:
        for key in REFERENCE_FIELDS:
            assert key in record, key
        assert not any(isinstance(v, dict | list) for v in record.values()), "flat"
        assert str(record["client_addr"]).startswith("127.0.0.1:")
    good, denied, tls_failure = records
    assert good["identity"] == "alice" and good["user"] == "alice"
    assert good["database"] == "postgres" and good["backend"] == "main"
    assert good["cert_serial"] == format(cert.serial_number, "x")
    assert (
        good["cert_fingerprint_sha256"]
        == hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
    )
    assert int(good["bytes_in"]) > 0 and int(good["bytes_out"]) > 0  # type: ignore[call-overload]
    assert float(good["duration_s"]) > 0  # type: ignore[arg-type]
    assert "error" not in good
    assert denied["user"] == "bob", "no mapped user was decided: the requested one"
    assert denied["error"] == "user_mismatch"
    assert tls_failure["error"] == "no_certificate"
    assert tls_failure["identity"] is None


def test_readyz_is_503_until_listeners_are_bound(
    pki: PKIFiles, pg_cluster: object, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    """The readiness the admin endpoint serves is false before run() binds."""
    import yaml

    from pgtls_proxy.admin import render
    from pgtls_proxy.config import load_config
    from pgtls_proxy.server import Proxy
    from tests.fixtures.proxy import base_config

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(base_config(pki, pg_cluster.port)))  # type: ignore[attr-defined]
    proxy = Proxy(load_config(path))
    reply = render("/readyz", "", proxy.metrics.registry, proxy.is_ready)
    assert reply.startswith(b"HTTP/1.1 503")
    proxy.rt.ready = True
    assert render("/readyz", "", proxy.metrics.registry, proxy.is_ready).startswith(b"HTTP/1.1 200")
    proxy.request_stop()
    assert render("/readyz", "", proxy.metrics.registry, proxy.is_ready).startswith(b"HTTP/1.1 503")
