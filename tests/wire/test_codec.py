"""Byte tables for the startup parser, the message events and the builders."""

from __future__ import annotations

import struct

import pytest

from pgtls_proxy.wire import codec
from pgtls_proxy.wire.errors import ProtocolError
from pgtls_proxy.wire.messages import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    MAX_CANCEL_KEY,
    MAX_STARTUP_PAYLOAD,
    MIN_STARTUP_LENGTH,
    PROTOCOL_3_0,
    PROTOCOL_3_2,
    SSL_REQUEST_CODE,
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
)


def startup_bytes(protocol: int, body: bytes) -> bytes:
    """A startup packet around ``body`` (pairs and terminator, as given)."""
    return struct.pack("!II", len(body) + 8, protocol) + body


def cancel_bytes(pid: int, key: bytes) -> bytes:
    return struct.pack("!III", 12 + len(key), CANCEL_REQUEST_CODE, pid) + key


# ---------------------------------------------------------------- constants


def test_constants() -> None:
    assert SSL_REQUEST_CODE == 80877103 == (1234 << 16) | 5679
    assert GSSENC_REQUEST_CODE == 80877104 == (1234 << 16) | 5680
    assert CANCEL_REQUEST_CODE == 80877102 == (1234 << 16) | 5678
    assert PROTOCOL_3_0 == 196608
    assert PROTOCOL_3_2 == 196610
    assert MAX_STARTUP_PAYLOAD == 10000
    assert MIN_STARTUP_LENGTH == 8
    assert MAX_CANCEL_KEY == 256
    assert (codec.AUTH_OK, codec.AUTH_CLEARTEXT, codec.AUTH_MD5) == (0, 3, 5)
    assert (codec.AUTH_GSS, codec.AUTH_GSS_CONTINUE, codec.AUTH_SSPI) == (7, 8, 9)
    assert (codec.AUTH_SASL, codec.AUTH_SASL_CONTINUE, codec.AUTH_SASL_FINAL) == (10, 11, 12)


# ---------------------------------------------------------------- valid packets

USER_DB = b"user\x00alice\x00database\x00sales\x00\x00"

VALID_PACKETS: list[tuple[str, bytes, object]] = [
    ("ssl", bytes.fromhex("0000000804d2162f"), SSLRequest()),
    ("gssenc", bytes.fromhex("0000000804d21630"), GSSENCRequest()),
    (
        "cancel-3.0",
        bytes.fromhex("0000001004d2162e0000303912345678"),
        CancelRequest(12345, bytes.fromhex("12345678")),
    ),
    (
        "cancel-3.2-32",
        cancel_bytes(7, bytes(range(32))),
        CancelRequest(7, bytes(range(32))),
    ),
    (
        "cancel-3.2-256",
        cancel_bytes(2**32 - 1, bytes(256)),
        CancelRequest(2**32 - 1, bytes(256)),
    ),
    (
        "startup-user-db",
        startup_bytes(PROTOCOL_3_0, USER_DB),
        StartupMessage(PROTOCOL_3_0, (("user", "alice"), ("database", "sales"))),
    ),
    (
        "startup-user-only",
        startup_bytes(PROTOCOL_3_0, b"user\x00alice\x00\x00"),
        StartupMessage(PROTOCOL_3_0, (("user", "alice"),)),
    ),
    (
        "startup-3.2-pq",
        startup_bytes(
            PROTOCOL_3_2,
            b"database\x00d\x00_pq_.compression\x00on\x00user\x00u\x00"
            b"application_name\x00psql\x00\x00",
        ),
        StartupMessage(
            PROTOCOL_3_2,
            (
                ("database", "d"),
                ("_pq_.compression", "on"),
                ("user", "u"),
                ("application_name", "psql"),
            ),
        ),
    ),
    (
        "startup-3.7-future-minor",
        startup_bytes(0x00030007, b"user\x00u\x00\x00"),
        StartupMessage(0x00030007, (("user", "u"),)),
    ),
    (
        "startup-utf8-empty-value",
        startup_bytes(PROTOCOL_3_0, "user\x00zoë\x00options\x00\x00\x00".encode()),
        StartupMessage(PROTOCOL_3_0, (("user", "zoë"), ("options", ""))),
    ),
]


