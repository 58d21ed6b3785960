"""Admission at accept time: the pending budget, refusals, and accept errors.

The policy (who is admitted, who gives way) is :mod:`pgtls_proxy.pending`;
this module applies it to trio tasks and sockets, counts what it refuses,
and says so in the log at most once a second, so a flood can neither go
unnoticed nor fill the disk. The numbers are per worker process.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import time
from collections import Counter
from collections.abc import Callable

import trio

from pgtls_proxy.config import Config
from pgtls_proxy.descriptors import pending_ceiling
from pgtls_proxy.logsetup import LOGGER_NAME
from pgtls_proxy.metrics import Metrics
from pgtls_proxy.pending import EVICTED, PER_SOURCE, Admitted, Entry, IPAddress, PendingTable
from pgtls_proxy.pending import source_key as _source_key

_log = logging.getLogger(f"{LOGGER_NAME}.admission")

# A connection shed from the backlog because no descriptor was left for it.
NO_DESCRIPTORS = "no_descriptors"
REPORT_INTERVAL = 1.0
# Accept errors: first retry after 5 ms, doubling to at most 250 ms, so a
# descriptor shortage costs little CPU and a freed descriptor is used soon.
_BACKOFF_FIRST = 0.005
_BACKOFF_MAX = 0.25


def peer_key(peer: object) -> str:
    """The source an accepted socket's peer counts under (see pending.source_key).

    An IPv4 peer is already in canonical form as the kernel reports it, and
    parsing it would cost more than the rest of admission together.
    """
    if isinstance(peer, tuple) and peer and isinstance(peer[0], str):
        host = peer[0]
        if ":" not in host:
            return host
        try:
            return _source_key(ipaddress.ip_address(host))
        except ValueError:
            pass
    return "local"


class Report:
    """Events summed up into at most one log line per interval.

    The first event after a quiet interval is logged at once; the ones that
    follow within the interval are added up and logged by :meth:`flush`
    when the interval is over (the caller runs :meth:`run`).
    """

    def __init__(self, write: Callable[[int, Counter[str], Counter[str]], None]) -> None:
        self._write = write
        self._reasons: Counter[str] = Counter()
        self._sources: Counter[str] = Counter()
        self._last = -REPORT_INTERVAL
        self._due = trio.Event()

    def add(self, reason: str, source: str) -> None:
        self._reasons[reason] += 1
        self._sources[source] += 1
        if time.monotonic() - self._last >= REPORT_INTERVAL:
            self.flush()
        else:
            self._due.set()

    def flush(self) -> None:
        total = sum(self._reasons.values())
        if total:
            self._write(total, self._reasons, self._sources)
            self._last = time.monotonic()
        self._reasons = Counter()
        self._sources = Counter()

    async def run(self) -> None:
        """Log what was held back, one interval after the last line."""
        while True:
            await self._due.wait()
            self._due = trio.Event()
            await trio.sleep(max(0.0, self._last + REPORT_INTERVAL - time.monotonic()))
            self.flush()


def _write_refusals(total: int, reasons: Counter[str], sources: Counter[str]) -> None:
    source, most = sources.most_common(1)[0]
    _log.warning(
        "P: refused %d connection(s) since the last report (%s); most from %s (%d)",
        total,
        " ".join(f"{reason}={n}" for reason, n in sorted(reasons.items())),
        source,
        most,
    )


def _write_accept_errors(total: int, reasons: Counter[str], sources: Counter[str]) -> None:
    _log.error(
        "P: accept failed %d time(s) since the last report (%s): %s; connections "
        "at the head of the backlog are closed until descriptors are free "
        "(see limits.max_connections and RLIMIT_NOFILE)",
        total,
        " ".join(f"{reason}={n}" for reason, n in sorted(reasons.items())),
        ", ".join(sources),
    )


class Ticket:
    """A pending connection's place in the table, held by its task.

    Eviction cancels ``scope``, which the task runs its session in; the
    session then closes the socket at once, without lingering.
    """

    __slots__ = ("_admission", "entry", "evicted", "scope")

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self.scope = trio.CancelScope()
        self.evicted = False
        self.entry: Entry[Ticket] | None = None

    def move(self, source: IPAddress, shown: str) -> bool:
        """Count this connection under the address its PROXY header gave."""
        return self._admission.move(self, source, shown)

    def release(self) -> None:
        """No longer pending: a session now, or gone."""
        self._admission.release(self)


class Admission:
    """The pending table of one worker process and what it reports."""

    def __init__(self, metrics: Metrics, config: Callable[[], Config]) -> None:
        self.metrics = metrics
        self._config = config
        limits = config().limits
        self.table: PendingTable[Ticket] = PendingTable(
            limits.max_pending, limits.per_source_pending
        )
        # This process's RLIMIT_NOFILE, when known: with too few descriptors
        # for every limit, the pending budget is lowered to fit (see descriptors).
        self.nofile: int | None = None
        self._sized: tuple[Config, int | None] | None = None
        self.refusals = Report(_write_refusals)
        self.accept_errors = Report(_write_accept_errors)
        self._reserve: int | None = None
        self._backoff = _BACKOFF_FIRST
        self.metrics.connections_pending.set(0)

    async def run(self) -> None:
        """Keep a spare descriptor; write the held-back report lines."""
        self._take_reserve()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.refusals.run)
                nursery.start_soon(self.accept_errors.run)
        finally:
            if self._reserve is not None:
                os.close(self._reserve)
                self._reserve = None

    # ------------------------------------------------------------ pending

    def _configure(self) -> None:
        """Follow a reload: new sizes apply to the next admission."""
        config = self._config()
        sized = self._sized
        if sized is not None and sized[0] is config and sized[1] == self.nofile:
            return
        self._sized = (config, self.nofile)
        limits = config.limits
        ceiling = None if self.nofile is None else pending_ceiling(config, self.nofile)
        self.table.max_pending = (
            limits.max_pending if ceiling is None else min(limits.max_pending, ceiling)
        )
        self.table.per_source = limits.per_source_pending

    def admit(self, peer: object, *, capped: bool) -> Ticket | None:
        """A ticket for a just-accepted connection, or None: close it at once."""
        self._configure()
        ticket = Ticket(self)
        key = peer_key(peer)
        verdict = self.table.admit(key, ticket, capped=capped)
        if not isinstance(verdict, Admitted):
            self._refused(verdict.reason, key)
            return None
        ticket.entry = verdict.entry
        if verdict.evicted is not None:
            victim = verdict.evicted.handle
            victim.evicted = True
            victim.scope.cancel()
            self._refused(EVICTED, verdict.evicted.key)
        self.metrics.connections_pending.set(len(self.table))
        return ticket

    def move(self, ticket: Ticket, source: IPAddress, shown: str) -> bool:
        if ticket.entry is None:
            return True
        if self.table.move(ticket.entry, _source_key(source)):
            return True
        self._refused(PER_SOURCE, shown)
        return False

    def release(self, ticket: Ticket) -> None:
        if ticket.entry is not None:
            self.table.release(ticket.entry)
            ticket.entry = None
            self.metrics.connections_pending.set(len(self.table))

    def _refused(self, reason: str, source: str) -> None:
        self.metrics.refused_by_reason[reason].inc()
        self.refusals.add(reason, source)

    # ------------------------------------------------------------ accept errors

    def _take_reserve(self) -> None:
        if self._reserve is None:
            try:
                self._reserve = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                self._reserve = None

    def accepted(self) -> None:
        self._backoff = _BACKOFF_FIRST

    async def accept_failed(self, lsock: socket.socket, exc: OSError) -> None:
        """Count, report, shed the connection at the head of the backlog, back off.

        Out of descriptors (EMFILE, ENFILE), the listening socket stays
        readable and accept keeps failing: retrying at once would spin, and
        waiting would leave clients hanging in the backlog until they time
        out. So the spare descriptor is given up for a moment to accept the
        first waiting connection and close it (the client learns at once),
        then we wait a little longer each time until an accept succeeds.
        """
        name = errno.errorcode.get(exc.errno or 0, "other").lower()
        label = name if name in ("emfile", "enfile") else "other"
        self.metrics.accept_errors_by_error[label].inc()
        self.accept_errors.add(label, os.strerror(exc.errno) if exc.errno else str(exc))
        if label != "other" and self._reserve is not None:
            os.close(self._reserve)
            self._reserve = None
            try:
                sock, peer = lsock.accept()
            except OSError:
                pass
            else:
                sock.close()
                host = peer[0] if isinstance(peer, tuple) and peer else "local"
                self._refused(NO_DESCRIPTORS, str(host))
            self._take_reserve()
        await trio.sleep(self._backoff)
        self._backoff = min(self._backoff * 2, _BACKOFF_MAX)
