"""Parse and build PostgreSQL wire messages; no I/O, no global state.

Startup-phase packets have no type byte (Int32 length counting itself, then
an Int32 code); every later message is a type byte, an Int32 length that
counts itself, and the payload. Reference: PostgreSQL documentation,
"Frontend/Backend Protocol" -> "Message Formats" and "Message Flow".
"""

from __future__ import annotations

import struct

from pgtls_proxy.wire.errors import ProtocolError
from pgtls_proxy.wire.messages import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    MAX_CANCEL_KEY,
    MAX_STARTUP_LENGTH,
    MIN_CANCEL_KEY,
    MIN_STARTUP_LENGTH,
    SSL_REQUEST_CODE,
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    check_protocol,
)

# AuthenticationRequest codes ("Message Formats" -> Authentication*).
AUTH_OK = 0
AUTH_KERBEROS_V5 = 2
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_GSS = 7
AUTH_GSS_CONTINUE = 8
AUTH_SSPI = 9
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

AUTH_NAMES: dict[int, str] = {
    AUTH_OK: "ok",
    AUTH_KERBEROS_V5: "Kerberos V5",
    AUTH_CLEARTEXT: "cleartext password",
    AUTH_MD5: "MD5 password",
    AUTH_GSS: "GSSAPI",
    AUTH_GSS_CONTINUE: "GSSAPI continuation",
    AUTH_SSPI: "SSPI",
    AUTH_SASL: "SASL",
    AUTH_SASL_CONTINUE: "SASL continuation",
    AUTH_SASL_FINAL: "SASL final",
}

DEFAULT_MAX_MESSAGE = 1 << 20

_INT32 = struct.Struct("!I")
_SINT32 = struct.Struct("!i")
_TYPED_HEADER = struct.Struct("!cI")
_SQLSTATE_CHARS = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")


# ---------------------------------------------------------------- startup phase


def startup_length(header: bytes) -> int:
    """The total packet length announced by the first 4 bytes of a startup packet.

    PostgreSQL drops a bad length without replying (a COMMERROR in
    ProcessStartupPacket), so the error asks for a silent close.
    """
    if len(header) < 4:
        raise ValueError("startup_length needs the 4-byte length word")
    length: int = _INT32.unpack_from(header)[0]
    if not MIN_STARTUP_LENGTH <= length <= MAX_STARTUP_LENGTH:
        raise ProtocolError(
            f"invalid length of startup packet: {length} (allowed "
            f"{MIN_STARTUP_LENGTH} to {MAX_STARTUP_LENGTH})",
            close_silently=True,
        )
    return length


def parse_startup_packet(
    packet: bytes,
) -> SSLRequest | GSSENCRequest | CancelRequest | StartupMessage:
    """Parse one whole startup-phase packet, length word included."""
    if len(packet) < 4:
        raise ProtocolError("truncated startup packet", close_silently=True)
    length = startup_length(packet)
    if length != len(packet):
        raise ProtocolError(
            f"startup packet length word says {length} bytes, packet has {len(packet)}",
            close_silently=True,
        )
    (code,) = _INT32.unpack_from(packet, 4)
    if code == CANCEL_REQUEST_CODE:
        return _parse_cancel(packet)
    if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
        # The answer is a single byte the client reads before anything else;
        # an ErrorResponse there must not be shown (CVE-2024-10977): be silent.
        name = "SSL" if code == SSL_REQUEST_CODE else "GSSENC"
        if length != 8:
            raise ProtocolError(
                f"invalid length of {name} request packet: {length}", close_silently=True
            )
        return SSLRequest() if code == SSL_REQUEST_CODE else GSSENCRequest()
    check_protocol(code)
    return StartupMessage(code, _parse_params(packet))


def _parse_cancel(packet: bytes) -> CancelRequest:
    # CancelRequest: length, code, Int32 pid, then the key (4 bytes up to
    # protocol 3.0, up to 256 from 3.2). Cancel requests are never answered.
    key_len = len(packet) - 12
    if not MIN_CANCEL_KEY <= key_len <= MAX_CANCEL_KEY:
        raise ProtocolError(
            f"invalid length of cancel request packet: {len(packet)}", close_silently=True
        )
    (pid,) = _INT32.unpack_from(packet, 8)
    return CancelRequest(pid, bytes(packet[12:]))