@pytest.mark.parametrize(
    ("packet", "event"), [(p, e) for _, p, e in VALID_PACKETS], ids=[i for i, _, _ in VALID_PACKETS]
)
def test_parse_valid(packet: bytes, event: object) -> None:
    assert codec.parse_startup_packet(packet) == event


@pytest.mark.parametrize(
    "packet", [p for _, p, _ in VALID_PACKETS], ids=[i for i, _, _ in VALID_PACKETS]
)
def test_encode_round_trips_byte_exact(packet: bytes) -> None:
    event = codec.parse_startup_packet(packet)
    assert isinstance(event, SSLRequest | GSSENCRequest | CancelRequest | StartupMessage)
    assert event.encode() == packet


def test_ssl_request_exact_bytes() -> None:
    assert SSLRequest().encode() == b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
    assert GSSENCRequest().encode() == b"\x00\x00\x00\x08\x04\xd2\x16\x30"


def test_startup_properties() -> None:
    msg = codec.parse_startup_packet(startup_bytes(PROTOCOL_3_0, USER_DB))
    assert isinstance(msg, StartupMessage)
    assert msg.user == "alice"
    assert msg.database == "sales"
    assert msg.get("database") == "sales"
    assert msg.get("application_name") is None


@pytest.mark.parametrize("body", [b"user\x00bob\x00\x00", b"user\x00bob\x00database\x00\x00\x00"])
def test_database_defaults_to_user(body: bytes) -> None:
    msg = codec.parse_startup_packet(startup_bytes(PROTOCOL_3_0, body))
    assert isinstance(msg, StartupMessage)
    assert msg.database == "bob"


def test_with_user_keeps_order_and_other_params() -> None:
    packet = startup_bytes(
        PROTOCOL_3_2,
        b"database\x00db\x00user\x00alice\x00_pq_.x\x00y\x00options\x00-c a=b\x00\x00",
    )
    msg = codec.parse_startup_packet(packet)
    assert isinstance(msg, StartupMessage)
    other = msg.with_user("app_rw")
    assert other.params == (
        ("database", "db"),
        ("user", "app_rw"),
        ("_pq_.x", "y"),
        ("options", "-c a=b"),
    )
    assert other.protocol == PROTOCOL_3_2
    assert other.encode() == startup_bytes(
        PROTOCOL_3_2,
        b"database\x00db\x00user\x00app_rw\x00_pq_.x\x00y\x00options\x00-c a=b\x00\x00",
    )
    assert msg.user == "alice"  # the original is untouched
    assert codec.parse_startup_packet(other.encode()) == other


def test_with_user_empty_is_refused() -> None:
    msg = StartupMessage(PROTOCOL_3_0, (("user", "a"),))
    with pytest.raises(ProtocolError):
        msg.with_user("")


def test_maximum_length_packet_is_accepted() -> None:
    filler = "x" * (MAX_STARTUP_PAYLOAD - 4 - len(b"user\x00u\x00a\x00") - 2)
    body = b"user\x00u\x00a\x00" + filler.encode() + b"\x00\x00"
    packet = startup_bytes(PROTOCOL_3_0, body)
    assert len(packet) == MAX_STARTUP_PAYLOAD + 4
    msg = codec.parse_startup_packet(packet)
    assert isinstance(msg, StartupMessage)
    assert msg.encode() == packet


# ---------------------------------------------------------------- malformed packets

