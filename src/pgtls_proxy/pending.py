"""The pending table: which not-yet-sessions may hold a socket, and who gives way.

A connection is *pending* from accept until its session's limits are checked
(TLS done, StartupMessage read, rules decided). Pending connections cost a
descriptor and, during the handshake, an OpenSSL object each, and anyone who
can reach the port can open them without a certificate. So they get their
own budget (``limits.max_pending``), apart from sessions, and a cap per source
address (``limits.per_source_pending``).

When the budget is full a newcomer is not simply refused: that would let one
address with many idle sockets lock everyone out. Instead the source that
holds the most pending connections gives up its oldest one, provided it holds
at least two more than the newcomer's source. Consequences:

- a source with a single pending connection is never evicted (no newcomer's
  source can hold fewer than zero), so an attacker cannot push out a client
  that connects once, however fast it churns;
- a source is only evicted in favour of one that holds fewer (by two, so
  two equal sources do not take turns evicting each other), so whoever holds
  more than a fair share pays for the newcomer, never someone below it;
- the newcomer is refused (``pending_full``) only when every source already
  holds about as many as the newcomer's own, i.e. the table is shared fairly.

IPv6 sources are grouped by their /64: one host usually owns a whole /64,
and a cap per single IPv6 address would cap nothing.

Pure policy: no sockets, no trio, no clock. The caller closes what it is told
to close.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Generic, TypeVar

H = TypeVar("H")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Why a connection was closed at once (the metric's label values).
PENDING_FULL = "pending_full"
PER_SOURCE = "per_source"
EVICTED = "evicted"


def source_key(address: IPAddress) -> str:
    """The unit the per-source cap counts: an IPv4 address, or an IPv6 /64."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is not None:
            return str(mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


@dataclass(eq=False, slots=True)
class Entry(Generic[H]):
    """One pending connection; ``handle`` is the caller's (what to close)."""

    key: str
    handle: H
    # False: the per-source cap does not apply (the TCP peer of a PROXY
    # protocol listener is the load balancer, not a client).
    capped: bool = True
    live: bool = field(default=True)


@dataclass(frozen=True, slots=True)
class Admitted(Generic[H]):
    entry: Entry[H]
    # An older connection that must be closed to make room, if any.
    evicted: Entry[H] | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    reason: str  # PENDING_FULL or PER_SOURCE


class PendingTable(Generic[H]):
    """Pending connections by source, with O(1) admission and eviction."""

    def __init__(self, max_pending: int, per_source: int) -> None:
        self.max_pending = max_pending
        self.per_source = per_source
        # Per source, its entries oldest first (dicts keep insertion order).
        self._by_key: dict[str, dict[Entry[H], None]] = {}
        # count -> the sources holding exactly that many, in the order they got there.
        self._buckets: dict[int, dict[str, None]] = {}
        self._max = 0
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def count(self, key: str) -> int:
        entries = self._by_key.get(key)
        return len(entries) if entries else 0

    def sources(self) -> int:
        return len(self._by_key)

    def admit(self, key: str, handle: H, *, capped: bool = True) -> Admitted[H] | Refused:
        """Admit a newcomer from ``key``, perhaps by evicting an older connection."""
        held = self.count(key)
        if capped and held >= self.per_source:
            return Refused(PER_SOURCE)
        evicted = None
        if self._len >= self.max_pending:
            evicted = self._victim(held)
            if evicted is None:
                return Refused(PENDING_FULL)
            self.release(evicted)
        entry = Entry(key, handle, capped)
        self._add(entry)
        return Admitted(entry, evicted)

    def move(self, entry: Entry[H], key: str) -> bool:
        """Count ``entry`` under another source (the address a PROXY header gave).

        False when that source is at its cap: the caller closes the connection
        and releases the entry. The per-source cap applies from now on.
        """
        if not entry.live:
            return False
        if key == entry.key and entry.capped:
            return True
        if key != entry.key and self.count(key) >= self.per_source:
            return False
        self._remove(entry)
        entry.key = key
        entry.capped = True
        self._add(entry)
        return True

    def release(self, entry: Entry[H]) -> None:
        """The connection became a session or ended; idempotent."""
        if entry.live:
            self._remove(entry)
            entry.live = False

    def _victim(self, newcomer_holds: int) -> Entry[H] | None:
        """The oldest connection of the biggest source, if it holds 2+ more."""
        if self._max < newcomer_holds + 2:
            return None
        key = next(iter(self._buckets[self._max]))
        return next(iter(self._by_key[key]))

    # ---------------------------------------------------------------- bookkeeping

    def _add(self, entry: Entry[H]) -> None:
        entries = self._by_key.setdefault(entry.key, {})
        before = len(entries)
        entries[entry] = None
        self._rebucket(entry.key, before, before + 1)
        self._len += 1

    def _remove(self, entry: Entry[H]) -> None:
        entries = self._by_key[entry.key]
        before = len(entries)
        del entries[entry]
        if not entries:
            del self._by_key[entry.key]
        self._rebucket(entry.key, before, before - 1)
        self._len -= 1

    def _rebucket(self, key: str, old: int, new: int) -> None:
        if old:
            bucket = self._buckets[old]
            del bucket[key]
            if not bucket:
                del self._buckets[old]
        if new:
            self._buckets.setdefault(new, {})[key] = None
        if new > self._max:
            self._max = new
        elif old == self._max and old not in self._buckets:
            # Counts move by one: the next biggest is this source, one less
            # (or, at zero, there is no source left).
            self._max = new
