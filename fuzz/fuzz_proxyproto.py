"""Fuzz the PROXY protocol v1/v2 header parser.

The input is read as the session reads a load balancer's connection:
:func:`parse_proxy_header` on what has arrived, then at most
:func:`bytes_needed` more bytes (capped by a read size the input chooses).
The contract checked:

- only :class:`ProxyProtocolError` escapes;
- a header is never read past its end (what follows belongs to PostgreSQL or
  TLS), the buffer never exceeds the largest header, and while no header is
  complete at least one more byte is asked for (no spin, no hang);
- reading in pieces gives the same verdict as parsing all the bytes at once;
- a parsed address is an IP address and a port fits 16 bits.

Run: ``python -m fuzz.fuzz_proxyproto [libFuzzer options] [corpus dirs]``.
"""

from __future__ import annotations

import ipaddress
import struct

from fuzz._provider import Provider
from fuzz._run import fuzz
from pgtls_proxy.wire import proxyproto
from pgtls_proxy.wire.proxyproto import ProxyHeader, ProxyProtocolError

Verdict = tuple[ProxyHeader, int] | str


def _whole(data: bytes) -> Verdict:
    try:
        parsed = proxyproto.parse_proxy_header(data)
    except ProxyProtocolError:
        return "refused"
    return "incomplete" if parsed is None else parsed


def _in_pieces(data: bytes, chunks: list[int]) -> Verdict:
    buf = b""
    step = 0
    while True:
        try:
            parsed = proxyproto.parse_proxy_header(buf)
        except ProxyProtocolError:
            assert proxyproto.bytes_needed(buf) == 0
            return "refused"
        if parsed is not None:
            header, consumed = parsed
            # Never a byte past the header: the next reader owns the rest.
            assert consumed == len(buf), (consumed, len(buf))
            assert proxyproto.bytes_needed(buf) == 0
            return header, consumed
        need = proxyproto.bytes_needed(buf)
        assert need > 0, buf
        size = chunks[step % len(chunks)] if chunks else 0
        step += 1
        chunk = data[len(buf) : len(buf) + (need if size == 0 else min(need, size))]
        if not chunk:
            return "incomplete"
        buf += chunk
        assert len(buf) <= proxyproto.MAX_V2, len(buf)


def _check_header(header: ProxyHeader) -> None:
    assert header.version in (1, 2)
    assert (header.source is None) == (header.destination is None)
    for end in (header.source, header.destination):
        if end is not None:
            host, port = end
            assert str(ipaddress.ip_address(host)) == host
            assert 0 <= port <= 65535


def test_one_input(data: bytes) -> None:
    """Up to 7 read sizes, then the bytes the connection starts with."""
    fdp = Provider(data)
    chunks = [fdp.byte() for _ in range(fdp.int_in(0, 7))]
    stream = fdp.rest()
    pieces = _in_pieces(stream, chunks)
    whole = _whole(stream)
    assert pieces == whole, (pieces, whole)
    if not isinstance(pieces, str):
        _check_header(pieces[0])


def _v2(command: int, family: int, block: bytes) -> bytes:
    return (
        proxyproto.V2_SIGNATURE
        + bytes([0x20 | command, family])
        + struct.pack("!H", len(block))
        + block
    )


def seeds() -> list[bytes]:
    """v1 and v2 headers of every family, each followed by a PostgreSQL packet."""
    after = struct.pack("!II", 8, 80877103)  # an SSLRequest comes next
    v4 = bytes([192, 0, 2, 1, 198, 51, 100, 7]) + struct.pack("!HH", 50000, 6432)
    v6 = bytes(range(32)) + struct.pack("!HH", 1, 65535)
    tlv = b"\x01\x00\x02h2" + b"\x04\x00\x00"
    headers = [
        b"PROXY TCP4 192.0.2.1 198.51.100.7 50000 6432\r\n",
        b"PROXY TCP6 2001:db8::1 ::ffff:192.0.2.1 1 65535\r\n",
        b"PROXY TCP6 :: :: 0 0\r\n",
        b"PROXY UNKNOWN\r\n",
        b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
        _v2(1, 0x11, v4),
        _v2(1, 0x21, v6 + tlv),
        _v2(1, 0x12, v4),
        _v2(0, 0x00, b""),
        _v2(0, 0x11, v4),
        _v2(1, 0x31, bytes(216)),
        _v2(1, 0x00, tlv),
    ]
    out = []
    for header in headers:
        for chunks in ([], [1], [5, 0, 2]):
            out.append(bytes([len(chunks), *chunks]) + header + after)
    return out


def main() -> None:
    fuzz(test_one_input, ("pgtls_proxy.wire", "ipaddress"))


if __name__ == "__main__":
    main()
