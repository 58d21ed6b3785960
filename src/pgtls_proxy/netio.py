"""Byte streams over non-blocking stdlib sockets, driven by trio's readiness waits.

Why not ``trio.SocketStream`` + ``trio.SSLStream``: the TLS session lives in an
``ssl.SSLSocket`` around the kernel socket, so OpenSSL reads and writes the
socket itself (no MemoryBIO copies, C-level ``recv_into``/``send``), and a
refused handshake's alert reaches the client because OpenSSL writes it before
we close. Every operation first tries the syscall and only waits for
readiness when the kernel says it would block; that keeps a busy relay from
bouncing through the scheduler on every chunk.

The rest of the proxy sees one small interface, :class:`ByteStream`.
"""

from __future__ import annotations

import errno
import socket
import ssl
from typing import Protocol

import trio

_WANT_READ = ssl.SSLWantReadError
_WANT_WRITE = ssl.SSLWantWriteError


class StreamClosed(Exception):
    """The peer closed or reset the connection."""


class ByteStream(Protocol):
    """What the session and the relay need from a connection."""

    @property
    def sock(self) -> socket.socket: ...

    async def recv_into(self, buf: memoryview) -> int: ...

    async def send_all(self, data: bytes | memoryview) -> None: ...

    async def aclose(self) -> None: ...


def configure_socket(sock: socket.socket) -> None:
    """Non-blocking, no Nagle: the PostgreSQL protocol is request/response."""
    sock.setblocking(False)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _close_socket(sock: socket.socket) -> None:
    if sock.fileno() != -1:
        trio.lowlevel.notify_closing(sock)
        sock.close()
    await trio.lowlevel.checkpoint()


class _Reads:
    """Exact-size reads on top of ``recv_into``, shared by both stream kinds."""

    __slots__ = ()

    async def recv_into(self, buf: memoryview) -> int:
        raise NotImplementedError

    async def recv_some(self, n: int) -> bytes:
        """Read between 1 and ``n`` bytes; StreamClosed at end of stream."""
        buf = bytearray(n)
        got = await self.recv_into(memoryview(buf))
        if got == 0:
            raise StreamClosed("peer closed the connection")
        return bytes(buf[:got])

    async def recv_exactly(self, n: int) -> bytes:
        """Read exactly ``n`` bytes (never more): the next bytes may be TLS."""
        out = bytearray()
        while len(out) < n:
            out += await self.recv_some(n - len(out))
        return bytes(out)


