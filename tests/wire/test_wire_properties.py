"""Properties of the parsers on arbitrary input and valid messages."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from pgtls_proxy.wire import codec
from pgtls_proxy.wire.errors import ProtocolError
from pgtls_proxy.wire.frontend import NEED_DATA, StartupReader
from pgtls_proxy.wire.messages import (
    MAX_STARTUP_LENGTH,
    PROTOCOL_3_0,
    PROTOCOL_3_2,
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
)

FAST = settings(max_examples=200, deadline=None)

# Text a startup packet can carry: no NUL (it ends a String), no lone
# surrogates (not encodable as UTF-8).
c_text = st.text(
    st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"), max_size=50
)
names = c_text.filter(lambda s: s not in ("", "user"))

packet_prefixes = st.sampled_from(
    [
        b"",
        SSLRequest().encode(),
        GSSENCRequest().encode(),
        struct.pack("!I", 20) + struct.pack("!I", PROTOCOL_3_0),
        struct.pack("!I", 16) + struct.pack("!I", 80877102),
        struct.pack("!I", 10004),
    ]
)


@st.composite
def byte_streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    """Arbitrary bytes, often starting like a real packet, and read sizes."""
    data = draw(packet_prefixes) + draw(st.binary(max_size=300))
    chunks = draw(st.lists(st.integers(min_value=1, max_value=64), min_size=1, max_size=50))
    return data, chunks


def drive(reader: StartupReader, data: bytes, chunks: list[int]) -> None:
    """Feed like the I/O layer; assert the bounds on every step."""
    pos = 0
    step = 0
    while True:
        event = reader.next_event()
        if event is not NEED_DATA:
            assert isinstance(event, SSLRequest | GSSENCRequest | CancelRequest | StartupMessage)
            if reader.bytes_needed() == 0:
                return
            continue
        need = reader.bytes_needed()
        assert need > 0
        if pos >= len(data):
            return
        take = min(need, chunks[step % len(chunks)], len(data) - pos)
        step += 1
        reader.receive_data(data[pos : pos + take])
        pos += take
        assert len(reader._buf) <= MAX_STARTUP_LENGTH


@FAST
@given(byte_streams(), st.booleans())
def test_startup_reader_raises_only_protocol_error(
    stream: tuple[bytes, list[int]], inside_tls: bool
) -> None:
    data, chunks = stream
    reader = StartupReader(inside_tls=inside_tls)
    try:
        drive(reader, data, chunks)
    except ProtocolError as exc:
        assert exc.sqlstate in ("08P01", "28000", "0A000")
        assert reader.bytes_needed() == 0


@FAST
@given(st.integers(min_value=0, max_value=2**32 - 1), st.booleans())
def test_startup_reader_buffer_is_bounded(length: int, inside_tls: bool) -> None:
    """Whatever the length word says, at most 10004 bytes are ever asked for."""
    reader = StartupReader(inside_tls=inside_tls)
    reader.receive_data(struct.pack("!I", length))
    need = reader.bytes_needed()
    assert 4 + need <= MAX_STARTUP_LENGTH
    if need:
        reader.receive_data(b"\x00" * need)
        assert len(reader._buf) <= MAX_STARTUP_LENGTH


@st.composite
def startup_messages(draw: st.DrawFn) -> StartupMessage:
    protocol = draw(st.sampled_from([PROTOCOL_3_0, PROTOCOL_3_2, 0x0003FFFF]))
    others = draw(st.lists(st.tuples(names, c_text), max_size=8, unique_by=lambda p: p[0]))
    user = draw(c_text.filter(bool))
    where = draw(st.integers(min_value=0, max_value=len(others)))
    params = (*others[:where], ("user", user), *others[where:])
    return StartupMessage(protocol, tuple(params))


@FAST
@given(startup_messages(), st.integers(min_value=1, max_value=7))
def test_startup_message_round_trips(msg: StartupMessage, chunk: int) -> None:
    packet = msg.encode()
    assert codec.parse_startup_packet(packet) == msg
    assert codec.parse_startup_packet(packet).encode() == packet
    reader = StartupReader(inside_tls=True)
    pos = 0
    while (event := reader.next_event()) is NEED_DATA:
        take = min(chunk, reader.bytes_needed())
        reader.receive_data(packet[pos : pos + take])
        pos += take
    assert event == msg
    assert pos == len(packet)


@FAST
@given(startup_messages(), c_text.filter(bool))
def test_with_user_changes_only_the_user(msg: StartupMessage, user: str) -> None:
    other = msg.with_user(user)
    assert other.user == user
    assert [n for n, _ in other.params] == [n for n, _ in msg.params]
    assert [p for p in other.params if p[0] != "user"] == [p for p in msg.params if p[0] != "user"]
    assert codec.parse_startup_packet(other.encode()) == other


@FAST
@given(st.integers(min_value=0, max_value=2**32 - 1), st.binary(min_size=4, max_size=256))
def test_cancel_request_round_trips(pid: int, key: bytes) -> None:
    request = CancelRequest(pid, key)
    assert codec.parse_startup_packet(request.encode()) == request


@FAST
@given(
    st.binary(max_size=400),
    st.lists(st.integers(min_value=1, max_value=50), min_size=1, max_size=20),
    st.integers(min_value=4, max_value=200),
)
def test_message_reader_raises_only_protocol_error(
    data: bytes, chunks: list[int], max_message: int
) -> None:
    reader = codec.MessageReader(max_message=max_message)
    pos = 0
    step = 0
    try:
        while pos < len(data):
            take = chunks[step % len(chunks)]
            step += 1
            reader.feed(data[pos : pos + take])
            pos += take
            while (message := reader.next_message()) is not None:
                msg_type, payload = message
                assert len(msg_type) == 1
                assert len(payload) + 4 <= max_message
    except ProtocolError:
        return


@FAST
@given(st.lists(st.tuples(st.binary(min_size=1, max_size=1), st.binary(max_size=40)), max_size=10))
def test_message_reader_round_trips(messages: list[tuple[bytes, bytes]]) -> None:
    stream = b"".join(codec.encode_message(t, p) for t, p in messages)
    reader = codec.MessageReader()
    got = []
    for byte in stream:
        reader.feed(bytes([byte]))
        while (message := reader.next_message()) is not None:
            got.append(message)
    assert got == messages
    assert reader.buffered() == b""


@FAST
@given(st.binary(max_size=200))
def test_parse_error_fields_raises_only_protocol_error(payload: bytes) -> None:
    try:
        fields = codec.parse_error_fields(payload)
    except ProtocolError:
        return
    assert all(len(code) == 1 for code in fields)


@FAST
@given(st.binary(max_size=300))
def test_parse_startup_packet_raises_only_protocol_error(body: bytes) -> None:
    for packet in (body, struct.pack("!I", len(body) + 4) + body):
        try:
            codec.parse_startup_packet(packet)
        except ProtocolError:
            pass