def _parse_params(packet: bytes) -> tuple[tuple[str, str], ...]:
    # StartupMessage: NUL-terminated name/value pairs, then one extra NUL that
    # must be the last byte (PostgreSQL: "invalid startup packet layout:
    # expected terminator as last byte").
    params: list[tuple[str, str]] = []
    end = len(packet)
    offset = 8
    while True:
        name_end = packet.find(b"\x00", offset)
        if name_end < 0:
            raise ProtocolError("invalid startup packet layout: expected terminator as last byte")
        if name_end == offset:  # empty name: the terminator
            if name_end != end - 1:
                raise ProtocolError(
                    "invalid startup packet layout: expected terminator as last byte"
                )
            return tuple(params)
        value_end = packet.find(b"\x00", name_end + 1)
        if value_end < 0:
            raise ProtocolError("invalid startup packet layout: missing parameter value")
        params.append((_decode(packet[offset:name_end]), _decode(packet[name_end + 1 : value_end])))
        offset = value_end + 1


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError("invalid UTF-8 in startup packet parameter") from None


# ---------------------------------------------------------------- typed messages


def encode_message(msg_type: bytes, payload: bytes) -> bytes:
    """Type byte, Int32 length counting itself, payload."""
    if len(msg_type) != 1:
        raise ValueError(f"message type must be one byte, got {msg_type!r}")
    return _TYPED_HEADER.pack(msg_type, len(payload) + 4) + payload


class MessageReader:
    """Splits a byte stream into ``(type, payload)`` messages.

    ``max_message`` bounds the length word of one message (it counts itself),
    so a hostile peer cannot make us buffer without limit.
    """

    def __init__(self, max_message: int = DEFAULT_MAX_MESSAGE) -> None:
        if max_message < 4:
            raise ValueError("max_message must be at least 4")
        self.max_message = max_message
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def next_message(self) -> tuple[bytes, bytes] | None:
        """The next complete message, or None until more bytes are fed."""
        buf = self._buf
        if len(buf) < 5:
            return None
        msg_type, length = _TYPED_HEADER.unpack_from(buf)
        if length < 4:
            raise ProtocolError(f"invalid message length {length} for message type {msg_type!r}")
        if length > self.max_message:
            raise ProtocolError(
                f"message type {msg_type!r} of {length} bytes exceeds the "
                f"{self.max_message}-byte limit"
            )
        if len(buf) < length + 1:
            return None
        payload = bytes(buf[5 : length + 1])
        del buf[: length + 1]
        return msg_type, payload

    def buffered(self) -> bytes:
        """Return and forget the bytes not yet returned as messages.

        Used at a hand-over (login finished, raw relay starts) so no byte the
        peer already sent is lost.
        """
        data = bytes(self._buf)
        self._buf.clear()
        return data


def _cstring(value: str) -> bytes:
    # A protocol String is NUL-terminated; an embedded NUL would end it early
    # and turn the rest into bogus fields, so it is replaced.
    return value.replace("\x00", "\ufffd").encode("utf-8", "replace") + b"\x00"


def is_sqlstate(code: str) -> bool:
    """Five digits or upper-case ASCII letters, as every SQLSTATE is."""
    return len(code) == 5 and set(code) <= _SQLSTATE_CHARS


