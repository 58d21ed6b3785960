"""Reaching a backend: TCP (and TLS per ``backends.<name>.tls``), then the login.

The login itself is the sans-I/O generator in :mod:`pgtls_proxy.wire.login`;
this module only moves its bytes.
"""

from __future__ import annotations

import ipaddress
import ssl

import trio

from pgtls_proxy.config import BackendSettings
from pgtls_proxy.netio import ByteStream, PlainStream, StreamClosed, TLSStream, connect_tcp
from pgtls_proxy.wire import codec
from pgtls_proxy.wire.errors import ProtocolError
from pgtls_proxy.wire.login import Authenticator, BackendLoginError, LoginResult, login
from pgtls_proxy.wire.messages import SSL_REQUEST_CODE, StartupMessage

_SSL_REQUEST = (8).to_bytes(4, "big") + SSL_REQUEST_CODE.to_bytes(4, "big")


class BackendUnavailable(Exception):
    """The backend could not be reached or its TLS could not be set up."""


async def open_backend(backend: BackendSettings, context: ssl.SSLContext | None) -> ByteStream:
    """Connect within ``connect_timeout``; negotiate TLS when configured."""
    addr = backend.address
    try:
        with trio.fail_after(backend.connect_timeout):
            plain = await connect_tcp(addr.host, addr.port)
            if context is None or backend.tls.mode == "disable":
                return plain
            try:
                return await _start_tls(backend, plain, context)
            except BaseException:
                await plain.aclose()
                raise
    except trio.TooSlowError:
        raise BackendUnavailable(
            f"timed out after {backend.connect_timeout:g}s connecting to {addr}"
        ) from None
    except OSError as exc:
        raise BackendUnavailable(f"cannot connect to {addr}: {exc.strerror or exc}") from None


async def _start_tls(
    backend: BackendSettings, plain: PlainStream, context: ssl.SSLContext
) -> TLSStream:
    """SSLRequest, expect ``S`` and nothing else, then the TLS handshake."""
    await plain.send_all(_SSL_REQUEST)
    answer = await plain.recv_exactly(1)
    if answer == b"N":
        raise BackendUnavailable(
            f"server at {backend.address} does not accept TLS "
            f"(it answered N to SSLRequest) and tls.mode is {backend.tls.mode}"
        )
    if answer != b"S":
        raise BackendUnavailable(
            f"server at {backend.address} sent {answer!r} instead of S or N to SSLRequest"
        )
    if plain.buffered():
        # CVE-2021-23222 class: bytes the server sent before the handshake
        # could be injected by a man in the middle; never read them.
        raise BackendUnavailable(
            f"server at {backend.address} sent unencrypted data after its SSL answer"
        )
    server_name = backend.tls.server_name or backend.address.host
    tls = TLSStream.wrap(
        plain.sock,
        context,
        server_side=False,
        server_hostname=server_name if context.check_hostname or _is_name(server_name) else None,
    )
    try:
        await tls.handshake()
    except ssl.SSLCertVerificationError as exc:
        # OpenSSL's words alone ("self-signed certificate in certificate
        # chain") do not say which setting to look at.
        raise BackendUnavailable(
            f"TLS to {backend.address} failed: server certificate not accepted "
            f"(tls.mode {backend.tls.mode}): {exc.verify_message}"
        ) from None
    except (ssl.SSLError, OSError) as exc:
        raise BackendUnavailable(f"TLS to {backend.address} failed: {exc}") from None
    return tls


def _is_name(host: str) -> bool:
    """SNI carries host names only, never IP literals (RFC 6066, section 3)."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return True
    return False


async def run_login(
    stream: ByteStream,
    startup: StartupMessage,
    authenticator: Authenticator | None,
    describe: str,
) -> tuple[LoginResult, bytes]:
    """Drive the login generator; return its result and any bytes read past it."""
    gen = login(startup, authenticator, describe=describe)
    reader = codec.MessageReader()
    buf = bytearray(16384)
    view = memoryview(buf)
    try:
        out = next(gen)
        while True:
            if out:
                await stream.send_all(out)
            message = reader.next_message()
            while message is None:
                n = await stream.recv_into(view)
                if n == 0:
                    raise BackendLoginError(
                        "08006", f"{describe} closed the connection during login"
                    )
                reader.feed(bytes(view[:n]))
                message = reader.next_message()
            out = gen.send(message)
    except StopIteration as stop:
        result: LoginResult = stop.value
        return result, reader.buffered()
    except ProtocolError as exc:
        raise BackendLoginError("08P01", f"{describe} broke the protocol: {exc}") from None
    except StreamClosed as exc:
        raise BackendLoginError("08006", f"{describe} closed the connection: {exc}") from None
