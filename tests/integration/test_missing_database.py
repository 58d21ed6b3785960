"""A client's own bad request refused by the backend is not a backend connect error."""

from __future__ import annotations

import struct

import psycopg
import pytest

from tests.fixtures.clients import (
    SSL_REQUEST,
    client_tls_context,
    connect,
    current_user,
    parse_error,
    raw_socket,
    recv_all,
)
from tests.fixtures.logs import audit_records, captured_log
from tests.fixtures.pki import PKIFiles
from tests.fixtures.proxy import ProxyFactory


def _refusal(port: int, pki: PKIFiles, user: str, database: str, **params: str) -> dict[str, str]:
    """The ErrorResponse fields a raw mTLS client gets for this StartupMessage."""
    body = struct.pack("!I", 196608)
    for k, v in {"user": user, "database": database, **params}.items():
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    with raw_socket(port) as s:
        s.sendall(SSL_REQUEST)
        assert s.recv(1) == b"S"
        tls = client_tls_context(pki).wrap_socket(s, server_hostname="localhost")
        tls.sendall(struct.pack("!I", len(body) + 4) + body)
        return parse_error(recv_all(tls))


def test_missing_database_is_the_clients_error_not_the_backends(
    proxy_factory: ProxyFactory, pki: PKIFiles
) -> None:
    proxy = proxy_factory()
    with captured_log("info", "json") as log:
        error = _refusal(proxy.port, pki, "alice", "no_such_db")
        assert error["S"] == "FATAL" and error["C"] == "3D000"
        assert 'database "no_such_db" does not exist' in error["M"]
        with pytest.raises(psycopg.OperationalError, match="no_such_db"):
            connect(pki, proxy.port, "alice", dbname="no_such_db")
        proxy.wait_sample("pgtls_sessions_total", {"outcome": "startup_error"}, 2)
        assert proxy.sample("pgtls_backend_connect_errors_total", {"backend": "main"}) == 0
        assert proxy.sample("pgtls_sessions_total", {"outcome": "backend_error"}) == 0
        # Startup options the backend refuses are the client's doing too.
        error = _refusal(proxy.port, pki, "alice", "postgres", options="-c no_such_setting=1")
        assert error["C"] == "42704"
        error = _refusal(proxy.port, pki, "alice", "postgres", options="-c work_mem=-5")
        assert error["C"] == "22023"
        proxy.wait_sample("pgtls_sessions_total", {"outcome": "startup_error"}, 4)
        assert proxy.sample("pgtls_backend_connect_errors_total", {"backend": "main"}) == 0
        assert current_user(pki, proxy.port) == "alice"
    records = [r for r in audit_records(log) if r.get("database") == "no_such_db"]
    assert len(records) == 2
    for record in records:
        assert record["outcome"] == "startup_error"
        assert 'database "no_such_db" does not exist' in str(record["error"])


def test_a_refused_proxy_login_is_still_a_backend_error(
    proxy_factory: ProxyFactory, pki: PKIFiles
) -> None:
    """A role the operator mapped but the backend lacks: that one must alert."""
    proxy = proxy_factory({"rules": [{"identity": "alice", "user": "no_such_role"}]})
    error = _refusal(proxy.port, pki, "no_such_role", "postgres")
    assert error["C"] == "28000" and 'role "no_such_role" does not exist' in error["M"]
    proxy.wait_sample("pgtls_backend_connect_errors_total", {"backend": "main"}, 1)
    assert proxy.wait_sample("pgtls_sessions_total", {"outcome": "backend_error"}, 1) == 1