def error_response(
    severity: str,
    sqlstate: str,
    message: str,
    *,
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """An ErrorResponse ('E') with the fields every client reads.

    ``S`` and ``V`` both carry the severity: ``V`` is the never-localized copy
    that libpq prefers (PostgreSQL 9.6+), ``S`` is what older clients read.
    """
    if not severity or "\x00" in severity:
        raise ValueError(f"invalid severity {severity!r}")
    if not is_sqlstate(sqlstate):
        raise ValueError(f"invalid SQLSTATE {sqlstate!r}")
    fields = [b"S" + _cstring(severity), b"V" + _cstring(severity)]
    fields.append(b"C" + _cstring(sqlstate))
    fields.append(b"M" + _cstring(message))
    if detail is not None:
        fields.append(b"D" + _cstring(detail))
    if hint is not None:
        fields.append(b"H" + _cstring(hint))
    return encode_message(b"E", b"".join(fields) + b"\x00")


def parse_error_fields(payload: bytes) -> dict[str, str]:
    """Fields of an ErrorResponse or NoticeResponse payload, by field code.

    Values are decoded leniently: before ``client_encoding`` is settled the
    server may use its own encoding for messages.
    """
    fields: dict[str, str] = {}
    offset = 0
    end = len(payload)
    while True:
        if offset >= end:
            raise ProtocolError("error fields lack their terminator")
        code = payload[offset]
        if code == 0:
            if offset != end - 1:
                raise ProtocolError("bytes after the terminator of error fields")
            return fields
        value_end = payload.find(b"\x00", offset + 1)
        if value_end < 0:
            raise ProtocolError("unterminated error field")
        fields[chr(code)] = payload[offset + 1 : value_end].decode("utf-8", "replace")
        offset = value_end + 1


def parse_authentication(payload: bytes) -> tuple[int, bytes]:
    """An AuthenticationRequest ('R'): its Int32 code and the bytes after it."""
    if len(payload) < 4:
        raise ProtocolError("truncated authentication request")
    (code,) = _INT32.unpack_from(payload)
    return code, bytes(payload[4:])


def authentication_ok() -> bytes:
    return encode_message(b"R", _INT32.pack(AUTH_OK))


def backend_key_data(pid: int, key: bytes) -> bytes:
    """BackendKeyData ('K'): the pid and secret key a client cancels with."""
    if not 0 <= pid <= 0xFFFFFFFF:
        raise ValueError(f"process id {pid} does not fit an Int32")
    if not MIN_CANCEL_KEY <= len(key) <= MAX_CANCEL_KEY:
        raise ValueError(
            f"cancel key of {len(key)} bytes; allowed {MIN_CANCEL_KEY} to {MAX_CANCEL_KEY}"
        )
    return encode_message(b"K", _INT32.pack(pid) + key)


def parse_backend_key_data(payload: bytes) -> tuple[int, bytes]:
    """BackendKeyData payload -> (pid, key); the key is 4 to 256 bytes (3.2)."""
    if not 4 + MIN_CANCEL_KEY <= len(payload) <= 4 + MAX_CANCEL_KEY:
        raise ProtocolError(f"invalid BackendKeyData of {len(payload)} bytes")
    (pid,) = _INT32.unpack_from(payload)
    return pid, bytes(payload[4:])


def ready_for_query(status: bytes = b"I") -> bytes:
    """ReadyForQuery ('Z'): idle, in a transaction, or in a failed one."""
    if status not in (b"I", b"T", b"E"):
        raise ValueError(f"invalid transaction status {status!r}")
    return encode_message(b"Z", status)


def parameter_status(name: str, value: str) -> bytes:
    if "\x00" in name or "\x00" in value:
        raise ValueError("parameter name and value must not contain NUL")
    return encode_message(b"S", name.encode() + b"\x00" + value.encode() + b"\x00")


def password_message(data: bytes) -> bytes:
    """PasswordMessage ('p') for cleartext or MD5 authentication.

    ``data`` is the message's String field as sent: the password (or
    ``md5...`` hash) with its terminating NUL. PostgreSQL refuses any other
    shape ("invalid password packet size"), so it is checked here.
    """
    if not data.endswith(b"\x00") or b"\x00" in data[:-1]:
        raise ValueError("a password message is one NUL-terminated string")
    return encode_message(b"p", data)


def sasl_initial_response(mechanism: str, data: bytes | None) -> bytes:
    """SASLInitialResponse ('p'): mechanism, Int32 length (-1: no data), data."""
    if not mechanism or "\x00" in mechanism:
        raise ValueError(f"invalid SASL mechanism {mechanism!r}")
    head = mechanism.encode() + b"\x00"
    if data is None:
        return encode_message(b"p", head + _SINT32.pack(-1))
    return encode_message(b"p", head + _SINT32.pack(len(data)) + data)


def sasl_response(data: bytes) -> bytes:
    """SASLResponse ('p'): the mechanism's bytes, unframed."""
    return encode_message(b"p", data)


def terminate() -> bytes:
    return encode_message(b"X", b"")
