"""The contexts the product builds keep no TLS sessions and resume none.

Loopback handshakes in threads, no PostgreSQL: the server side uses the
contexts exactly as ``runtime.build_state`` makes them, the client side is a
plain ``ssl`` client that offers the previous session back every time. A
cached session costs about 11 KB for as long as the context lives (memory
that never comes back, issue 11), and a resumed one would skip the check of
the client's certificate against the CRLs.
"""

from __future__ import annotations

import socket
import ssl
import threading

import pytest

from pgtls_proxy.config import BackendTLSSettings, TLSSettings
from pgtls_proxy.pki import contexts
from tests.fixtures.pki import PKIFiles

HANDSHAKES = 20
_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def tls_settings(pki: PKIFiles) -> TLSSettings:
    return TLSSettings(
        cert_file=pki.server_cert,
        key_file=pki.server_key,
        client_ca_file=pki.ca,
        crl_files=(pki.crl,),
    )


def client_context(pki: PKIFiles, version: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.minimum_version = ctx.maximum_version = _VERSIONS[version]
    crt, key = pki.client("alice")
    ctx.load_cert_chain(crt, key)
    ctx.set_alpn_protocols(["postgresql"])
    return ctx


def serve(
    server_ctx: ssl.SSLContext, count: int, established: ssl.SSLContext | None = None
) -> tuple[int, threading.Thread]:
    """Accept ``count`` TLS connections; each sends one byte and waits for one."""
    listener = socket.create_server(("127.0.0.1", 0))

    def run() -> None:
        with listener:
            for _ in range(count):
                raw, _ = listener.accept()
                with server_ctx.wrap_socket(raw, server_side=True) as tls:
                    if established is not None:
                        tls.context = established  # as pki.peer.release does
                    tls.sendall(b"x")
                    tls.recv(1)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return int(listener.getsockname()[1]), thread


def handshakes(port: int, ctx: ssl.SSLContext, count: int) -> int:
    """Connect ``count`` times offering the last session back; how many resumed."""
    session: ssl.SSLSession | None = None
    resumed = 0
    for _ in range(count):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with ctx.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
            assert tls.recv(1) == b"x"  # TLS 1.3 tickets arrive after the handshake
            resumed += tls.session_reused
            session = tls.session
            tls.sendall(b"y")
    return resumed


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_the_client_facing_context_caches_no_session_and_resumes_none(
    pki: PKIFiles, version: str
) -> None:
    tls = tls_settings(pki)
    server_ctx = contexts.server_context(tls)
    port, thread = serve(server_ctx, HANDSHAKES, contexts.established_context(tls))
    resumed = handshakes(port, client_context(pki, version), HANDSHAKES)
    thread.join(10)
    stats = server_ctx.session_stats()
    assert stats["accept_good"] == HANDSHAKES
    assert stats["number"] == 0, stats  # nothing stored
    assert stats["hits"] == 0 and resumed == 0  # nothing resumed


def test_each_setting_alone_is_not_enough(pki: PKIFiles) -> None:
    """Why ``disable_resumption`` sets both: measured, so an OpenSSL that changes shows here.

    ``OP_NO_TICKET`` alone fills the cache under TLS 1.3; ``num_tickets = 0``
    alone lets TLS 1.2 clients resume with stateless tickets.
    """
    tls = tls_settings(pki)
    no_ticket = contexts.server_context(tls)
    no_ticket.num_tickets = 2  # OpenSSL's default
    port, thread = serve(no_ticket, HANDSHAKES)
    handshakes(port, client_context(pki, "1.3"), HANDSHAKES)
    thread.join(10)
    assert no_ticket.session_stats()["number"] == HANDSHAKES

    zero_tickets = contexts.server_context(tls)
    zero_tickets.options &= ~ssl.OP_NO_TICKET
    port, thread = serve(zero_tickets, HANDSHAKES)
    assert handshakes(port, client_context(pki, "1.2"), HANDSHAKES) == HANDSHAKES - 1
    thread.join(10)


def test_the_backend_context_keeps_no_session(pki: PKIFiles) -> None:
    """The proxy as a TLS client of a backend: OpenSSL caches client sessions only
    on request, and the proxy never offers one back."""
    backend_server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    backend_server.load_cert_chain(pki.server_cert, pki.server_key)
    backend_server.set_alpn_protocols(["postgresql"])
    port, thread = serve(backend_server, HANDSHAKES)
    ctx = contexts.backend_context(
        BackendTLSSettings(mode="verify-full", ca_file=pki.ca), "backends.main.tls"
    )
    for _ in range(HANDSHAKES):
        raw = socket.create_connection(("127.0.0.1", port), timeout=10)
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            assert tls.recv(1) == b"x"
            tls.sendall(b"y")
    thread.join(10)
    assert ctx.session_stats()["number"] == 0
    assert backend_server.session_stats()["hits"] == 0
