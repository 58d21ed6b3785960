"""PROXY protocol v1/v2 parsing: valid headers, malformed ones, and read bounds."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgtls_proxy.wire.proxyproto import (
    MAX_V1,
    MAX_V2,
    V2_SIGNATURE,
    ProxyHeader,
    ProxyProtocolError,
    bytes_needed,
    parse_proxy_header,
)

FAST = settings(max_examples=300, deadline=None)

# What follows a header on a real connection: an SSLRequest or a TLS record.
SSL_REQUEST = struct.pack("!II", 8, 80877103)
TLS_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"

PROXY, LOCAL = 0x21, 0x20
INET_STREAM, INET6_STREAM, UNIX_STREAM, UNSPEC = 0x11, 0x21, 0x31, 0x00


def v2(
    body: bytes, *, ver_cmd: int = PROXY, fam: int = INET_STREAM, length: int | None = None
) -> bytes:
    size = len(body) if length is None else length
    return V2_SIGNATURE + bytes([ver_cmd, fam]) + struct.pack("!H", size) + body


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def inet4(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (
        ipaddress.IPv4Address(src).packed
        + ipaddress.IPv4Address(dst).packed
        + struct.pack("!HH", sport, dport)
    )


def inet6(src: str, dst: str, sport: int, dport: int) -> bytes:
    return (
        ipaddress.IPv6Address(src).packed
        + ipaddress.IPv6Address(dst).packed
        + struct.pack("!HH", sport, dport)
    )


TLVS = tlv(0x01, b"postgresql") + tlv(0x02, b"db.example.com") + tlv(0x04, b"\x00" * 3)

VALID = [
    pytest.param(
        b"PROXY TCP4 192.0.2.10 198.51.100.1 56324 6432\r\n",
        ProxyHeader(("192.0.2.10", 56324), ("198.51.100.1", 6432), 1),
        id="v1-tcp4",
    ),
    pytest.param(
        b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
        ProxyHeader(("0.0.0.0", 0), ("255.255.255.255", 65535), 1),
        id="v1-tcp4-extremes",
    ),
    pytest.param(
        b"PROXY TCP6 2001:db8::1 2001:DB8:0:0:0:0:0:2 40000 6432\r\n",
        ProxyHeader(("2001:db8::1", 40000), ("2001:db8::2", 6432), 1),
        id="v1-tcp6",
    ),
    pytest.param(
        b"PROXY TCP6 ::ffff:192.0.2.10 :: 1 2\r\n",
        ProxyHeader((str(ipaddress.IPv6Address("::ffff:192.0.2.10")), 1), ("::", 2), 1),
        id="v1-tcp6-mapped",
    ),
    pytest.param(
        b"PROXY TCP4 0.0.0.0 0.0.0.0 0 0\r\n",
        ProxyHeader(("0.0.0.0", 0), ("0.0.0.0", 0), 1),
        id="v1-tcp4-shortest",
    ),
    pytest.param(
        b"PROXY TCP6 :: :: 0 0\r\n", ProxyHeader(("::", 0), ("::", 0), 1), id="v1-tcp6-shortest"
    ),
    pytest.param(b"PROXY UNKNOWN\r\n", ProxyHeader(None, None, 1), id="v1-unknown"),
    pytest.param(
        b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
        ProxyHeader(None, None, 1),
        id="v1-unknown-with-junk",
    ),
    pytest.param(
        v2(inet4("192.0.2.10", "198.51.100.1", 56324, 6432)),
        ProxyHeader(("192.0.2.10", 56324), ("198.51.100.1", 6432), 2),
        id="v2-tcp4",
    ),
    pytest.param(
        v2(inet4("10.1.2.3", "10.0.0.1", 5555, 6432) + TLVS),
        ProxyHeader(("10.1.2.3", 5555), ("10.0.0.1", 6432), 2),
        id="v2-tcp4-tlvs",
    ),
    pytest.param(
        v2(inet6("2001:db8::1", "2001:db8::2", 40000, 6432) + TLVS, fam=INET6_STREAM),
        ProxyHeader(("2001:db8::1", 40000), ("2001:db8::2", 6432), 2),
        id="v2-tcp6-tlvs",
    ),
    pytest.param(v2(b"", ver_cmd=LOCAL, fam=UNSPEC), ProxyHeader(None, None, 2), id="v2-local"),
    pytest.param(
        v2(inet4("10.9.9.9", "10.0.0.1", 1, 2), ver_cmd=LOCAL),
        ProxyHeader(None, None, 2),
        id="v2-local-ignores-addresses",
    ),
    pytest.param(
        v2(b"\x00" * 216 + TLVS, fam=UNIX_STREAM), ProxyHeader(None, None, 2), id="v2-unix"
    ),
    pytest.param(v2(b"", fam=UNSPEC), ProxyHeader(None, None, 2), id="v2-proxy-unspec"),
    pytest.param(
        v2(inet4("192.0.2.1", "192.0.2.2", 1, 2) + b"\x00" * (MAX_V2 - 16 - 12)),
        ProxyHeader(("192.0.2.1", 1), ("192.0.2.2", 2), 2),
        id="v2-at-size-bound",
    ),
]


@pytest.mark.parametrize(("header", "expected"), VALID)
@pytest.mark.parametrize("after", [b"", SSL_REQUEST, TLS_HELLO])
def test_valid_header_and_what_follows(header: bytes, expected: ProxyHeader, after: bytes) -> None:
    assert parse_proxy_header(header + after) == (expected, len(header))
    assert bytes_needed(header + after) == 0


@pytest.mark.parametrize(("header", "expected"), VALID)
def test_fed_one_byte_at_a_time(header: bytes, expected: ProxyHeader) -> None:
    for end in range(len(header)):
        assert parse_proxy_header(header[:end]) is None
        assert bytes_needed(header[:end]) >= 1
    assert parse_proxy_header(header) == (expected, len(header))


def read_like_the_session(stream: bytes, most: int) -> tuple[ProxyHeader, int, int]:
    """Read as session.py does, the socket returning at most ``most`` bytes a time.

    Returns the header, the bytes it consumed and the bytes read.
    """
    buf = b""
    while (parsed := parse_proxy_header(buf)) is None:
        want = bytes_needed(buf)
        assert want >= 1
        buf += stream[len(buf) : len(buf) + min(want, most)]
    return parsed[0], parsed[1], len(buf)


@pytest.mark.parametrize(("header", "expected"), VALID)
def test_reads_never_pass_the_header(header: bytes, expected: ProxyHeader) -> None:
    for most in [*range(1, 24), MAX_V2]:
        parsed, consumed, read = read_like_the_session(header + TLS_HELLO * 20, most)
        assert parsed == expected
        assert consumed == read == len(header), f"short reads of {most}"


def test_v2_reads_its_length_in_one_go() -> None:
    header = v2(inet4("10.1.2.3", "10.0.0.1", 5555, 6432) + TLVS)
    assert bytes_needed(b"") == 15
    assert bytes_needed(header[:15]) == 1
    assert bytes_needed(header[:16]) == len(header) - 16


def test_v1_reads_in_few_steps() -> None:
    header = b"PROXY TCP4 192.168.100.200 10.0.0.1 56324 6432\r\n"
    steps = []
    buf = b""
    while parse_proxy_header(buf) is None:
        steps.append(bytes_needed(buf))
        buf = header[: len(buf) + steps[-1]]
    assert len(steps) <= 8
    assert bytes_needed(b"PROXY TCP4 1.1.1.1 2.2.2.2 1 2\r") == 1


MALFORMED = [
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http"),
    pytest.param(SSL_REQUEST, id="sslrequest-without-header"),
    pytest.param(TLS_HELLO, id="tls-without-header"),
    pytest.param(b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n", id="v1-lowercase"),
    pytest.param(b"PROXY  TCP4 1.2.3.4 5.6.7.8 1 2\r\n", id="v1-double-space"),
    pytest.param(b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", id="v1-udp"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 70000 6432\r\n", id="v1-port-70000"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 0080 6432\r\n", id="v1-port-leading-zero"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 6432\r\n", id="v1-port-negative"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", id="v1-missing-port"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", id="v1-extra-field"),
    pytest.param(b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", id="v1-octet-256"),
    pytest.param(b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", id="v1-octet-leading-zero"),
    pytest.param(b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", id="v1-ipv4-in-tcp6"),
    pytest.param(b"PROXY TCP4 ::1 ::1 1 2\r\n", id="v1-ipv6-in-tcp4"),
    pytest.param(b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", id="v1-scope-id"),
    pytest.param(b"PROXY TCP6 2001:db8::1::2 ::1 1 2\r\n", id="v1-bad-ipv6"),
    pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", id="v1-lf-only"),
    pytest.param(b"PROXY UNKNOWN\n\r\n", id="v1-lone-lf"),
    pytest.param(b"PROXY UNKNOWN\rX\r\n", id="v1-lone-cr"),
    pytest.param(b"PROXY UNKNOWN " + b"x" * (MAX_V1 - 14), id="v1-no-crlf-in-107"),
    pytest.param(b"PROXY UNKNOWN " + b"x" * (MAX_V1 - 15) + b"\r\n", id="v1-crlf-at-108"),
    pytest.param(b"PROXY TCP4 " + b"1" * 120 + b"\r\n", id="v1-overlong-field"),
    pytest.param(V2_SIGNATURE[:11] + b"X" + b"\x21\x11\x00\x0c" + b"\x00" * 12, id="v2-bad-sig"),
    pytest.param(b"\r\n\r\n\x00\r\nQUIX\n" + b"\x21\x11\x00\x00", id="v2-bad-sig-2"),
    pytest.param(v2(inet4("1.2.3.4", "5.6.7.8", 1, 2), ver_cmd=0x31), id="v2-version-3"),
    pytest.param(v2(inet4("1.2.3.4", "5.6.7.8", 1, 2), ver_cmd=0x11), id="v2-version-1"),
    pytest.param(v2(inet4("1.2.3.4", "5.6.7.8", 1, 2), ver_cmd=0x22), id="v2-command-2"),
    pytest.param(v2(inet4("1.2.3.4", "5.6.7.8", 1, 2), fam=0x41), id="v2-family-4"),
    pytest.param(v2(inet4("1.2.3.4", "5.6.7.8", 1, 2), fam=0x13), id="v2-transport-3"),
    pytest.param(v2(b"\x00" * 8), id="v2-inet-block-short"),
    pytest.param(v2(b"\x00" * 12, fam=INET6_STREAM), id="v2-inet6-block-short"),
    pytest.param(v2(b"\x00" * 100, fam=UNIX_STREAM), id="v2-unix-block-short"),
    pytest.param(v2(b"", length=MAX_V2 - 16 + 1), id="v2-length-over-bound"),
    pytest.param(v2(b"", length=0xFFFF), id="v2-length-max"),
]


@pytest.mark.parametrize("data", MALFORMED)
def test_malformed_is_refused(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(data)
    assert bytes_needed(data) == 0


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"G", id="first-byte"),
        pytest.param(b"\x16", id="tls-record"),
        pytest.param(b"PROXY HELLO", id="v1-protocol"),
        pytest.param(b"PROXY TCP4 1.2.3.4x", id="v1-address-char"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 999999", id="v1-port-length"),
        pytest.param(b"PROXY TCP4 1.2.3.4 5.6.7.8 01", id="v1-port-zero"),
        pytest.param(b"PROXY TCP4 1.2.3.999 ", id="v1-complete-address"),
        pytest.param(b"PROXY TCP6 " + b"a" * 46, id="v1-address-length"),
        pytest.param(V2_SIGNATURE + b"\x31", id="v2-version"),
        pytest.param(V2_SIGNATURE + b"\x21\x51", id="v2-family"),
        pytest.param(V2_SIGNATURE + b"\x21\x11\xff\xff", id="v2-length"),
    ],
)
def test_malformed_is_refused_before_it_is_complete(data: bytes) -> None:
    """An impostor is dropped on its first packet, not at the handshake timeout."""
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(data)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"PROX", id="v1-prefix"),
        pytest.param(b"PROXY TCP4 10.0.0.1 10.0.0.2 5555 6432", id="v1-no-crlf-yet"),
        pytest.param(b"PROXY TCP4 10.0.0.1 10.0.0.2 5555 6432\r", id="v1-cr-only"),
        pytest.param(V2_SIGNATURE[:5], id="v2-signature-prefix"),
        pytest.param(V2_SIGNATURE + b"\x21\x11\x00", id="v2-no-length-yet"),
        pytest.param(v2(b"\x00" * 8, length=12), id="v2-truncated-block"),
        pytest.param(
            v2(inet4("1.2.3.4", "5.6.7.8", 1, 2) + TLVS[:5], length=12 + len(TLVS)),
            id="v2-truncated-tlvs",
        ),
    ],
)
def test_truncated_needs_more(data: bytes) -> None:
    assert parse_proxy_header(data) is None
    assert bytes_needed(data) >= 1


# ------------------------------------------------------------------ properties


def check_arbitrary(data: bytes) -> None:
    try:
        parsed = parse_proxy_header(data)
    except ProxyProtocolError:
        parsed, complete = None, True
    else:
        complete = parsed is not None
    if parsed is not None:
        assert 0 < parsed[1] <= len(data)
    need = bytes_needed(data)
    assert (need == 0) == complete  # reading stops exactly when parsing can decide
    assert len(data) + need <= MAX_V2


@FAST
@given(st.binary(max_size=300))
def test_arbitrary_bytes(data: bytes) -> None:
    """Only ProxyProtocolError escapes, and nothing beyond the input is claimed."""
    check_arbitrary(data)


V1_STARTS = [b"", b"PROXY TCP4 ", b"PROXY TCP6 ", b"PROXY UNKNOWN"]


@FAST
@given(
    st.one_of(
        st.builds(bytes.__add__, st.sampled_from(V1_STARTS), st.binary(max_size=120)),
        st.builds(bytes.__add__, st.just(V2_SIGNATURE), st.binary(max_size=300)),
        st.builds(
            bytes.__add__,
            st.sampled_from(V1_STARTS),
            st.text("0123456789. \r\n:abcdef", max_size=100).map(str.encode),
        ),
    )
)
def test_arbitrary_bytes_after_a_real_start(data: bytes) -> None:
    """The same, for input that gets past the signature check."""
    check_arbitrary(data)


ports = st.integers(min_value=0, max_value=65535)


@st.composite
def headers(draw: st.DrawFn) -> tuple[bytes, ProxyHeader]:
    """A valid header of any kind with what parsing it must give."""
    kind = draw(st.sampled_from(["v1-4", "v1-6", "v1-unknown", "v2-4", "v2-6", "v2-local"]))
    sport, dport = draw(ports), draw(ports)
    if kind.endswith("4"):
        src, dst = draw(st.ip_addresses(v=4)), draw(st.ip_addresses(v=4))
    else:
        src, dst = draw(st.ip_addresses(v=6)), draw(st.ip_addresses(v=6))
    expected = ProxyHeader((str(src), sport), (str(dst), dport), 2 if kind[1] == "2" else 1)
    if kind == "v1-unknown":
        junk = draw(st.text("0123456789abcdef.: ", max_size=MAX_V1 - 16)).encode()
        return b"PROXY UNKNOWN" + (b" " + junk if junk else b"") + b"\r\n", ProxyHeader(
            None, None, 1
        )
    if kind.startswith("v1"):
        # Any valid spelling: IPv6 upper case or fully expanded, not only str().
        spelling = draw(st.sampled_from(["short", "exploded", "upper"]))
        texts = [
            a.exploded
            if spelling == "exploded"
            else str(a).upper()
            if spelling == "upper"
            else str(a)
            for a in (src, dst)
        ]
        line = f"PROXY TCP{kind[-1]} {texts[0]} {texts[1]} {sport} {dport}\r\n"
        return line.encode(), expected
    extra = b"".join(
        tlv(draw(st.integers(0, 255)), draw(st.binary(max_size=40)))
        for _ in range(draw(st.integers(0, 4)))
    )
    if kind == "v2-local":
        return v2(extra, ver_cmd=LOCAL, fam=UNSPEC), ProxyHeader(None, None, 2)
    if kind == "v2-4":
        return v2(inet4(str(src), str(dst), sport, dport) + extra), expected
    return v2(inet6(str(src), str(dst), sport, dport) + extra, fam=INET6_STREAM), expected


@FAST
@given(headers(), st.binary(max_size=200), st.lists(st.integers(1, 64), max_size=30))
def test_valid_headers_are_read_exactly(
    case: tuple[bytes, ProxyHeader], after: bytes, chunks: list[int]
) -> None:
    """Whatever the socket returns (up to what was asked), no byte after the header is read."""
    header, expected = case
    assert len(header) <= (MAX_V1 if header.startswith(b"PROXY") else MAX_V2)
    stream = header + after
    buf = b""
    sizes = iter(chunks)
    while (parsed := parse_proxy_header(buf)) is None:
        want = bytes_needed(buf)
        assert 1 <= want <= len(header) - len(buf)
        got = min(want, next(sizes, want))  # a short read is always possible
        buf += stream[len(buf) : len(buf) + got]
    assert parsed == (expected, len(header))
    assert buf == header
