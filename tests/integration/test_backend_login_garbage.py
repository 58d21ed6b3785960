"""A backend that answers the login with what no PostgreSQL sends, end to end.

The fuzzer (fuzz/fuzz_login.py) found that an ErrorResponse whose SQLSTATE is
not five digits or capitals made the session fail with an internal error: the
client got no message at all. Here a scripted backend sends such errors and
the client must get a FATAL 08006 with the backend's message, after which the
proxy serves the next client as usual.
"""

from __future__ import annotations

import psycopg
import pytest

from tests.fixtures.clients import (
    SSL_REQUEST,
    client_tls_context,
    connect,
    parse_error,
    raw_socket,
    recv_all,
    startup_packet,
)
from tests.fixtures.fake_backend import FakeBackendFactory, message
from tests.fixtures.pki import PKIFiles
from tests.fixtures.proxy import ProxyFactory


def error_with_code(code: bytes) -> bytes:
    return message(b"E", b"SFATAL\0C" + code + b"\0Mthe backend says no\0\0")


def startup_error(port: int, pki: PKIFiles) -> dict[str, str]:
    """The ErrorResponse fields a raw mTLS client gets."""
    with raw_socket(port) as s:
        s.sendall(SSL_REQUEST)
        assert s.recv(1) == b"S"
        tls = client_tls_context(pki).wrap_socket(s, server_hostname="localhost")
        tls.sendall(startup_packet("alice", "app"))
        return parse_error(recv_all(tls))


@pytest.mark.parametrize("code", [b"", b"XX", b"28p01", b"\x1b[31m!", b"123456"])
def test_a_backend_error_with_a_malformed_sqlstate_reaches_the_client(
    proxy_factory: ProxyFactory,
    fake_backend_factory: FakeBackendFactory,
    pki: PKIFiles,
    code: bytes,
) -> None:
    backend = fake_backend_factory(login_replies=[error_with_code(code)])
    proxy = proxy_factory({"backends": {"main": {"address": f"127.0.0.1:{backend.port}"}}})
    fields = startup_error(proxy.port, pki)
    assert (fields["S"], fields["C"]) == ("FATAL", "08006")
    assert "the backend says no" in fields["M"]
    # Counted as the backend's refusal, not as an internal error of the session.
    assert proxy.wait_sample("pgtls_sessions_total", {"outcome": "backend_error"}, 1) == 1
    with connect(pki, proxy.port, "alice") as conn:  # the next client gets in
        assert conn.info.status == psycopg.pq.ConnStatus.OK
        assert conn.info.parameter_status("server_version") == "18.0"
