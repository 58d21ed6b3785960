"""Fuzz the client's startup phase: StartupReader and the startup-packet codec.

The input is read the way the session reads a client: outside TLS first
(SSLRequest, GSSENCRequest, then StartupMessage or CancelRequest), or inside
TLS (one StartupMessage or CancelRequest), in chunk sizes the input chooses,
never more than :meth:`StartupReader.bytes_needed`. The contract checked:

- only :class:`ProtocolError` escapes, with a SQLSTATE an ErrorResponse can carry;
- the reader never asks for or holds more than one 10004-byte packet, and
  asks for more only while it still can make progress (no spin, no hang);
- each event is built from exactly the bytes of its packet: re-encoding it
  gives those bytes back, so the proxy forwards what the client wrote.

Run: ``python -m fuzz.fuzz_startup [libFuzzer options] [corpus dirs]``.
"""

from __future__ import annotations

import struct

from fuzz._provider import Provider
from fuzz._run import fuzz
from pgtls_proxy.wire import codec
from pgtls_proxy.wire.errors import ProtocolError
from pgtls_proxy.wire.frontend import NEED_DATA, StartupReader, check_no_trailing_data
from pgtls_proxy.wire.messages import (
    MAX_STARTUP_LENGTH,
    PROTOCOL_3_0,
    PROTOCOL_3_2,
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
)

# What a client may be told (ErrorResponse) or, when silent, nothing at all.
_SQLSTATES = frozenset({"08P01", "28000", "0A000"})


def _check_error(reader: StartupReader, exc: ProtocolError) -> None:
    assert exc.sqlstate in _SQLSTATES, exc
    assert isinstance(exc.message, str) and exc.message
    codec.error_response("FATAL", exc.sqlstate, exc.message)  # must be sendable
    assert reader.bytes_needed() == 0
    try:
        reader.next_event()
    except ProtocolError as again:  # the same refusal, every later call
        assert again is exc
    else:
        raise AssertionError("a failed reader produced an event")


class _Stream:
    """The client's bytes, handed out in the chunk sizes the input chose."""

    def __init__(self, data: bytes, chunks: list[int]) -> None:
        self.data = data
        self.pos = 0
        self.chunks = chunks or [0]
        self.step = 0

    def recv(self, need: int) -> bytes:
        size = self.chunks[self.step % len(self.chunks)]
        self.step += 1
        take = need if size == 0 else min(need, size)
        chunk = self.data[self.pos : self.pos + take]
        self.pos += len(chunk)
        return chunk


def _read_packet(
    reader: StartupReader, stream: _Stream
) -> SSLRequest | GSSENCRequest | CancelRequest | StartupMessage | None:
    """One packet, as session._read_packet reads it; None when the client stops."""
    start = stream.pos
    while True:
        try:
            event = reader.next_event()
        except ProtocolError as exc:
            _check_error(reader, exc)
            return None
        if event is not NEED_DATA:
            # Exactly the packet's bytes were read, and they are the event.
            assert event.encode() == stream.data[start : stream.pos], event
            assert codec.parse_startup_packet(event.encode()) == event
            return event
        need = reader.bytes_needed()
        assert 0 < need <= MAX_STARTUP_LENGTH, need
        chunk = stream.recv(need)
        if not chunk:
            return None  # the client went away mid-packet
        assert len(chunk) <= need
        reader.receive_data(chunk)
        assert len(reader._buf) <= MAX_STARTUP_LENGTH


def _inside_tls(stream: _Stream) -> None:
    event = _read_packet(StartupReader(inside_tls=True), stream)
    if isinstance(event, StartupMessage):
        # What the proxy does next: log the names, rewrite the user.
        assert event.user and event.database
        mapped = event.with_user("mapped_user")
        assert codec.parse_startup_packet(mapped.encode()) == mapped
    else:
        assert event is None or isinstance(event, CancelRequest), event


def test_one_input(data: bytes) -> None:
    """One client: flags, up to 7 read sizes, then the client's bytes."""
    fdp = Provider(data)
    flags = fdp.byte()
    chunks = [fdp.byte() for _ in range(fdp.int_in(0, 7))]
    stream = _Stream(fdp.rest(), chunks)
    if flags & 1:
        _inside_tls(stream)
        return
    reader = StartupReader(inside_tls=False)
    while True:
        event = _read_packet(reader, stream)
        if isinstance(event, GSSENCRequest):
            continue  # answered N; the client may go on in the clear
        if not isinstance(event, SSLRequest):
            return  # StartupMessage (refused: plaintext), CancelRequest, error, EOF
        rest = stream.data[stream.pos :]
        if flags & 2:
            # Bytes already there after SSLRequest were sent in the clear.
            try:
                check_no_trailing_data(rest)
            except ProtocolError as exc:
                assert rest and exc.close_silently
            else:
                assert not rest
            return
        _inside_tls(stream)  # the TLS layer decrypted the rest: startup inside TLS
        return


def seeds() -> list[bytes]:
    """Valid clients of every shape, each with whole, 1-byte and mixed reads."""
    hello = StartupMessage(PROTOCOL_3_0, (("user", "alice"), ("database", "app"))).encode()
    newer = StartupMessage(
        PROTOCOL_3_2,
        (("user", "bob"), ("application_name", "psql"), ("_pq_.x", "1"), ("options", "-c a=b")),
    ).encode()
    cancel = CancelRequest(1234, b"\x01\x02\x03\x04").encode()
    long_cancel = CancelRequest(99, bytes(range(32))).encode()
    ssl, gss = SSLRequest().encode(), GSSENCRequest().encode()
    streams = [
        (0, ssl + hello),
        (0, gss + ssl + newer),
        (0, gss + hello),
        (0, ssl + gss),
        (0, cancel),
        (1, hello),
        (1, newer),
        (1, long_cancel),
        (2, ssl + hello),
        (0, ssl + ssl),
        (1, struct.pack("!II", 10004, PROTOCOL_3_0) + b"user\x00" + b"a" * 9990 + b"\x00\x00"),
    ]
    seeds = []
    for flags, stream in streams:
        for chunks in ([], [1], [3, 0, 7]):
            seeds.append(bytes([flags, len(chunks), *chunks]) + stream)
    return seeds


def main() -> None:
    fuzz(test_one_input, ("pgtls_proxy.wire",))


if __name__ == "__main__":
    main()