class PlainStream(_Reads):
    """A connected TCP socket."""

    __slots__ = ("_sock",)

    def __init__(self, sock: socket.socket) -> None:
        configure_socket(sock)
        self._sock = sock

    @property
    def sock(self) -> socket.socket:
        return self._sock

    async def recv_into(self, buf: memoryview) -> int:
        sock = self._sock
        while True:
            try:
                return sock.recv_into(buf)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
            except (ConnectionResetError, BrokenPipeError):
                return 0

    async def peek(self, n: int) -> bytes:
        """Wait for data and return up to ``n`` bytes without consuming them."""
        sock = self._sock
        while True:
            try:
                return sock.recv(n, socket.MSG_PEEK)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(sock)
            except (ConnectionResetError, BrokenPipeError):
                return b""

    def buffered(self) -> bool:
        """True when the kernel already holds unread bytes from the peer."""
        try:
            return bool(self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return False

    async def send_all(self, data: bytes | memoryview) -> None:
        sock = self._sock
        view = memoryview(data)
        while view:
            try:
                sent = sock.send(view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                continue
            except (ConnectionResetError, BrokenPipeError) as exc:
                raise StreamClosed(str(exc)) from None
            view = view[sent:]

    async def aclose(self) -> None:
        await _close_socket(self._sock)

    async def linger_close(self, timeout: float = 1.0) -> None:
        """Half-close, discard what the peer still sends, then close.

        Closing a socket with unread input makes the kernel send RST, which can
        destroy an error message or TLS alert the client has not read yet.
        """
        sock = self._sock
        if sock.fileno() == -1:
            return
        try:
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            await self.aclose()
            return
        buf = bytearray(4096)
        with trio.move_on_after(timeout):
            while True:
                try:
                    if sock.recv_into(buf) == 0:
                        break
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(sock)
                except OSError:
                    break
        await self.aclose()


class TLSStream(_Reads):
    """A TLS session on an ``ssl.SSLSocket`` in non-blocking mode."""

    __slots__ = ("_sock", "_ssl")

    def __init__(self, ssl_sock: ssl.SSLSocket) -> None:
        self._ssl = ssl_sock
        self._sock: socket.socket = ssl_sock

    @classmethod
    def wrap(
        cls,
        raw: socket.socket,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> TLSStream:
        """Wrap a connected socket; the caller runs :meth:`handshake` next."""
        ssl_sock = context.wrap_socket(
            raw,
            server_side=server_side,
            do_handshake_on_connect=False,
            suppress_ragged_eofs=True,
            server_hostname=server_hostname,
        )
        ssl_sock.setblocking(False)
        return cls(ssl_sock)

    @property
    def sock(self) -> socket.socket:
        return self._sock

    @property
    def ssl_object(self) -> ssl.SSLSocket:
        return self._ssl

    async def handshake(self) -> None:
        """Run the handshake; OpenSSL itself sends the alert when it fails."""
        s = self._ssl
        while True:
            try:
                s.do_handshake()
                return
            except _WANT_READ:
                await trio.lowlevel.wait_readable(s)
            except _WANT_WRITE:
                await trio.lowlevel.wait_writable(s)

    async def recv_into(self, buf: memoryview) -> int:
        s = self._ssl
        while True:
            try:
                return s.recv_into(buf)
            except _WANT_READ:
                await trio.lowlevel.wait_readable(s)
            except _WANT_WRITE:
                await trio.lowlevel.wait_writable(s)
            except ssl.SSLZeroReturnError:
                return 0
            except (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError):
                return 0
            except ssl.SSLError as exc:
                raise StreamClosed(f"TLS error: {exc.reason or exc}") from None

    async def send_all(self, data: bytes | memoryview) -> None:
        s = self._ssl
        view = memoryview(data)
        while view:
            try:
                sent = s.send(view)
            except _WANT_WRITE:
                await trio.lowlevel.wait_writable(s)
                continue
            except _WANT_READ:
                # Only a renegotiation makes a write need a read; renegotiation
                # is disabled, so yield briefly rather than contend with the
                # reading task for the socket.
                await trio.sleep(0.001)
                continue
            except (ssl.SSLError, ConnectionResetError, BrokenPipeError) as exc:
                raise StreamClosed(str(exc)) from None
            view = view[sent:]

    async def aclose(self) -> None:
        """Send close_notify (without waiting for the peer's), then close."""
        s = self._ssl
        if s.fileno() != -1:
            try:
                s.unwrap()
            except (ssl.SSLError, OSError, ValueError):
                pass
        await _close_socket(s)

    async def linger_close(self, timeout: float = 1.0) -> None:
        """close_notify, half-close, drain, close: the peer reads all we sent."""
        s = self._ssl
        if s.fileno() == -1:
            return
        try:
            s.unwrap()
        except (ssl.SSLError, OSError, ValueError):
            pass
        raw = socket.socket(fileno=s.detach()) if s.fileno() != -1 else None
        if raw is None:
            return
        await PlainStream(raw).linger_close(timeout)


async def connect_tcp(host: str, port: int) -> PlainStream:
    """Open a TCP connection, trying each resolved address in turn."""
    infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    last: OSError | None = None
    for family, type_, proto, _canon, addr in infos:
        sock = socket.socket(family, type_, proto)
        sock.setblocking(False)
        try:
            err = sock.connect_ex(addr)
            if err in (errno.EINPROGRESS, errno.EAGAIN):
                await trio.lowlevel.wait_writable(sock)
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, errno.errorcode.get(err, str(err)))
        except BaseException as exc:
            trio.lowlevel.notify_closing(sock)
            sock.close()
            if isinstance(exc, OSError):
                last = exc
                continue
            raise
        return PlainStream(sock)
    raise last or OSError(f"no address for {host}")
