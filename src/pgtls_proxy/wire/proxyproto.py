"""HAProxy PROXY protocol v1 and v2 headers (haproxy doc/proxy-protocol.txt).

A load balancer in TCP mode hides the client's address; the PROXY header it
sends first gives it back, so rules' ``sources`` and the audit record see the
real client. Parsing is sans-I/O. The I/O layer must not read past the header
(the next bytes are PostgreSQL's or TLS's), so :func:`bytes_needed` says how
many bytes may safely be read next.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V1_PREFIX = b"PROXY "
MAX_V1 = 107  # the whole v1 line, CRLF included
MAX_V2_PAYLOAD = 2048  # we accept TLVs up to this; real balancers send far less
MAX_V2 = 16 + MAX_V2_PAYLOAD
_MIN_HEADER = 15


class ProxyProtocolError(Exception):
    """Not a valid PROXY header: the connection is closed without a word."""


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """``source`` is None for LOCAL (v2) and UNKNOWN (v1): use the socket peer."""

    source: tuple[str, int] | None
    destination: tuple[str, int] | None
    version: int


def bytes_needed(buf: bytes) -> int:
    """How many more bytes may be read without passing the end of the header.

    No header is shorter than 15 bytes (``PROXY UNKNOWN\r\n``), so the first
    read takes 15. v2 announces its length in bytes 14-15. v1 ends at CRLF,
    which can only be found byte by byte without peeking; v1 lines are at
    most 107 bytes, so that costs little.
    """
    if len(buf) < _MIN_HEADER:
        return _MIN_HEADER - len(buf)
    if buf.startswith(V2_SIGNATURE):
        if len(buf) < 16:
            return 16 - len(buf)
        return max(0, 16 + int.from_bytes(buf[14:16], "big") - len(buf))
    return 1


def parse_proxy_header(buf: bytes) -> tuple[ProxyHeader, int] | None:
    """Parse a complete header at the start of ``buf``.

    Returns None when more bytes are needed, or (header, bytes consumed).
    """
    if not buf:
        return None
    n = min(len(buf), 12)
    if buf[:n] == V2_SIGNATURE[:n]:
        return _parse_v2(buf) if len(buf) >= 12 else None
    n = min(len(buf), 6)
    if buf[:n] == V1_PREFIX[:n]:
        return _parse_v1(buf)
    raise ProxyProtocolError("not a PROXY protocol header")


def _port(text: bytes) -> int:
    if not text.isdigit() or len(text) > 5 or (len(text) > 1 and text.startswith(b"0")):
        raise ProxyProtocolError("bad port in PROXY v1 header")
    port = int(text)
    if port > 65535:
        raise ProxyProtocolError("bad port in PROXY v1 header")
    return port


def _parse_v1(buf: bytes) -> tuple[ProxyHeader, int] | None:
    end = buf.find(b"\r\n")
    if end < 0:
        if len(buf) >= MAX_V1:
            raise ProxyProtocolError("PROXY v1 header longer than 107 bytes")
        if b"\n" in buf or b"\r" in buf[:-1]:
            raise ProxyProtocolError("PROXY v1 header not terminated by CRLF")
        return None
    if end + 2 > MAX_V1:
        raise ProxyProtocolError("PROXY v1 header longer than 107 bytes")
    parts = buf[:end].split(b" ")
    if len(parts) < 2 or parts[0] != b"PROXY":
        raise ProxyProtocolError("malformed PROXY v1 header")
    proto = parts[1]
    if proto == b"UNKNOWN":
        return ProxyHeader(None, None, 1), end + 2
    if proto not in (b"TCP4", b"TCP6") or len(parts) != 6:
        raise ProxyProtocolError("malformed PROXY v1 header")
    try:
        src = ipaddress.ip_address(parts[2].decode("ascii"))
        dst = ipaddress.ip_address(parts[3].decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise ProxyProtocolError("bad address in PROXY v1 header") from None
    want = 4 if proto == b"TCP4" else 6
    if src.version != want or dst.version != want:
        raise ProxyProtocolError("address family does not match PROXY v1 protocol")
    return (
        ProxyHeader((str(src), _port(parts[4])), (str(dst), _port(parts[5])), 1),
        end + 2,
    )


def _parse_v2(buf: bytes) -> tuple[ProxyHeader, int] | None:
    if len(buf) < 16:
        return None
    ver_cmd = buf[12]
    if ver_cmd >> 4 != 2:
        raise ProxyProtocolError("unsupported PROXY v2 version")
    command = ver_cmd & 0x0F
    if command not in (0, 1):
        raise ProxyProtocolError("unsupported PROXY v2 command")
    length = int.from_bytes(buf[14:16], "big")
    if length > MAX_V2_PAYLOAD:
        raise ProxyProtocolError("PROXY v2 header too long")
    total = 16 + length
    if len(buf) < total:
        return None
    if command == 0:  # LOCAL: health check from the balancer itself
        return ProxyHeader(None, None, 2), total
    family = buf[13] >> 4
    payload = buf[16:total]
    if family == 1:  # AF_INET
        if length < 12:
            raise ProxyProtocolError("PROXY v2 IPv4 address block too short")
        src4 = ipaddress.IPv4Address(payload[0:4])
        dst4 = ipaddress.IPv4Address(payload[4:8])
        sport = int.from_bytes(payload[8:10], "big")
        dport = int.from_bytes(payload[10:12], "big")
        return ProxyHeader((str(src4), sport), (str(dst4), dport), 2), total
    if family == 2:  # AF_INET6
        if length < 36:
            raise ProxyProtocolError("PROXY v2 IPv6 address block too short")
        src6 = ipaddress.IPv6Address(payload[0:16])
        dst6 = ipaddress.IPv6Address(payload[16:32])
        sport = int.from_bytes(payload[32:34], "big")
        dport = int.from_bytes(payload[34:36], "big")
        return ProxyHeader((str(src6), sport), (str(dst6), dport), 2), total
    # AF_UNSPEC or AF_UNIX: no usable address, treat like LOCAL.
    return ProxyHeader(None, None, 2), total
