"""The startup state machine: sequences, split reads, refusals, bounds."""

from __future__ import annotations

import struct

import pytest

from pgtls_proxy.wire.errors import ProtocolError
from pgtls_proxy.wire.frontend import NEED_DATA, StartupReader, check_no_trailing_data
from pgtls_proxy.wire.messages import (
    CANCEL_REQUEST_CODE,
    PROTOCOL_3_0,
    PROTOCOL_3_2,
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
)

SSL = SSLRequest().encode()
GSS = GSSENCRequest().encode()
STARTUP = StartupMessage(PROTOCOL_3_0, (("user", "alice"), ("database", "sales")))
STARTUP_32 = StartupMessage(PROTOCOL_3_2, (("user", "bob"), ("_pq_.x", "1")))
CANCEL = CancelRequest(4242, b"\x01\x02\x03\x04")
CANCEL_32 = CancelRequest(4242, bytes(range(32)))


def feed(reader: StartupReader, stream: bytes, chunk: int | None = None) -> list[object]:
    """Drive ``reader`` like the I/O layer: read at most bytes_needed() each time.

    Returns the events and leaves unread bytes alone; stops when the reader
    wants nothing more or the stream is exhausted.
    """
    events: list[object] = []
    pos = 0
    while True:
        event = reader.next_event()
        if event is not NEED_DATA:
            events.append(event)
            continue
        need = reader.bytes_needed()
        if need == 0 or pos >= len(stream):
            return events
        take = need if chunk is None else min(need, chunk)
        reader.receive_data(stream[pos : pos + take])
        pos += take


def consume_all(reader: StartupReader, stream: bytes, chunk: int | None = None) -> list[object]:
    """Like :func:`feed`, stopping once the reader is finished."""
    events: list[object] = []
    pos = 0
    while True:
        need = reader.bytes_needed()
        if need == 0:
            try:
                event = reader.next_event()
            except RuntimeError:
                return events
            events.append(event)
            continue
        if pos >= len(stream):
            return events
        take = need if chunk is None else min(need, chunk)
        reader.receive_data(stream[pos : pos + take])
        pos += take
        event = reader.next_event()
        if event is not NEED_DATA:
            events.append(event)


SEQUENCES: list[tuple[str, bool, bytes, list[object]]] = [
    ("startup-plain", False, STARTUP.encode(), [STARTUP]),
    ("ssl-then-startup", False, SSL + STARTUP.encode(), [SSLRequest(), STARTUP]),
    (
        "gss-ssl-startup",
        False,
        GSS + SSL + STARTUP.encode(),
        [GSSENCRequest(), SSLRequest(), STARTUP],
    ),
    (
        "ssl-gss-startup",
        False,
        SSL + GSS + STARTUP_32.encode(),
        [SSLRequest(), GSSENCRequest(), STARTUP_32],
    ),
    ("cancel-plain", False, CANCEL.encode(), [CANCEL]),
    ("gss-then-cancel", False, GSS + CANCEL_32.encode(), [GSSENCRequest(), CANCEL_32]),
    ("startup-tls", True, STARTUP.encode(), [STARTUP]),
    ("startup-3.2-tls", True, STARTUP_32.encode(), [STARTUP_32]),
    ("cancel-tls", True, CANCEL_32.encode(), [CANCEL_32]),
]


@pytest.mark.parametrize(
    ("inside_tls", "stream", "expected"),
    [(t, s, e) for _, t, s, e in SEQUENCES],
    ids=[i for i, _, _, _ in SEQUENCES],
)
@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_sequences(
    inside_tls: bool, stream: bytes, expected: list[object], chunk: int | None
) -> None:
    reader = StartupReader(inside_tls=inside_tls)
    assert consume_all(reader, stream, chunk) == expected
    assert reader.bytes_needed() == 0


@pytest.mark.parametrize(("inside_tls", "stream"), [(t, s) for _, t, s, _ in SEQUENCES])
def test_one_byte_at_a_time_yields_identical_events(inside_tls: bool, stream: bytes) -> None:
    whole = consume_all(StartupReader(inside_tls=inside_tls), stream)
    reader = StartupReader(inside_tls=inside_tls)
    events: list[object] = []
    for byte in stream:
        assert reader.bytes_needed() > 0
        reader.receive_data(bytes([byte]))
        event = reader.next_event()
        if event is not NEED_DATA:
            events.append(event)
    assert events == whole


def test_bytes_needed_header_then_body() -> None:
    reader = StartupReader(inside_tls=True)
    packet = STARTUP.encode()
    assert reader.bytes_needed() == 4
    assert reader.next_event() is NEED_DATA
    reader.receive_data(packet[:2])
    assert reader.bytes_needed() == 2
    reader.receive_data(packet[2:4])
    assert reader.bytes_needed() == len(packet) - 4
    assert reader.next_event() is NEED_DATA
    reader.receive_data(packet[4:-1])
    assert reader.bytes_needed() == 1
    reader.receive_data(packet[-1:])
    assert reader.bytes_needed() == 0
    assert reader.next_event() == STARTUP
    assert reader.bytes_needed() == 0


def test_never_over_reads_after_ssl_request() -> None:
    """The bytes after SSLRequest are TLS: the reader must not ask for them."""
    reader = StartupReader(inside_tls=False)
    reader.receive_data(SSL[:4])
    assert reader.bytes_needed() == 4
    reader.receive_data(SSL[4:])
    assert reader.next_event() == SSLRequest()
    assert reader.bytes_needed() == 4  # a header, if the session answered N


