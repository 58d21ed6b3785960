"""Startup-phase events of the PostgreSQL protocol, as frozen dataclasses.

Each event checks its own invariants when it is built, so an instance that
exists can always be put on the wire. Violations raise :class:`ProtocolError`
with the SQLSTATE PostgreSQL would report, because the parser builds these
from the peer's bytes and lets the same checks speak for it.

Reference: PostgreSQL documentation, "Frontend/Backend Protocol" ->
"Message Formats" (CancelRequest, GSSENCRequest, SSLRequest, StartupMessage).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pgtls_proxy.wire.errors import ProtocolError

# Request codes sit where a protocol version would be ("Message Formats"):
# 1234 in the high 16 bits, so no real protocol version can collide.
SSL_REQUEST_CODE = 80877103  # 1234 << 16 | 5679
GSSENC_REQUEST_CODE = 80877104  # 1234 << 16 | 5680
CANCEL_REQUEST_CODE = 80877102  # 1234 << 16 | 5678

PROTOCOL_3_0 = 196608  # 3 << 16
PROTOCOL_3_2 = 196610  # 3 << 16 | 2; 3.1 was skipped on purpose (PostgreSQL 18)

# PostgreSQL's MAX_STARTUP_PACKET_LENGTH: the payload after the length word.
MAX_STARTUP_PAYLOAD = 10000
MAX_STARTUP_LENGTH = MAX_STARTUP_PAYLOAD + 4
MIN_STARTUP_LENGTH = 8

# Cancel keys: 4 bytes up to protocol 3.0, up to 256 bytes from 3.2.
MIN_CANCEL_KEY = 4
MAX_CANCEL_KEY = 256

_MAX_UINT32 = 2**32 - 1
_HEADER = struct.Struct("!II")
_CANCEL_HEADER = struct.Struct("!III")


def protocol_version_text(protocol: int) -> str:
    """``major.minor`` as PostgreSQL prints versions in its messages."""
    return f"{protocol >> 16}.{protocol & 0xFFFF}"


def check_protocol(protocol: int) -> None:
    """Refuse anything but major version 3; every 3.x minor passes through.

    The backend answers a higher minor with NegotiateProtocolVersion, which the
    client must see untouched ("Message Flow" -> "Start-up").
    """
    if not 0 <= protocol <= _MAX_UINT32 or protocol >> 16 != 3:
        raise ProtocolError(
            f"unsupported frontend protocol {protocol_version_text(protocol & _MAX_UINT32)}: "
            "the proxy supports protocol 3.0 and later 3.x versions",
            "0A000",
        )


def _check_cancel_key(pid: int, key: bytes) -> None:
    if not 0 <= pid <= _MAX_UINT32:
        raise ProtocolError(f"process id {pid} does not fit an Int32", close_silently=True)
    if not MIN_CANCEL_KEY <= len(key) <= MAX_CANCEL_KEY:
        raise ProtocolError(
            f"cancel key of {len(key)} bytes: it must be {MIN_CANCEL_KEY} to "
            f"{MAX_CANCEL_KEY} bytes",
            close_silently=True,
        )


@dataclass(frozen=True, slots=True)
class SSLRequest:
    """The client asks for TLS; the answer is one byte, ``S`` or ``N``."""

    def encode(self) -> bytes:
        return _HEADER.pack(8, SSL_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    """The client asks for GSSAPI encryption; the proxy answers ``N``."""

    def encode(self) -> bytes:
        return _HEADER.pack(8, GSSENC_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """Cancel the query of backend ``pid``; ``key`` proves the right to do so.

    Both are unsigned here so any 32-bit value read from the wire round-trips.
    """

    pid: int
    key: bytes

    def __post_init__(self) -> None:
        _check_cancel_key(self.pid, self.key)

    def encode(self) -> bytes:
        return _CANCEL_HEADER.pack(12 + len(self.key), CANCEL_REQUEST_CODE, self.pid) + self.key


@dataclass(frozen=True, slots=True)
class StartupMessage:
    """The client's StartupMessage: protocol version and parameters in order.

    Order and every parameter (``_pq_.*`` protocol options included) are kept
    so the message reaches the backend exactly as the client wrote it, apart
    from a rewritten ``user``.
    """

    protocol: int
    params: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        check_protocol(self.protocol)
        seen: set[str] = set()
        size = MIN_STARTUP_LENGTH + 1  # length, version, final NUL
        for name, value in self.params:
            if not name:
                raise ProtocolError("invalid startup packet layout: empty parameter name")
            if "\x00" in name or "\x00" in value:
                raise ProtocolError(
                    f'startup parameter "{name.replace(chr(0), "")}" contains a NUL character'
                )
            if name in seen:
                raise ProtocolError(f'duplicate startup parameter "{name}"')
            seen.add(name)
            size += len(name.encode()) + len(value.encode()) + 2
        if size > MAX_STARTUP_LENGTH:
            raise ProtocolError(
                f"startup packet of {size} bytes exceeds {MAX_STARTUP_LENGTH}",
                close_silently=True,
            )
        # PostgreSQL treats an empty user like a missing one (ProcessStartupPacket).
        if not self.get("user"):
            raise ProtocolError("no PostgreSQL user name specified in startup packet", "28000")

    def get(self, name: str) -> str | None:
        """The value of parameter ``name``, or None when the client did not send it."""
        for key, value in self.params:
            if key == name:
                return value
        return None

    @property
    def user(self) -> str:
        user = self.get("user")
        assert user  # checked in __post_init__
        return user

    @property
    def database(self) -> str:
        """The requested database; PostgreSQL defaults it to the user name."""
        return self.get("database") or self.user

    def with_user(self, user: str) -> StartupMessage:
        """The same message for another user: order and other parameters kept."""
        return StartupMessage(
            self.protocol,
            tuple((name, user if name == "user" else value) for name, value in self.params),
        )

    def encode(self) -> bytes:
        """The exact wire form: length, version, ``name\\0value\\0`` ..., ``\\0``."""
        body = b"".join(
            name.encode() + b"\x00" + value.encode() + b"\x00" for name, value in self.params
        )
        return _HEADER.pack(len(body) + 9, self.protocol) + body + b"\x00"
