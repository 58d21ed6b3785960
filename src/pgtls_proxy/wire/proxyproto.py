"""HAProxy PROXY protocol v1 and v2 headers (haproxy doc/proxy-protocol.txt).

A load balancer in TCP mode hides the client's address; the PROXY header it
sends first gives it back, so rules' ``sources`` and the audit record see the
real client. Parsing is sans-I/O.

The I/O layer must not read past the header: the next bytes are PostgreSQL's
or TLS's and belong to another reader. So it alternates
:func:`parse_proxy_header` (None: incomplete) with reading at most
:func:`bytes_needed` bytes. That count is a lower bound on what any valid
header starting with the bytes so far still lacks: the first read takes 15
(no header is shorter than ``PROXY UNKNOWN\\r\\n``), v2 then reads its announced
length, and v1 reads as far as the shortest possible rest of its line
(addresses and ports cannot be shorter than ``1.1.1.1``, ``::`` and ``1``).
A TCP4 line thus costs about five reads, with no MSG_PEEK needed.

Malformed input fails as soon as it is certain (a wrong signature, protocol
or version at its first byte), so an impostor is not kept waiting for the
handshake timeout when its first packet already gives it away.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
MAX_V1 = 107  # the whole v1 line, CRLF included (the spec's limit)
MAX_V2_PAYLOAD = 2048  # addresses plus TLVs; balancers send far less
MAX_V2 = 16 + MAX_V2_PAYLOAD
_MIN_HEADER = len(b"PROXY UNKNOWN\r\n")

_V2_LOCAL, _V2_PROXY = 0, 1
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0, 1, 2, 3
_V2_ADDRESS_LEN = {_AF_UNSPEC: 0, _AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}

# v1: per protocol, the shortest text of each of the four fields after it,
# and the longest an address may be (IPv6 with an embedded IPv4 is 45).
_V1_MIN_FIELDS = {b"TCP4": (7, 7, 1, 1), b"TCP6": (2, 2, 1, 1)}
_V1_MAX_ADDRESS = {b"TCP4": 15, b"TCP6": 45}
_V1_ADDRESS_CHARS = {
    b"TCP4": frozenset(b"0123456789."),
    b"TCP6": frozenset(b"0123456789abcdefABCDEF:."),
}
_DIGITS = frozenset(b"0123456789")
_UNKNOWN = b"UNKNOWN"


class ProxyProtocolError(Exception):
    """Not a valid PROXY header: the connection is closed without a word."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """``source`` is None for LOCAL (v2) and UNKNOWN (v1): use the socket peer."""

    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    version: int


def parse_proxy_header(buf: bytes) -> tuple[ProxyHeader, int] | None:
    """Parse the header at the start of ``buf``.

    Returns None when more bytes are needed, or (header, bytes consumed);
    bytes after the header are left alone. Raises ProxyProtocolError as soon
    as ``buf`` cannot be the start of a valid header.
    """
    result = _scan(buf)
    return None if isinstance(result, int) else result


def bytes_needed(buf: bytes) -> int:
    """How many bytes may be read next without passing the end of the header.

    0 means stop reading: :func:`parse_proxy_header` now returns the header
    or raises. Never raises itself.
    """
    try:
        result = _scan(buf)
    except ProxyProtocolError:
        return 0
    return result if isinstance(result, int) else 0


def _scan(buf: bytes) -> tuple[ProxyHeader, int] | int:
    """The parsed header, or a positive lower bound on the bytes still missing."""
    if not buf:
        return _MIN_HEADER
    if V2_SIGNATURE.startswith(buf[:12]):
        return _scan_v2(buf)
    if V1_PREFIX.startswith(buf[:6]):
        return _scan_v1(buf)
    raise ProxyProtocolError("not a PROXY protocol header")


# ------------------------------------------------------------------ version 2


def _scan_v2(buf: bytes) -> tuple[ProxyHeader, int] | int:
    command = _V2_PROXY
    if len(buf) > 12:
        if buf[12] >> 4 != 2:
            raise ProxyProtocolError("unsupported PROXY v2 version")
        command = buf[12] & 0x0F
        if command not in (_V2_LOCAL, _V2_PROXY):
            raise ProxyProtocolError("unsupported PROXY v2 command")
    family, transport = (buf[13] >> 4, buf[13] & 0x0F) if len(buf) > 13 else (_AF_UNSPEC, 0)
    # LOCAL is the balancer's own connection (a health check): the spec says
    # to ignore its address block, whatever the family says.
    if command == _V2_PROXY and (family not in _V2_ADDRESS_LEN or transport > 2):
        raise ProxyProtocolError("unsupported PROXY v2 address family or transport")
    if len(buf) < 16:
        return 16 - len(buf)
    length = int.from_bytes(buf[14:16], "big")
    if length > MAX_V2_PAYLOAD:
        raise ProxyProtocolError(f"PROXY v2 header longer than {MAX_V2} bytes")
    if command == _V2_PROXY and length < _V2_ADDRESS_LEN[family]:
        raise ProxyProtocolError("PROXY v2 address block too short")
    total = 16 + length
    if len(buf) < total:
        return total - len(buf)
    block = buf[16:total]  # the addresses, then TLVs, which nothing here needs
    if command == _V2_LOCAL or family in (_AF_UNSPEC, _AF_UNIX):
        # No address a rule could match: use the socket peer.
        return ProxyHeader(None, None, 2), total
    if family == _AF_INET:
        src: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(block[0:4])
        dst: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.IPv4Address(block[4:8])
        ports = block[8:12]
    else:
        src, dst = ipaddress.IPv6Address(block[0:16]), ipaddress.IPv6Address(block[16:32])
        ports = block[32:36]
    sport, dport = int.from_bytes(ports[0:2], "big"), int.from_bytes(ports[2:4], "big")
    return ProxyHeader((str(src), sport), (str(dst), dport), 2), total


# ------------------------------------------------------------------ version 1


def _scan_v1(buf: bytes) -> tuple[ProxyHeader, int] | int:
    end = buf.find(b"\r\n", 0, MAX_V1)
    if end >= 0:
        return _parse_v1_line(buf[:end]), end + 2
    if len(buf) >= MAX_V1:
        raise ProxyProtocolError(f"PROXY v1 header without CRLF in {MAX_V1} bytes")
    line = buf.removesuffix(b"\r")
    if b"\r" in line or b"\n" in line:
        raise ProxyProtocolError("PROXY v1 header not terminated by CRLF")
    need = _v1_rest(line)  # also refuses a line that cannot become valid
    if len(line) < len(buf):
        need = 1  # the LF that would end it
    need = max(need, _MIN_HEADER - len(buf))
    if len(buf) + need > MAX_V1:
        raise ProxyProtocolError(f"PROXY v1 header cannot end within {MAX_V1} bytes")
    return need


def _v1_rest(line: bytes) -> int:
    """The fewest bytes (CRLF included) that could complete this partial line."""
    if len(line) < len(V1_PREFIX):
        return _MIN_HEADER - len(line)
    parts = line.split(b" ")
    proto = parts[1]
    if len(parts) == 2:  # the protocol word itself is still arriving
        rests = [
            len(name) - len(proto) + _v1_tail(name, 0)
            for name in (*_V1_MIN_FIELDS, _UNKNOWN)
            if name.startswith(proto)
        ]
        if not rests:
            raise ProxyProtocolError("unsupported PROXY v1 protocol")
        return min(rests)
    if proto == _UNKNOWN:
        return 2  # anything may follow UNKNOWN up to the CRLF
    if proto not in _V1_MIN_FIELDS:
        raise ProxyProtocolError("unsupported PROXY v1 protocol")
    fields = parts[2:]
    if len(fields) > 4:
        raise ProxyProtocolError("too many fields in PROXY v1 header")
    for index, field in enumerate(fields[:-1]):  # a space followed each: complete
        if index < 2:
            _v1_address(proto, field)
        else:
            _v1_port(field)
    index, current = len(fields) - 1, fields[-1]
    if index < 2:
        ok = set(current) <= _V1_ADDRESS_CHARS[proto] and len(current) <= _V1_MAX_ADDRESS[proto]
    else:
        ok = set(current) <= _DIGITS and len(current) <= 5
        ok = ok and (len(current) < 2 or current[0] != ord("0"))
    if not ok:
        raise ProxyProtocolError("bad field in PROXY v1 header")
    return max(0, _V1_MIN_FIELDS[proto][index] - len(current)) + _v1_tail(proto, index + 1)


def _v1_tail(proto: bytes, first: int) -> int:
    """The shortest text of the fields from ``first`` on, spaces and CRLF included."""
    widths = _V1_MIN_FIELDS.get(proto, ())
    return sum(1 + width for width in widths[first:]) + 2


def _parse_v1_line(line: bytes) -> ProxyHeader:
    if b"\r" in line or b"\n" in line:
        raise ProxyProtocolError("PROXY v1 header not terminated by CRLF")
    parts = line.split(b" ")
    if len(parts) < 2 or parts[0] != b"PROXY":
        raise ProxyProtocolError("malformed PROXY v1 header")
    proto = parts[1]
    if proto == _UNKNOWN:
        return ProxyHeader(None, None, 1)
    if proto not in _V1_MIN_FIELDS:
        raise ProxyProtocolError("unsupported PROXY v1 protocol")
    if len(parts) != 6:
        raise ProxyProtocolError("PROXY v1 header needs two addresses and two ports")
    source = (_v1_address(proto, parts[2]), _v1_port(parts[4]))
    destination = (_v1_address(proto, parts[3]), _v1_port(parts[5]))
    return ProxyHeader(source, destination, 1)


def _v1_address(proto: bytes, field: bytes) -> str:
    """TCP4: dotted quad without leading zeroes; TCP6: RFC 4291 text, no scope id."""
    text = field.decode("ascii", "replace")
    if "%" in text:
        raise ProxyProtocolError("bad TCP6 address in PROXY v1 header")
    try:
        address: ipaddress.IPv4Address | ipaddress.IPv6Address = (
            ipaddress.IPv4Address(text) if proto == b"TCP4" else ipaddress.IPv6Address(text)
        )
    except ValueError:
        raise ProxyProtocolError(f"bad {proto.decode()} address in PROXY v1 header") from None
    return str(address)


def _v1_port(field: bytes) -> int:
    """Decimal 0-65535 without leading zeroes (the spec: they could be read as octal)."""
    if not (field and set(field) <= _DIGITS) or len(field) > 5:
        raise ProxyProtocolError("bad port in PROXY v1 header")
    if (len(field) > 1 and field[0] == ord("0")) or int(field) > 65535:
        raise ProxyProtocolError("bad port in PROXY v1 header")
    return int(field)
