"""The steady state: copy bytes both ways until either side closes.

No message parsing: large reads into one reusable buffer per direction, one
counter increment per chunk on a child bound before the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import trio

from pgtls_proxy.netio import ByteStream, StreamClosed

# Buffers start small, so an idle session costs little memory, and grow when
# a read fills them (bulk COPY), up to MAX_READ. One TLS record carries at
# most 16 KiB, so reads from the client never need more than that.
INITIAL_READ = 8192
MAX_READ = 65536


class _Counter(Protocol):
    """What the relay needs of a prometheus counter child."""

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None: ...


@dataclass(slots=True)
class RelayResult:
    bytes_in: int = 0  # client -> backend
    bytes_out: int = 0  # backend -> client
    ended_by: str = ""  # "client" or "backend"


async def _pump(
    src: ByteStream, dst: ByteStream, counter: _Counter, totals: list[int], max_read: int
) -> None:
    size = INITIAL_READ
    view = memoryview(bytearray(size))
    recv_into = src.recv_into
    send_all = dst.send_all
    inc = counter.inc
    while True:
        n = await recv_into(view)
        if not n:
            return
        await send_all(view[:n])
        inc(n)
        totals[0] += n
        if n == size and size < max_read:
            size = min(size * 4, max_read)
            view = memoryview(bytearray(size))


async def relay(
    client: ByteStream, backend: ByteStream, c2b: _Counter, b2c: _Counter
) -> RelayResult:
    """Relay until one side closes; the other direction is then cancelled."""
    result = RelayResult()
    into = [0]
    out = [0]

    async with trio.open_nursery() as nursery:

        async def client_side() -> None:
            try:
                await _pump(client, backend, c2b, into, 16384)
            except StreamClosed:
                pass
            result.ended_by = result.ended_by or "client"
            nursery.cancel_scope.cancel()

        async def backend_side() -> None:
            try:
                await _pump(backend, client, b2c, out, MAX_READ)
            except StreamClosed:
                pass
            result.ended_by = result.ended_by or "backend"
            nursery.cancel_scope.cancel()

        nursery.start_soon(client_side)
        nursery.start_soon(backend_side)
    result.bytes_in = into[0]
    result.bytes_out = out[0]
    return result