def test_more_than_needed_is_a_caller_bug() -> None:
    reader = StartupReader(inside_tls=False)
    with pytest.raises(ValueError):
        reader.receive_data(SSL + b"\x16")
    reader = StartupReader(inside_tls=False)
    reader.receive_data(SSL[:4])
    with pytest.raises(ValueError):
        reader.receive_data(SSL[4:] + b"\x16")


def test_empty_receive_is_harmless() -> None:
    reader = StartupReader(inside_tls=False)
    reader.receive_data(b"")
    assert reader.bytes_needed() == 4
    assert reader.next_event() is NEED_DATA


def test_after_the_last_packet() -> None:
    reader = StartupReader(inside_tls=True)
    assert consume_all(reader, STARTUP.encode()) == [STARTUP]
    assert reader.bytes_needed() == 0
    with pytest.raises(ValueError):
        reader.receive_data(b"x")
    with pytest.raises(RuntimeError):
        reader.next_event()


@pytest.mark.parametrize(
    ("first", "name"), [(SSL, "SSL request inside TLS"), (GSS, "GSSENC request inside TLS")]
)
def test_inside_tls_refuses_encryption_requests(first: bytes, name: str) -> None:
    reader = StartupReader(inside_tls=True)
    with pytest.raises(ProtocolError, match=name) as info:
        feed(reader, first + STARTUP.encode())
    assert info.value.sqlstate == "08P01"
    assert not info.value.close_silently


@pytest.mark.parametrize("stream", [SSL + SSL, GSS + GSS, GSS + SSL + GSS, SSL + GSS + SSL])
def test_repeated_requests_refused(stream: bytes) -> None:
    reader = StartupReader(inside_tls=False)
    with pytest.raises(ProtocolError, match="repeated") as info:
        feed(reader, stream)
    assert info.value.close_silently


@pytest.mark.parametrize("first", [STARTUP.encode(), CANCEL.encode()])
def test_only_one_final_packet(first: bytes) -> None:
    reader = StartupReader(inside_tls=False)
    assert len(consume_all(reader, first + STARTUP.encode())) == 1


@pytest.mark.parametrize("inside_tls", [False, True])
@pytest.mark.parametrize("length", [0, 1, 7, 10005, 2**31 - 1, 2**32 - 1])
def test_bad_length_fails_from_the_header(inside_tls: bool, length: int) -> None:
    reader = StartupReader(inside_tls=inside_tls)
    reader.receive_data(struct.pack("!I", length))
    assert reader.bytes_needed() == 0  # nothing more is read
    with pytest.raises(ProtocolError) as info:
        reader.next_event()
    assert info.value.close_silently
    # The failure sticks.
    with pytest.raises(ProtocolError):
        reader.next_event()
    with pytest.raises(ValueError):
        reader.receive_data(b"\x00")


def test_header_of_direct_tls_is_refused() -> None:
    """A TLS record read as a length is out of bounds (0x16030100.. > 10004)."""
    reader = StartupReader(inside_tls=False)
    reader.receive_data(b"\x16\x03\x01\x02")
    with pytest.raises(ProtocolError):
        reader.next_event()


MALFORMED_BODIES: list[tuple[str, bytes, str, bool]] = [
    ("missing-final-nul", b"user\x00u\x00", "08P01", False),
    ("garbage-after-nul", b"user\x00u\x00\x00xx", "08P01", False),
    ("duplicate-key", b"user\x00u\x00user\x00v\x00\x00", "08P01", False),
    ("missing-user", b"database\x00d\x00\x00", "28000", False),
    ("invalid-utf8", b"user\x00\xff\x00\x00", "08P01", False),
]


@pytest.mark.parametrize("inside_tls", [False, True])
@pytest.mark.parametrize(
    ("body", "sqlstate", "silent"),
    [(b, s, c) for _, b, s, c in MALFORMED_BODIES],
    ids=[i for i, _, _, _ in MALFORMED_BODIES],
)
def test_malformed_startup(inside_tls: bool, body: bytes, sqlstate: str, silent: bool) -> None:
    packet = struct.pack("!II", len(body) + 8, PROTOCOL_3_0) + body
    reader = StartupReader(inside_tls=inside_tls)
    with pytest.raises(ProtocolError) as info:
        feed(reader, packet, chunk=1)
    assert info.value.sqlstate == sqlstate
    assert info.value.close_silently is silent
    assert reader.bytes_needed() == 0


def test_protocol_2_refused() -> None:
    packet = struct.pack("!II", 9, 0x00020000) + b"\x00"
    with pytest.raises(ProtocolError) as info:
        feed(StartupReader(inside_tls=False), packet)
    assert info.value.sqlstate == "0A000"


@pytest.mark.parametrize("key_len", [3, 257])
def test_cancel_key_length_refused(key_len: int) -> None:
    packet = struct.pack("!III", 12 + key_len, CANCEL_REQUEST_CODE, 1) + bytes(key_len)
    with pytest.raises(ProtocolError) as info:
        feed(StartupReader(inside_tls=False), packet)
    assert info.value.close_silently


def test_need_data_is_a_singleton() -> None:
    assert repr(NEED_DATA) == "NEED_DATA"
    assert StartupReader(inside_tls=False).next_event() is NEED_DATA


def test_check_no_trailing_data() -> None:
    check_no_trailing_data(b"")
    with pytest.raises(ProtocolError) as info:
        check_no_trailing_data(b"\x00")
    assert info.value.message == "received unencrypted data after SSL request"
    assert info.value.sqlstate == "08P01"
    assert info.value.close_silently
