"""The steady state: copy bytes both ways until either side closes.

The bytes pass through as they come, never parsed into messages, with one
exception: when the backend session may be kept for reuse, the client's bytes
are framed by :class:`~pgtls_proxy.wire.reuse.TerminateWatch` so that a final
Terminate is held back (``RelayResult.terminated``).

Why not two trio tasks per session, each looping over
``recv``/``send``: every wait for readiness then costs a task switch and an
``epoll_ctl`` in trio's scheduler, and every optimistic read that finds
nothing raises an exception; together that was about half of the relay's
CPU per round trip (docs/benchmarks.md). Instead each trio run (each
worker) has one :class:`RelayEngine`: its own epoll set in which relayed
sockets stay registered, level-triggered, for the life of the relay, and one
thread that sleeps in ``epoll_wait`` and moves the bytes of every ready
socket in a plain loop. Under load one wake-up serves many sessions; a
socket is read only when the kernel says it has data (or OpenSSL holds
some), so no read is wasted. The thread holds the GIL only while it moves
bytes (OpenSSL and the socket calls release it), and it never goes through
trio's scheduler: driving the same loop from a trio task cost a third more
CPU per round trip.

Trio's side adds a session (:meth:`RelayEngine.add_session`) and waits on
its event; everything the two threads share is guarded by one lock, held by
the engine thread only while it handles a batch of events.

Reads go into one buffer shared by all sessions of the engine and are sent
on at once; only what a full socket would not take is copied aside, and the
source of that direction is paused until the destination drains. An idle
session therefore holds no buffer at all.

The session task waits on that event and may be cancelled at any time
(drain, shutdown); cancellation takes both sockets out of the engine.

Names: :func:`relay_session` is what a session calls; it hands the session to
this trio run's :class:`RelayEngine` (:func:`engine`), which keeps a
:class:`_RelayedSession` of two :class:`_Pipe` directions, one per
:class:`Side` that a socket can be the source of.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import trio

from pgtls_proxy.logsetup import LOGGER_NAME
from pgtls_proxy.netio import ByteStream
from pgtls_proxy.wire.reuse import TerminateWatch

log = logging.getLogger(f"{LOGGER_NAME}.relay")

# One TLS record carries at most 16 KiB of plaintext, so reads from a TLS
# peer never need more; plain reads (COPY out of PostgreSQL) take up to 64 KiB.
TLS_READ = 16384
MAX_READ = 65536
# How often the byte counters of running sessions are brought up to date.
# Counting every chunk cost two getpid() calls and two mmap writes per round
# trip in prometheus-client's multi-process mode.
COUNTER_INTERVAL = 1.0
# Events handled per wake-up, so a session added meanwhile waits briefly.
_BATCH = 64

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_ERR = select.EPOLLERR | select.EPOLLHUP

_WOULD_BLOCK = (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError, InterruptedError)
_CLOSED = (
    ssl.SSLZeroReturnError,
    ssl.SSLEOFError,
    ConnectionResetError,
    BrokenPipeError,
    ConnectionAbortedError,
)


class Side(StrEnum):
    """The two ends of a relayed session; ``RelayResult.ended_by`` names one."""

    CLIENT = "client"
    BACKEND = "backend"

    @property
    def other(self) -> Side:
        return Side.BACKEND if self is Side.CLIENT else Side.CLIENT


class _Counter(Protocol):
    """What the relay needs of a prometheus counter child."""

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None: ...


@dataclass(slots=True)
class RelayResult:
    bytes_in: int = 0  # client -> backend
    bytes_out: int = 0  # backend -> client
    ended_by: str = ""  # a Side, or "" when the proxy ended the relay
    error: str = ""  # why, when a socket failed rather than closed
    # The client ended with Terminate at a message boundary, which was not
    # passed on: the backend session is idle and open (see backend_pool).
    terminated: bool = False


@dataclass(slots=True, eq=False)
class _Pipe:
    """One direction: bytes read from ``src`` are written to ``dst``."""

    side: Side  # the side that ``src`` is
    src: socket.socket
    dst: socket.socket
    max_read: int
    inc: Callable[[int], None]  # the counter child's bound ``inc``
    # For a TLS source, OpenSSL's read(len, buffer) and pending(); None for TCP.
    tls_read: Callable[..., int] | None
    tls_pending: Callable[[], int] | None
    write: Callable[..., int]  # dst's send, or OpenSSL's write for TLS
    watch: TerminateWatch | None = None
    total: int = 0
    unreported: int = 0  # bytes not yet added to the counter
    pending: bytes = b""  # what ``dst`` has not taken yet; ``src`` is paused meanwhile
    mask: int = 0  # the epoll interest registered for ``src``'s descriptor


def _pipe(
    side: Side, src: socket.socket, dst: socket.socket, max_read: int, inc: Callable[[int], None]
) -> _Pipe:
    """Bind the calls the hot loop makes.

    For TLS the loop calls the C ``_ssl._SSLSocket`` under ``ssl.SSLSocket``
    directly: the Python wrappers only re-check that the socket is open, and
    cost two interpreter frames per call.
    """
    tls_read: Callable[..., int] | None = None
    tls_pending: Callable[[], int] | None = None
    if isinstance(src, ssl.SSLSocket):
        obj: Any = getattr(src, "_sslobj", None) or src
        tls_read, tls_pending = obj.read, obj.pending
    write: Callable[..., int] = dst.send
    if isinstance(dst, ssl.SSLSocket):
        write = (getattr(dst, "_sslobj", None) or dst).write
    return _Pipe(side, src, dst, max_read, inc, tls_read, tls_pending, write)


@dataclass(slots=True, eq=False)
class _RelayedSession:
    """One session in the engine: the client's socket is ``c2b.src``, the backend's ``b2c.src``."""

    c2b: _Pipe
    b2c: _Pipe
    done: trio.Event = field(default_factory=trio.Event)
    finished: bool = False  # under the engine's lock; ``done`` follows in trio
    result: RelayResult = field(default_factory=RelayResult)


# What the engine keeps per registered descriptor: the session, the pipe that
# reads from the socket, and the pipe that writes to it.
_Entry = tuple[_RelayedSession, _Pipe, _Pipe]


class RelayEngine:
    """All relayed sessions of one trio run, driven by one thread from one epoll set."""

    def __init__(self) -> None:
        self._epoll = select.epoll()
        self._fds: dict[int, _Entry] = {}
        self._buf = memoryview(bytearray(MAX_READ))
        self._lock = threading.Lock()
        self._stop = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._epoll.register(self._stop, _IN)
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None

    @property
    def active(self) -> int:
        """Sessions currently relayed (for tests and introspection)."""
        return len(self._fds) // 2

    # ------------------------------------------------------------ trio side

    async def run(self) -> None:
        """Run the engine thread for as long as this task lives."""
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._loop, name="pgtls-relay", daemon=True)
        self._thread.start()
        try:
            await trio.sleep_forever()
        finally:
            os.eventfd_write(self._stop, 1)
            self._thread.join()
            with self._lock:
                for r, _, _ in list(self._fds.values()):
                    self._finish(r, "", "proxy shutting down")
            self._epoll.close()
            os.close(self._stop)

    async def add_session(
        self,
        client: ByteStream,
        backend: ByteStream,
        c2b: _Counter,
        b2c: _Counter,
        *,
        keep_backend: bool = False,
    ) -> RelayResult:
        """Relay a session until one side closes; cancellation removes the sockets.

        With ``keep_backend`` the client's Terminate is not passed on when it
        is the last thing the client sent (``RelayResult.terminated``).
        """
        csock, bsock = client.sock, backend.sock
        r = _RelayedSession(
            c2b=_pipe(Side.CLIENT, csock, bsock, TLS_READ, c2b.inc),
            b2c=_pipe(Side.BACKEND, bsock, csock, MAX_READ, b2c.inc),
        )
        if keep_backend:
            r.c2b.watch = TerminateWatch()
        try:
            with self._lock:
                for reads, writes in ((r.c2b, r.b2c), (r.b2c, r.c2b)):
                    self._fds[reads.src.fileno()] = (r, reads, writes)
                    self._epoll.register(reads.src.fileno(), _IN)
                    reads.mask = _IN
                # Bytes OpenSSL already decrypted during the startup exchange
                # never show up as readiness of the socket.
                for pipe in (r.c2b, r.b2c):
                    if pipe.tls_pending is not None and not r.finished and pipe.tls_pending():
                        self._pump(r, pipe)
            await r.done.wait()
        finally:
            if not r.finished:
                with self._lock:
                    self._finish(r, "", "")
        result = r.result
        result.bytes_in = r.c2b.total
        result.bytes_out = r.b2c.total
        return result

    # ------------------------------------------------------------ the thread

    @staticmethod
    def _wait(epoll: select.epoll) -> list[tuple[int, int]]:
        """Sleep until sockets are ready (its own frame, so a profiler can
        tell the engine's waiting from its working)."""
        try:
            return epoll.poll(COUNTER_INTERVAL, _BATCH)
        except InterruptedError:
            return []

    def _loop(self) -> None:
        epoll, fds, lock, stop = self._epoll, self._fds, self._lock, self._stop
        next_report = time.monotonic() + COUNTER_INTERVAL
        while True:
            ready = self._wait(epoll)
            with lock:
                for fd, events in ready:
                    if fd == stop:
                        return
                    entry = fds.get(fd)
                    if entry is None:
                        continue
                    try:
                        self._handle(entry[0], entry[1], entry[2], events)
                    except Exception as exc:  # a bug must not stop every relay
                        log.exception("relay engine: unexpected error")
                        self._finish(entry[0], "", f"internal error: {exc!r}")
                now = time.monotonic()
                if now >= next_report:
                    next_report = now + COUNTER_INTERVAL
                    for r, reads, _ in list(fds.values()):
                        if reads is r.c2b:  # once per session
                            _report(r.c2b)
                            _report(r.b2c)

    # ------------------------------------------------------------ engine side

    def _handle(self, r: _RelayedSession, as_src: _Pipe, as_dst: _Pipe, events: int) -> None:
        # The socket is ``as_src``'s source and ``as_dst``'s destination.
        if events & _OUT and as_dst.pending:
            self._flush(r, as_dst)
        if r.finished:
            return
        if events & _IN:
            self._pump(r, as_src)
        elif events & _ERR and not events & _OUT and _hung_up(as_src.src):
            # Hang-up or error on a socket we are not reading (its reader is
            # paused): nothing more will come through it. (Checked on the
            # socket itself: the event may be stale, for an earlier socket
            # that had the same descriptor.)
            self._finish(r, as_src.side, "connection lost")

    def _pump(self, r: _RelayedSession, p: _Pipe) -> None:
        if p.pending:  # paused until the destination drains
            return
        buf = self._buf
        src = p.src
        max_read = p.max_read
        tls_read = p.tls_read
        write = p.write
        while True:
            try:
                if tls_read is not None:
                    n = tls_read(max_read, buf)
                else:
                    n = src.recv_into(buf, max_read)
            except _WOULD_BLOCK:
                return
            except _CLOSED:
                n = 0
            except OSError as exc:
                self._finish(r, p.side, _describe(exc))
                return
            if not n:
                self._finish(r, p.side, "")
                return
            p.total += n
            p.unreported += n
            if p.watch is not None:
                at = p.watch.feed(buf[:n])
                if at >= 0:
                    if self._send(r, p, buf[:at]):
                        r.result.terminated = True
                        self._finish(r, p.side, "")
                    # else: the Terminate is dropped; the client's EOF ends
                    # the relay and the session terminates the backend.
                    return
            # The common case inline: the destination takes the whole chunk.
            try:
                sent = write(buf[:n])
            except _WOULD_BLOCK:
                sent = 0
            except OSError as exc:
                self._finish(r, p.side.other, _describe(exc))
                return
            if sent != n and not self._send(r, p, buf[sent:n]):
                return
            # More plaintext may wait inside OpenSSL, where epoll cannot see it.
            if tls_read is None or not p.tls_pending():  # type: ignore[misc]
                return

    def _send(self, r: _RelayedSession, p: _Pipe, view: memoryview) -> bool:
        """Write ``view`` to ``p.dst``; keep and pause on what does not fit."""
        write = p.write
        while view:
            try:
                sent = write(view)
            except _WOULD_BLOCK:
                break
            except OSError as exc:
                self._finish(r, p.side.other, _describe(exc))
                return False
            view = view[sent:]
        if not view:
            return True
        p.pending = bytes(view)
        self._update(r)
        return False

    def _flush(self, r: _RelayedSession, p: _Pipe) -> None:
        data = p.pending
        p.pending = b""
        if self._send(r, p, memoryview(data)):
            self._update(r)
            # The paused source may hold data OpenSSL already read.
            self._pump(r, p)

    def _update(self, r: _RelayedSession) -> None:
        """Read a socket unless its pipe is paused; watch for writability while
        the other pipe holds bytes for it."""
        if r.finished:
            return
        for reads, writes in ((r.c2b, r.b2c), (r.b2c, r.c2b)):
            want = (0 if reads.pending else _IN) | (_OUT if writes.pending else 0)
            if want != reads.mask:
                self._epoll.modify(reads.src.fileno(), want)
                reads.mask = want

    def _finish(self, r: _RelayedSession, ended_by: str, error: str) -> None:
        """End ``r`` (the lock is held); its task wakes in trio."""
        if r.finished:
            return
        r.finished = True
        r.result.ended_by = ended_by
        r.result.error = error
        _report(r.c2b)
        _report(r.b2c)
        for sock in (r.c2b.src, r.b2c.src):
            fd = sock.fileno()
            if fd != -1 and self._fds.pop(fd, None) is not None:
                try:
                    self._epoll.unregister(fd)
                except (OSError, ValueError):
                    pass
        if threading.current_thread() is self._thread and self._token is not None:
            try:
                self._token.run_sync_soon(r.done.set)
            except trio.RunFinishedError:
                pass
        else:
            r.done.set()


def _hung_up(sock: socket.socket) -> bool:
    """The socket is hung up or in error now, whatever is still queued in it.

    A fresh poll of this descriptor alone, so an event left over from an
    earlier socket with the same descriptor is not taken for this one's.
    """
    poller = select.poll()
    poller.register(sock.fileno(), 0)  # HUP and ERR are always reported
    return any(ev & (select.POLLHUP | select.POLLERR) for _, ev in poller.poll(0))


def _report(p: _Pipe) -> None:
    if p.unreported:
        p.inc(p.unreported)
        p.unreported = 0


def _describe(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    return exc.strerror or str(exc)


_ENGINE: trio.lowlevel.RunVar[RelayEngine] = trio.lowlevel.RunVar("pgtls_proxy_relay_engine")


def engine() -> RelayEngine:
    """This trio run's engine, started on first use."""
    try:
        return _ENGINE.get()
    except LookupError:
        eng = RelayEngine()
        _ENGINE.set(eng)
        trio.lowlevel.spawn_system_task(eng.run, name="pgtls-proxy relay engine")
        return eng


async def relay_session(
    client: ByteStream,
    backend: ByteStream,
    c2b: _Counter,
    b2c: _Counter,
    *,
    keep_backend: bool = False,
) -> RelayResult:
    """Relay until one side closes; the other direction ends with it."""
    return await engine().add_session(client, backend, c2b, b2c, keep_backend=keep_backend)
