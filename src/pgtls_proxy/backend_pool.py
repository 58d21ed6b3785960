"""Backend sessions kept for the next client with the same login (``backends.<name>.pool``).

Opening a backend session costs PostgreSQL a fork and a backend start, more
than the proxy's whole TLS handshake; PgBouncer's session pool skips it, and
so can we, per worker, when a backend's ``pool.size`` is above 0. A session
is kept only when its client said Terminate while the backend was idle, and
only after ``DISCARD ALL`` proved it reset (``wire.reuse``); it is reused only
for a client whose rules gave the same backend and whose StartupMessage to
the backend (user after mapping, database, every parameter, protocol
version) is identical, so the backend's login answer, replayed, is still
true. The next client still goes through the full TLS handshake, CRL check
and rules: only the backend's fork and login are saved.
"""

from __future__ import annotations

import logging
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import trio

from pgtls_proxy.config import BackendSettings
from pgtls_proxy.logsetup import LOGGER_NAME
from pgtls_proxy.metrics import Metrics
from pgtls_proxy.netio import ByteStream, StreamClosed, TLSStream
from pgtls_proxy.wire.codec import MessageReader
from pgtls_proxy.wire.errors import ProtocolError
from pgtls_proxy.wire.login import LoginResult
from pgtls_proxy.wire.messages import StartupMessage
from pgtls_proxy.wire.reuse import ResetCheck, merge_parameters, reset_request

_log = logging.getLogger(f"{LOGGER_NAME}.pool")

# How long the reset may take before the session is closed instead.
RESET_TIMEOUT = 2.0
SWEEP_INTERVAL = 1.0


@dataclass(frozen=True, slots=True)
class PoolKey:
    backend: BackendSettings
    startup: StartupMessage  # as sent to the backend, user already mapped


@dataclass(slots=True, eq=False)
class _Parked:
    stream: ByteStream
    login: LoginResult
    opened: float  # when the backend session logged in (time.monotonic)
    since: float = field(default_factory=time.monotonic)


def _alive(stream: ByteStream) -> bool:
    """Idle and open: the server has neither closed nor said anything since."""
    if isinstance(stream, TLSStream) and stream.ssl_object.pending():
        return False
    try:
        # The raw socket's recv, also under an SSLSocket: any byte (a TLS
        # alert, an ErrorResponse before a shutdown) or EOF means not reusable.
        socket.socket.recv(stream.sock, 1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except (BlockingIOError, InterruptedError):
        return True
    except OSError:
        return False
    return False


def _close_now(stream: ByteStream) -> None:
    sock = stream.sock
    if sock.fileno() != -1:
        trio.lowlevel.notify_closing(sock)
        sock.close()


class BackendPool:
    """Idle backend sessions of this worker, by login."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._idle: dict[PoolKey, list[_Parked]] = {}
        self._count: dict[str, int] = {}  # idle sessions per backend name
        self._resetting: dict[str, int] = {}  # slots taken by resets under way

    def idle(self, backend: str) -> int:
        return self._count.get(backend, 0)

    def _result(self, backend: str, result: str) -> None:
        self._metrics.backend_pool_results.labels(backend, result).inc()

    def _forget(self, key: PoolKey) -> None:
        name = key.backend.name
        self._count[name] -= 1
        self._metrics.backend_pool_idle.labels(name).dec()

    def take(self, key: PoolKey) -> tuple[ByteStream, LoginResult, float] | None:
        """A kept session for this login, most recently used first, or None.

        Returns the stream, the login answer to replay and when the backend
        session logged in (for :meth:`give_back`).
        """
        parked = self._idle.get(key)
        while parked:
            item = parked.pop()
            self._forget(key)
            if _alive(item.stream):
                self._result(key.backend.name, "reused")
                return item.stream, item.login, item.opened
            self._result(key.backend.name, "discarded")
            _close_now(item.stream)
        return None

    async def give_back(
        self, key: PoolKey, stream: ByteStream, login: LoginResult, opened: float
    ) -> bool:
        """Reset and keep ``stream``; False when it must be closed instead."""
        name = key.backend.name
        if time.monotonic() - opened >= key.backend.pool.max_lifetime:
            self._result(name, "discarded")
            return False
        # Sessions whose clients leave together reset at the same time: the
        # slot is taken before the reset, so together they keep pool.size.
        if self.idle(name) + self._resetting.get(name, 0) >= key.backend.pool.size:
            self._result(name, "discarded")
            return False
        self._resetting[name] = self._resetting.get(name, 0) + 1
        try:
            return await self._reset_and_keep(key, stream, login, opened)
        finally:
            self._resetting[name] -= 1

    async def _reset_and_keep(
        self, key: PoolKey, stream: ByteStream, login: LoginResult, opened: float
    ) -> bool:
        name = key.backend.name
        nonce = secrets.token_hex(16)
        check = ResetCheck(nonce)
        reader = MessageReader()
        verdict: bool | None = None
        with trio.move_on_after(RESET_TIMEOUT):
            try:
                await stream.send_all(reset_request(nonce))
                while verdict is None:
                    chunk = bytearray(16384)
                    got = await stream.recv_into(memoryview(chunk))
                    if not got:
                        raise StreamClosed("backend closed during the reset")
                    reader.feed(bytes(chunk[:got]))
                    while verdict is None and (message := reader.next_message()) is not None:
                        verdict = check.feed(*message)
            except (StreamClosed, OSError, ProtocolError):
                verdict = False
        if not verdict or reader.buffered() or not _alive(stream):
            self._result(name, "discarded")
            _log.debug("backend %s: session not kept (reset answer not as expected)", name)
            return False
        login = replace(login, to_client=merge_parameters(login.to_client, check.parameters))
        self._idle.setdefault(key, []).append(_Parked(stream, login, opened))
        self._count[name] = self._count.get(name, 0) + 1
        self._metrics.backend_pool_idle.labels(name).inc()
        self._result(name, "kept")
        return True

    def expire(
        self, now: float | None = None, current: Mapping[str, BackendSettings] | None = None
    ) -> int:
        """Close kept sessions that are done for.

        That is: idle longer than ``pool.idle_timeout``, older than
        ``pool.max_lifetime``, or, given the ``current`` backends after a
        reload, of a backend whose settings changed or went away.
        """
        now = time.monotonic() if now is None else now
        closed = 0
        for key, parked in list(self._idle.items()):
            pool = key.backend.pool
            stale = current is not None and current.get(key.backend.name) != key.backend
            keep = [
                item
                for item in parked
                if not stale
                and now - item.since < pool.idle_timeout
                and now - item.opened < pool.max_lifetime
            ]
            for item in parked:
                if item not in keep:
                    self._forget(key)
                    self._result(key.backend.name, "discarded")
                    _close_now(item.stream)
                    closed += 1
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        return closed

    def close_all(self) -> None:
        for key, parked in self._idle.items():
            for item in parked:
                self._forget(key)
                _close_now(item.stream)
        self._idle.clear()

    async def run(self, current: Callable[[], Mapping[str, BackendSettings]] | None = None) -> None:
        """Expire kept sessions until cancelled; then close every one.

        ``current`` returns the backends of the configuration in force.
        """
        try:
            while True:
                await trio.sleep(SWEEP_INTERVAL)
                self.expire(current=current() if current is not None else None)
        finally:
            self.close_all()
