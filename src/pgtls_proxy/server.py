"""Listeners, the connection nursery, reload, drain and systemd notification.

Tests start :meth:`Proxy.run` with ``nursery.start`` on port 0 and read the
bound ports from the started value, as trio's ``serve_tcp`` does.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import trio

from pgtls_proxy.admin import serve_admin
from pgtls_proxy.config import Config, ConfigError, HostPort, load_config
from pgtls_proxy.logsetup import LOGGER_NAME
from pgtls_proxy.metrics import Metrics
from pgtls_proxy.pki.contexts import TLSConfigError
from pgtls_proxy.runtime import Runtime, build_state
from pgtls_proxy.session import Session

_log = logging.getLogger(f"{LOGGER_NAME}.server")
_LISTEN_BACKLOG = 1024


def sd_notify(message: str) -> None:
    """Send a systemd notification datagram when NOTIFY_SOCKET is set."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(path)
            s.sendall(message.encode())
    except OSError as exc:
        _log.warning("P: cannot notify systemd: %s", exc)


def bind_listener(address: HostPort) -> socket.socket:
    """A non-blocking listening socket (IPv6 sockets accept IPv6 only)."""
    infos = socket.getaddrinfo(
        address.host or None, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, type_, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, type_, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(_LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


@dataclass(frozen=True, slots=True)
class Bound:
    """What a started proxy reports: its listener and admin ports."""

    ports: tuple[int, ...]
    metrics_port: int | None


class Proxy:
    """A running proxy: state, listeners, sessions."""

    def __init__(self, config: Config, metrics: Metrics | None = None) -> None:
        self.metrics = metrics or Metrics()
        self.rt = Runtime(state=build_state(config), metrics=self.metrics)
        self.rt.install(self.rt.state)
        self._stop = trio.Event()
        self._sessions_done = trio.Event()
        self._session_count = 0
        self._listeners: list[socket.socket] = []
        self.on_reload: list[Callable[[], None]] = []
        self._sessions_scope: trio.CancelScope | None = None

    @property
    def config(self) -> Config:
        return self.rt.config

    # ------------------------------------------------------------ control

    def request_stop(self) -> None:
        """Begin the drain (safe to call from a signal handler task)."""
        self.rt.draining = True
        self._stop.set()

    def reload(self) -> bool:
        """Re-read the config and every file; keep the old state on failure."""
        source = self.rt.config.source
        try:
            if source is None:
                raise ConfigError("", "no config file to reload from")
            new = build_state(load_config(source))
        except (ConfigError, TLSConfigError, OSError, ValueError) as exc:
            self.metrics.reload_by_result["failed"].inc()
            _log.error("P: reload failed, keeping the running configuration: %s", exc)
            return False
        self.rt.install(new)
        self.metrics.reload_by_result["ok"].inc()
        _log.info("P: configuration reloaded from %s", source)
        for callback in self.on_reload:
            callback()
        return True

    # ------------------------------------------------------------ serving

    async def run(self, *, task_status: trio.TaskStatus[Bound] = trio.TASK_STATUS_IGNORED) -> None:
        cfg = self.config
        self._listeners = [bind_listener(item.address) for item in cfg.listen]
        ports = tuple(s.getsockname()[1] for s in self._listeners)
        for item, port in zip(cfg.listen, ports, strict=True):
            _log.info("P: listening on %s", HostPort(item.address.host, port))
        try:
            async with trio.open_nursery() as outer:
                metrics_port = None
                if cfg.metrics.address is not None:
                    metrics_port = await outer.start(
                        serve_admin,
                        cfg.metrics.address.host,
                        cfg.metrics.address.port,
                        self.metrics.registry,
                        lambda: self.rt.ready and not self.rt.draining,
                    )
                async with trio.open_nursery() as sessions:
                    self._sessions_scope = sessions.cancel_scope
                    accept_scope = trio.CancelScope()

                    async def accept_all() -> None:
                        with accept_scope:
                            async with trio.open_nursery() as acceptors:
                                for lsock in self._listeners:
                                    acceptors.start_soon(self._accept_loop, lsock, sessions)

                    sessions.start_soon(accept_all)
                    if threading_is_main():
                        outer.start_soon(self._signals)
                    self.rt.ready = True
                    sd_notify("READY=1")
                    task_status.started(Bound(ports, metrics_port))
                    await self._stop.wait()
                    sd_notify("STOPPING=1")
                    _log.info(
                        "P: draining %d session(s) for up to %gs",
                        self._session_count,
                        cfg.shutdown.drain_timeout,
                    )
                    accept_scope.cancel()
                    self._close_listeners()
                    with trio.move_on_after(self.rt.config.shutdown.drain_timeout):
                        while self._session_count:
                            await self._sessions_done.wait()
                            self._sessions_done = trio.Event()
                    if self._session_count:
                        _log.info("P: closing %d session(s) at drain timeout", self._session_count)
                    sessions.cancel_scope.cancel()
                outer.cancel_scope.cancel()
        finally:
            self._close_listeners()
        _log.info("P: stopped")

    def _close_listeners(self) -> None:
        for lsock in self._listeners:
            if lsock.fileno() != -1:
                trio.lowlevel.notify_closing(lsock)
                lsock.close()

    async def _accept_loop(self, lsock: socket.socket, sessions: trio.Nursery) -> None:
        while True:
            try:
                sock, peer = lsock.accept()
            except BlockingIOError:
                await trio.lowlevel.wait_readable(lsock)
                continue
            except OSError as exc:
                if lsock.fileno() == -1:
                    return
                # EMFILE and friends: back off instead of spinning.
                _log.error("P: accept failed: %s", exc)
                await trio.sleep(0.1)
                continue
            hard_cap = 2 * self.rt.config.limits.max_connections + 100
            if self.rt.connections >= hard_cap:
                sock.close()
                continue
            sessions.start_soon(self._serve_one, sock, peer)

    async def _serve_one(self, sock: socket.socket, peer: object) -> None:
        self.rt.connections += 1
        self._session_count += 1
        try:
            await Session(self.rt, sock, peer).run()
        finally:
            self.rt.connections -= 1
            self._session_count -= 1
            self._sessions_done.set()

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    sd_notify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}")
                    self.reload()
                    sd_notify("READY=1")
                elif self.rt.draining:
                    _log.info("P: second stop signal, closing every session now")
                    if self._sessions_scope is not None:
                        self._sessions_scope.cancel()
                else:
                    _log.info("P: %s received, draining", signal.Signals(signum).name)
                    self.request_stop()


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
