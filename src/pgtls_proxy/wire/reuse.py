"""What it takes to hand one client's backend session to the next client.

A pooled backend connection may only be reused when the previous client left
it idle and said goodbye: the client's Terminate is withheld from the backend
(:class:`TerminateWatch` finds it at a message boundary of the client's
stream), the session is reset with ``DISCARD ALL``, and the backend's answer
must be exactly the answer to that reset and to a query carrying a random
nonce (:class:`ResetCheck`). A client that left a query running, a
transaction open, or pipelined its own ``DISCARD ALL`` before leaving makes
the answer differ, and the connection is closed instead. The nonce is what
makes the check exact: no client can have asked for it.

Plain functions and classes over bytes; the pool (``backend_pool``) does the
I/O.
"""

from __future__ import annotations

import struct

from pgtls_proxy.wire.codec import encode_message

_TERMINATE = 0x58  # 'X'
_HEADER = struct.Struct("!cI")


class TerminateWatch:
    """Follows the message framing of the client's byte stream during the relay.

    :meth:`feed` gets each chunk the client sent and returns the offset of a
    Terminate message that ends the chunk, or -1. Once the stream stops
    looking like frontend messages (a length below 4), the watch gives up:
    :attr:`lost` is set and the session is simply not reused.
    """

    __slots__ = ("_header", "_left", "lost")

    def __init__(self) -> None:
        self._left = 0  # bytes of the current message still to come
        self._header = bytearray()  # a message header split across chunks
        self.lost = False

    def feed(self, data: memoryview | bytes) -> int:
        if self.lost:
            return -1
        i, n = 0, len(data)
        while i < n:
            if self._left:
                take = min(self._left, n - i)
                self._left -= take
                i += take
                continue
            start = i
            if self._header or n - i < 5:
                part = bytes(data[i : i + 5 - len(self._header)])
                self._header += part
                i += len(part)
                if len(self._header) < 5:
                    return -1
                msg_type, length = _HEADER.unpack(self._header)
                self._header.clear()
                start = -1  # the message began in an earlier chunk
            else:
                msg_type, length = _HEADER.unpack_from(data, i)
                i += 5
            if length < 4:
                self.lost = True
                return -1
            self._left = length - 4
            if msg_type[0] == _TERMINATE and length == 4 and i == n and start >= 0:
                return start
        return -1


def reset_request(nonce: str) -> bytes:
    """Two simple queries: the reset, then one whose answer only we can expect."""
    return encode_message(b"Q", b"DISCARD ALL\0") + encode_message(
        b"Q", f"SELECT '{nonce}'".encode() + b"\0"
    )


class ResetCheck:
    """Checks the backend's answer to :func:`reset_request`, message by message.

    :meth:`feed` returns None while more is expected, True when the answer was
    exactly right (the backend is idle, reset, and owes nothing), False at
    the first message out of place. ParameterStatus messages the reset
    caused are collected in :attr:`parameters`, so the next client is told
    the values that now hold.
    """

    _EXPECT = (b"C", b"Z", b"T", b"D", b"C", b"Z")

    def __init__(self, nonce: str) -> None:
        self._nonce = nonce.encode()
        self._step = 0
        self.parameters: list[bytes] = []

    def feed(self, msg_type: bytes, payload: bytes) -> bool | None:
        if msg_type in (b"S", b"N"):
            if msg_type == b"S":
                self.parameters.append(encode_message(msg_type, payload))
            return None  # ParameterStatus and notices may come at any point
        if self._step >= len(self._EXPECT) or msg_type != self._EXPECT[self._step]:
            return False
        step = self._step
        self._step += 1
        if step == 0 and payload != b"DISCARD ALL\0":
            return False
        if step in (1, 5) and payload != b"I":
            return False
        if step == 3 and not _single_value(payload, self._nonce):
            return False
        if step == 4 and payload != b"SELECT 1\0":
            return False
        return True if self._step == len(self._EXPECT) else None


def _single_value(payload: bytes, value: bytes) -> bool:
    """A DataRow with one column holding exactly ``value``."""
    return payload == struct.pack("!hi", 1, len(value)) + value


def merge_parameters(login: list[bytes], changed: list[bytes]) -> list[bytes]:
    """The login's messages for the client, with ParameterStatus values updated."""
    if not changed:
        return login
    names = {_parameter_name(m): m for m in changed}
    out = []
    for message in login:
        name = _parameter_name(message) if message[:1] == b"S" else None
        out.append(names.pop(name) if name is not None and name in names else message)
    out.extend(names.values())
    return out


def _parameter_name(message: bytes) -> bytes:
    return message[5:].split(b"\0", 1)[0]