MALFORMED: list[tuple[str, bytes, str, bool]] = [
    # (id, packet, sqlstate, close_silently)
    ("empty", b"", "08P01", True),
    ("three-bytes", b"\x00\x00\x00", "08P01", True),
    ("length-0", b"\x00\x00\x00\x00", "08P01", True),
    ("length-7", b"\x00\x00\x00\x07\x00\x03\x00", "08P01", True),
    ("length-10005", struct.pack("!II", 10005, PROTOCOL_3_0) + bytes(10005 - 8), "08P01", True),
    ("length-2**31-1", struct.pack("!II", 2**31 - 1, PROTOCOL_3_0), "08P01", True),
    ("length-2**32-1", struct.pack("!II", 2**32 - 1, PROTOCOL_3_0), "08P01", True),
    (
        "length-word-short-of-packet",
        struct.pack("!II", 20, PROTOCOL_3_0) + b"user\x00u\x00\x00",
        "08P01",
        True,
    ),
    (
        "length-word-beyond-packet",
        struct.pack("!II", 40, PROTOCOL_3_0) + b"user\x00u\x00\x00",
        "08P01",
        True,
    ),
    ("ssl-length-12", struct.pack("!III", 12, SSL_REQUEST_CODE, 0), "08P01", True),
    ("gssenc-length-9", struct.pack("!IIB", 9, GSSENC_REQUEST_CODE, 0), "08P01", True),
    ("cancel-no-key", struct.pack("!III", 12, CANCEL_REQUEST_CODE, 1), "08P01", True),
    ("cancel-key-3", cancel_bytes(1, b"abc"), "08P01", True),
    ("cancel-key-257", cancel_bytes(1, bytes(257)), "08P01", True),
    ("cancel-length-8", struct.pack("!II", 8, CANCEL_REQUEST_CODE), "08P01", True),
    ("missing-final-nul", startup_bytes(PROTOCOL_3_0, b"user\x00u\x00"), "08P01", False),
    ("missing-value", startup_bytes(PROTOCOL_3_0, b"user\x00u\x00database"), "08P01", False),
    ("missing-value-nul", startup_bytes(PROTOCOL_3_0, b"user\x00u\x00db\x00x"), "08P01", False),
    ("no-params-at-all", startup_bytes(PROTOCOL_3_0, b""), "08P01", False),
    (
        "garbage-after-final-nul",
        startup_bytes(PROTOCOL_3_0, b"user\x00u\x00\x00junk"),
        "08P01",
        False,
    ),
    (
        "two-final-nuls",
        startup_bytes(PROTOCOL_3_0, b"user\x00u\x00\x00\x00"),
        "08P01",
        False,
    ),
    (
        "duplicate-key",
        startup_bytes(PROTOCOL_3_0, b"user\x00a\x00user\x00b\x00\x00"),
        "08P01",
        False,
    ),
    (
        "duplicate-other-key",
        startup_bytes(PROTOCOL_3_0, b"user\x00a\x00x\x001\x00x\x002\x00\x00"),
        "08P01",
        False,
    ),
    ("missing-user", startup_bytes(PROTOCOL_3_0, b"database\x00d\x00\x00"), "28000", False),
    ("only-terminator", startup_bytes(PROTOCOL_3_0, b"\x00"), "28000", False),
    ("empty-user", startup_bytes(PROTOCOL_3_0, b"user\x00\x00\x00"), "28000", False),
    ("protocol-2.0", startup_bytes(0x00020000, b"user\x00u\x00\x00"), "0A000", False),
    ("protocol-4.0", startup_bytes(0x00040000, b"user\x00u\x00\x00"), "0A000", False),
    ("protocol-1234.5681", startup_bytes((1234 << 16) | 5681, b"\x00"), "0A000", False),
    (
        "invalid-utf8-value",
        startup_bytes(PROTOCOL_3_0, b"user\x00\xff\xfe\x00\x00"),
        "08P01",
        False,
    ),
    (
        "invalid-utf8-name",
        startup_bytes(PROTOCOL_3_0, b"user\x00u\x00\xc3\x28\x00v\x00\x00"),
        "08P01",
        False,
    ),
]


@pytest.mark.parametrize(
    ("packet", "sqlstate", "silent"),
    [(p, s, c) for _, p, s, c in MALFORMED],
    ids=[i for i, _, _, _ in MALFORMED],
)
def test_parse_malformed(packet: bytes, sqlstate: str, silent: bool) -> None:
    with pytest.raises(ProtocolError) as info:
        codec.parse_startup_packet(packet)
    assert info.value.sqlstate == sqlstate
    assert info.value.close_silently is silent
    assert str(info.value) == info.value.message


