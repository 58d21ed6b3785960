"""Listening sockets, for a single proxy, its workers and their supervisor.

A worker binds its listeners with ``SO_REUSEPORT`` so that the kernel
spreads connections over the workers; the supervisor only reserves each
port (bound, never listening) so that ``:0`` listeners get one concrete
port that every worker, and every restarted worker, binds again.
"""

from __future__ import annotations

import socket

import trio

from pgtls_proxy.config import HostPort, ListenSettings

_LISTEN_BACKLOG = 1024


def _bind(address: HostPort, *, reuse_port: bool) -> socket.socket:
    """A socket bound to ``address`` (IPv6 sockets accept IPv6 only)."""
    infos = socket.getaddrinfo(
        address.host or None, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, type_, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


def bind_listener(address: HostPort, *, reuse_port: bool = False) -> socket.socket:
    """A non-blocking listening socket (IPv6 sockets accept IPv6 only).

    ``reuse_port`` lets several worker processes bind the same address and
    have the kernel spread connections over them.
    """
    sock = _bind(address, reuse_port=reuse_port)
    try:
        sock.listen(_LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def reserve_port(address: HostPort) -> socket.socket:
    """Bind (without listening) to learn a concrete port for ``:0`` listeners.

    The socket joins no accept group because it never listens, so it holds
    the port for the workers without taking any of their connections.
    """
    return _bind(address, reuse_port=True)


class Listener:
    """One bound listening socket and the scope of its accept loop."""

    def __init__(self, settings: ListenSettings, sock: socket.socket) -> None:
        self.settings = settings
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self.scope = trio.CancelScope()

    def close(self) -> None:
        self.scope.cancel()
        if self.sock.fileno() != -1:
            trio.lowlevel.notify_closing(self.sock)
            self.sock.close()
