"""Cancel keys: what the client holds -> which backend session to cancel.

The client never sees the backend's real process id or secret key: each
session gets a substitute pair (as PgBouncer does), so a key seen by one
client cannot be replayed against a backend directly, and a cancel can be
routed to whichever backend runs the session.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from pgtls_proxy.config import BackendSettings


@dataclass(frozen=True, slots=True)
class CancelTarget:
    backend: BackendSettings
    pid: int
    key: bytes


class CancelRegistry:
    """Substitute keys of live sessions, looked up in constant time."""

    def __init__(self, worker_id: int = 0, worker_bits: int = 0) -> None:
        self._targets: dict[tuple[int, bytes], CancelTarget] = {}
        self._worker_id = worker_id
        self._worker_bits = worker_bits

    def __len__(self) -> int:
        return len(self._targets)

    def register(self, target: CancelTarget) -> tuple[int, bytes]:
        """Store a target; return the substitute (pid, key) for the client.

        The substitute key has the backend key's length (4 bytes up to
        protocol 3.0, up to 256 from 3.2) so the client sees what it expects.
        The low ``worker_bits`` of the pid name the worker that owns it.
        """
        key_len = max(4, len(target.key))
        while True:
            high = secrets.randbits(31 - self._worker_bits) or 1
            pid = (high << self._worker_bits) | self._worker_id
            key = secrets.token_bytes(key_len)
            if (pid, key) not in self._targets:
                self._targets[(pid, key)] = target
                return pid, key

    def unregister(self, pid: int, key: bytes) -> None:
        self._targets.pop((pid, key), None)

    def lookup(self, pid: int, key: bytes) -> CancelTarget | None:
        return self._targets.get((pid, key))

    def owner_of(self, pid: int) -> int:
        """The worker that issued ``pid``."""
        mask = (1 << self._worker_bits) - 1
        return pid & mask