def test_missing_user_message_is_postgresqls() -> None:
    with pytest.raises(ProtocolError, match="no PostgreSQL user name specified"):
        codec.parse_startup_packet(startup_bytes(PROTOCOL_3_0, b"\x00"))


def test_protocol_2_message() -> None:
    with pytest.raises(ProtocolError, match=r"unsupported frontend protocol 2\.0"):
        codec.parse_startup_packet(startup_bytes(0x00020000, b"\x00"))


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"\x00\x00\x00\x08", 8),
        (b"\x00\x00\x27\x14", 10004),
        (b"\x00\x00\x00\x10\xff\xff", 16),  # only the first 4 bytes count
    ],
)
def test_startup_length_valid(header: bytes, expected: int) -> None:
    assert codec.startup_length(header) == expected


@pytest.mark.parametrize("length", [0, 4, 7, 10005, 2**31 - 1, 2**32 - 1])
def test_startup_length_invalid(length: int) -> None:
    with pytest.raises(ProtocolError) as info:
        codec.startup_length(struct.pack("!I", length))
    assert info.value.close_silently


def test_startup_length_needs_four_bytes() -> None:
    with pytest.raises(ValueError):
        codec.startup_length(b"\x00\x00\x00")


# ---------------------------------------------------------------- event validation


@pytest.mark.parametrize(
    ("pid", "key"),
    [(1, b"abc"), (1, bytes(257)), (-1, b"abcd"), (2**32, b"abcd")],
)
def test_cancel_request_validates(pid: int, key: bytes) -> None:
    with pytest.raises(ProtocolError):
        CancelRequest(pid, key)


@pytest.mark.parametrize(
    ("protocol", "params", "sqlstate"),
    [
        (PROTOCOL_3_0, (), "28000"),
        (PROTOCOL_3_0, (("user", ""),), "28000"),
        (PROTOCOL_3_0, (("", "x"), ("user", "u")), "08P01"),
        (PROTOCOL_3_0, (("user", "u\x00v"),), "08P01"),
        (PROTOCOL_3_0, (("us\x00er", "u"),), "08P01"),
        (PROTOCOL_3_0, (("user", "u"), ("user", "v")), "08P01"),
        (PROTOCOL_3_0, (("user", "u" * 10_000),), "08P01"),
        (0x00020000, (("user", "u"),), "0A000"),
        (-1, (("user", "u"),), "0A000"),
        (2**32 + PROTOCOL_3_0, (("user", "u"),), "0A000"),
    ],
)
def test_startup_message_validates(
    protocol: int, params: tuple[tuple[str, str], ...], sqlstate: str
) -> None:
    with pytest.raises(ProtocolError) as info:
        StartupMessage(protocol, params)
    assert info.value.sqlstate == sqlstate


def test_events_are_frozen() -> None:
    msg = StartupMessage(PROTOCOL_3_0, (("user", "u"),))
    with pytest.raises(AttributeError):
        msg.protocol = PROTOCOL_3_2  # type: ignore[misc]
    assert not hasattr(msg, "__dict__")


# ---------------------------------------------------------------- typed messages


def test_encode_message() -> None:
    assert codec.encode_message(b"Z", b"I") == b"Z\x00\x00\x00\x05I"
    with pytest.raises(ValueError):
        codec.encode_message(b"ZZ", b"")
    with pytest.raises(ValueError):
        codec.encode_message(b"", b"")


def test_fixed_builders() -> None:
    assert codec.authentication_ok() == b"R\x00\x00\x00\x08\x00\x00\x00\x00"
    assert codec.terminate() == b"X\x00\x00\x00\x04"
    assert codec.ready_for_query() == b"Z\x00\x00\x00\x05I"
    assert codec.ready_for_query(b"T") == b"Z\x00\x00\x00\x05T"
    assert codec.ready_for_query(b"E") == b"Z\x00\x00\x00\x05E"
    with pytest.raises(ValueError):
        codec.ready_for_query(b"X")
    assert codec.parameter_status("TimeZone", "UTC") == b"S\x00\x00\x00\x11TimeZone\x00UTC\x00"
    with pytest.raises(ValueError):
        codec.parameter_status("a\x00", "b")


