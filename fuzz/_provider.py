"""A small, deterministic consumer of fuzzer bytes.

atheris' FuzzedDataProvider would do, but the harnesses must also run in
``make test`` without atheris: this pure-Python reader turns the same input
into the same decisions everywhere, so a crash file replays exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


class Provider:
    """Hands out integers, choices and byte strings from the front of ``data``.

    Exhausted input reads as zeros, so every input is a valid program and
    libFuzzer's mutations of any byte change one decision, not the framing.
    """

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._pos = 0

    def remaining(self) -> int:
        return len(self._data) - self._pos

    def byte(self) -> int:
        if self._pos >= len(self._data):
            return 0
        value = self._data[self._pos]
        self._pos += 1
        return value

    def int_in(self, low: int, high: int) -> int:
        """An integer in ``[low, high]`` from as few bytes as the span needs."""
        span = high - low
        if span <= 0:
            return low
        value = 0
        nbytes = (span.bit_length() + 7) // 8
        for _ in range(nbytes):
            value = (value << 8) | self.byte()
        return low + value % (span + 1)

    def boolean(self) -> bool:
        return self.byte() & 1 == 1

    def pick(self, options: Sequence[T]) -> T:
        return options[self.int_in(0, len(options) - 1)]

    def take(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer at the end of the input)."""
        n = max(0, n)
        chunk = self._data[self._pos : self._pos + n]
        self._pos += len(chunk)
        return chunk

    def blob(self, max_len: int) -> bytes:
        """A length-prefixed byte string of at most ``max_len`` bytes."""
        return self.take(self.int_in(0, max_len))

    def rest(self) -> bytes:
        return self.take(self.remaining())