def test_password_and_sasl_messages() -> None:
    assert codec.password_message(b"secret\x00") == b"p\x00\x00\x00\x0bsecret\x00"
    for bad in (b"secret", b"sec\x00ret\x00", b"secret\x00\x00"):
        with pytest.raises(ValueError):
            codec.password_message(bad)
    assert codec.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc") == (
        b"p\x00\x00\x00\x21SCRAM-SHA-256\x00\x00\x00\x00\x0bn,,n=,r=abc"
    )
    assert codec.sasl_initial_response("SCRAM-SHA-256", None) == (
        b"p\x00\x00\x00\x16SCRAM-SHA-256\x00\xff\xff\xff\xff"
    )
    assert codec.sasl_initial_response("X", b"") == b"p\x00\x00\x00\x0aX\x00\x00\x00\x00\x00"
    with pytest.raises(ValueError):
        codec.sasl_initial_response("", b"")
    assert codec.sasl_response(b"c=biws") == b"p\x00\x00\x00\x0ac=biws"


@pytest.mark.parametrize("key", [b"\x01\x02\x03\x04", bytes(range(32)), bytes(256)])
def test_backend_key_data_round_trip(key: bytes) -> None:
    encoded = codec.backend_key_data(4242, key)
    assert encoded[:1] == b"K"
    assert struct.unpack("!I", encoded[1:5])[0] == 4 + 4 + len(key)
    assert codec.parse_backend_key_data(encoded[5:]) == (4242, key)


@pytest.mark.parametrize(("pid", "key"), [(1, b"abc"), (1, bytes(257)), (-1, b"abcd")])
def test_backend_key_data_refuses_bad_arguments(pid: int, key: bytes) -> None:
    with pytest.raises(ValueError):
        codec.backend_key_data(pid, key)


@pytest.mark.parametrize("payload", [b"", b"\x00\x00\x00\x01", b"\x00\x00\x00\x01abc", bytes(261)])
def test_parse_backend_key_data_refuses(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        codec.parse_backend_key_data(payload)


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"\x00\x00\x00\x00", (codec.AUTH_OK, b"")),
        (b"\x00\x00\x00\x05salt", (codec.AUTH_MD5, b"salt")),
        (b"\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00", (codec.AUTH_SASL, b"SCRAM-SHA-256\x00\x00")),
    ],
)
def test_parse_authentication(payload: bytes, expected: tuple[int, bytes]) -> None:
    assert codec.parse_authentication(payload) == expected


def test_parse_authentication_truncated() -> None:
    with pytest.raises(ProtocolError):
        codec.parse_authentication(b"\x00\x00\x00")


# ---------------------------------------------------------------- ErrorResponse


def test_error_response_exact_bytes() -> None:
    payload = b"SFATAL\x00VFATAL\x00C28000\x00Mno\x00\x00"
    assert codec.error_response("FATAL", "28000", "no") == (
        b"E" + struct.pack("!I", len(payload) + 4) + payload
    )


@pytest.mark.parametrize(
    ("detail", "hint"), [(None, None), ("some detail", None), (None, "a hint"), ("d", "h")]
)
def test_error_response_parses_back(detail: str | None, hint: str | None) -> None:
    encoded = codec.error_response(
        "FATAL", "28000", 'certificate "CN=zoë" may not log in', detail=detail, hint=hint
    )
    reader = codec.MessageReader()
    reader.feed(encoded)
    message = reader.next_message()
    assert message is not None
    msg_type, payload = message
    assert msg_type == b"E"
    expected = {
        "S": "FATAL",
        "V": "FATAL",
        "C": "28000",
        "M": 'certificate "CN=zoë" may not log in',
    }
    if detail is not None:
        expected["D"] = detail
    if hint is not None:
        expected["H"] = hint
    assert codec.parse_error_fields(payload) == expected
    assert list(codec.parse_error_fields(payload)) == list(expected)


def test_error_response_neutralises_nul() -> None:
    encoded = codec.error_response("FATAL", "28000", "a\x00Cb")
    fields = codec.parse_error_fields(encoded[5:])
    assert fields["C"] == "28000"
    assert fields["M"] == "a\ufffdCb"


@pytest.mark.parametrize(
    ("severity", "sqlstate"), [("", "28000"), ("FATAL", "2800"), ("F", "28a00")]
)
def test_error_response_refuses_bad_arguments(severity: str, sqlstate: str) -> None:
    with pytest.raises(ValueError):
        codec.error_response(severity, sqlstate, "m")


@pytest.mark.parametrize(
    "payload",
    [b"", b"SFATAL", b"SFATAL\x00", b"SFATAL\x00\x00junk", b"\x00\x00", b"M"],
)
def test_parse_error_fields_garbage(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        codec.parse_error_fields(payload)


def test_parse_error_fields_tolerates_other_encodings() -> None:
    assert codec.parse_error_fields(b"Mcaf\xe9\x00\x00") == {"M": "caf\ufffd"}


def test_parse_error_fields_empty() -> None:
    assert codec.parse_error_fields(b"\x00") == {}


# ---------------------------------------------------------------- MessageReader

STREAM = (
    codec.authentication_ok()
    + codec.parameter_status("server_version", "17.2")
    + codec.backend_key_data(99, b"abcd")
    + codec.encode_message(b"N", b"")
    + codec.ready_for_query()
)
EXPECTED = [
    (b"R", b"\x00\x00\x00\x00"),
    (b"S", b"server_version\x0017.2\x00"),
    (b"K", b"\x00\x00\x00\x63abcd"),
    (b"N", b""),
    (b"Z", b"I"),
]


def drain(reader: codec.MessageReader) -> list[tuple[bytes, bytes]]:
    out = []
    while (message := reader.next_message()) is not None:
        out.append(message)
    return out


@pytest.mark.parametrize("chunk", [1, 2, 3, 5, 7, len(STREAM)])
def test_message_reader_split_feeds(chunk: int) -> None:
    reader = codec.MessageReader()
    got = []
    for start in range(0, len(STREAM), chunk):
        reader.feed(STREAM[start : start + chunk])
        got.extend(drain(reader))
    assert got == EXPECTED
    assert reader.buffered() == b""


def test_message_reader_buffered_returns_leftover_once() -> None:
    reader = codec.MessageReader()
    reader.feed(codec.ready_for_query() + b"Q\x00\x00\x00\x09SEL")
    assert reader.next_message() == (b"Z", b"I")
    assert reader.next_message() is None
    assert reader.buffered() == b"Q\x00\x00\x00\x09SEL"
    assert reader.buffered() == b""
    assert reader.next_message() is None


@pytest.mark.parametrize("length", [0, 1, 3])
def test_message_reader_length_below_four(length: int) -> None:
    reader = codec.MessageReader()
    reader.feed(b"Z" + struct.pack("!I", length))
    with pytest.raises(ProtocolError):
        reader.next_message()


def test_message_reader_oversize_fails_from_the_header() -> None:
    reader = codec.MessageReader(max_message=100)
    reader.feed(b"D" + struct.pack("!I", 101))
    with pytest.raises(ProtocolError, match="limit"):
        reader.next_message()


def test_message_reader_at_the_limit() -> None:
    reader = codec.MessageReader(max_message=100)
    reader.feed(codec.encode_message(b"D", bytes(96)))
    assert reader.next_message() == (b"D", bytes(96))


def test_message_reader_default_limit() -> None:
    reader = codec.MessageReader()
    assert reader.max_message == 1 << 20
    reader.feed(b"D" + struct.pack("!I", (1 << 20) + 1))
    with pytest.raises(ProtocolError):
        reader.next_message()
    reader = codec.MessageReader()
    reader.feed(b"D" + struct.pack("!I", 2**32 - 1))
    with pytest.raises(ProtocolError):
        reader.next_message()
