"""The client's startup phase as a state machine that never over-reads.

The I/O layer asks :meth:`StartupReader.bytes_needed`, reads at most that many
bytes and hands them to :meth:`StartupReader.receive_data`. The reader thus
never holds a byte past the current packet: after an ``S`` answer the next
bytes are TLS and belong to the TLS layer, and a startup packet is never
buffered beyond its 10004-byte bound.

Reference: PostgreSQL documentation, "Frontend/Backend Protocol" ->
"Message Flow" -> "Start-up", "SSL Session Encryption", "GSSAPI Session
Encryption", "Canceling Requests in Progress".
"""

from __future__ import annotations

import enum
from typing import Final, Literal

from pgtls_proxy.wire.codec import parse_startup_packet, startup_length
from pgtls_proxy.wire.errors import ProtocolError
from pgtls_proxy.wire.messages import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
)

StartupEvent = SSLRequest | GSSENCRequest | CancelRequest | StartupMessage


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"

    def __repr__(self) -> str:
        return self.value

    __str__ = __repr__


NEED_DATA: Final = _Sentinel.NEED_DATA
"""Returned by :meth:`StartupReader.next_event` until a whole packet is in."""

NeedData = Literal[_Sentinel.NEED_DATA]


class _State(enum.Enum):
    NEGOTIATING = "negotiating"  # plaintext, no encryption request yet
    AFTER_GSSENC = "after GSSENCRequest"  # answered N; SSLRequest may follow
    AFTER_SSL = "after SSLRequest"  # answered N (the proxy itself answers S)
    AFTER_BOTH = "after both requests"
    IN_TLS = "inside TLS"
    DONE = "done"
    ERROR = "error"


# Every allowed (state, event) -> next state; anything missing is a violation.
# After N the client may send the other request, a StartupMessage or a
# CancelRequest ("Message Flow" -> "SSL Session Encryption"); each request is
# honoured once, as in PostgreSQL's ProcessStartupPacket. Inside TLS only one
# StartupMessage or CancelRequest is expected.
_TRANSITIONS: dict[tuple[_State, type[StartupEvent]], _State] = {
    (_State.NEGOTIATING, SSLRequest): _State.AFTER_SSL,
    (_State.NEGOTIATING, GSSENCRequest): _State.AFTER_GSSENC,
    (_State.AFTER_GSSENC, SSLRequest): _State.AFTER_BOTH,
    (_State.AFTER_SSL, GSSENCRequest): _State.AFTER_BOTH,
    **{
        (state, final): _State.DONE
        for state in (
            _State.NEGOTIATING,
            _State.AFTER_GSSENC,
            _State.AFTER_SSL,
            _State.AFTER_BOTH,
            _State.IN_TLS,
        )
        for final in (StartupMessage, CancelRequest)
    },
}

_REQUEST_NAMES: dict[type[StartupEvent], str] = {
    SSLRequest: "SSL",
    GSSENCRequest: "GSSENC",
}


def _refusal(state: _State, event: StartupEvent) -> ProtocolError:
    name = _REQUEST_NAMES.get(type(event), type(event).__name__)
    if state is _State.IN_TLS:
        return ProtocolError(f"{name} request inside TLS", "08P01")
    # The client waits for a one-byte answer it cannot read an error from.
    return ProtocolError(f"repeated {name} request", "08P01", close_silently=True)


class StartupReader:
    """Turns the client's first bytes into startup events, one packet at a time."""

    def __init__(self, *, inside_tls: bool) -> None:
        self._state = _State.IN_TLS if inside_tls else _State.NEGOTIATING
        self._buf = bytearray()
        self._length: int | None = None
        self._error: ProtocolError | None = None

    def bytes_needed(self) -> int:
        """How many bytes to read at most next; 0 when no read is due.

        0 means a packet is complete (call :meth:`next_event`) or the reader
        is finished or failed.
        """
        if self._state in (_State.DONE, _State.ERROR):
            return 0
        if self._length is None:
            return 4 - len(self._buf)
        return self._length - len(self._buf)

    def receive_data(self, data: bytes) -> None:
        """Add bytes read from the client; never more than :meth:`bytes_needed`."""
        if len(data) > self.bytes_needed():
            raise ValueError(
                f"received {len(data)} bytes but only {self.bytes_needed()} were asked for"
            )
        self._buf += data
        if self._length is None and len(self._buf) == 4:
            # A bad length is known from the header alone: fail before
            # reading the body ("Message Formats": the length counts itself).
            try:
                self._length = startup_length(bytes(self._buf))
            except ProtocolError as exc:
                self._fail(exc)

    def next_event(self) -> StartupEvent | NeedData:
        """The next startup packet as an event, or NEED_DATA.

        Raises the peer's :class:`ProtocolError`, again on every later call.
        """
        if self._error is not None:
            raise self._error
        if self._state is _State.DONE:
            raise RuntimeError("the startup phase is over: no more packets are expected")
        if self._length is None or len(self._buf) < self._length:
            return NEED_DATA
        packet = bytes(self._buf)
        self._buf.clear()
        self._length = None
        try:
            event = parse_startup_packet(packet)
            next_state = _TRANSITIONS.get((self._state, type(event)))
            if next_state is None:
                raise _refusal(self._state, event)
        except ProtocolError as exc:
            self._fail(exc)
            raise
        self._state = next_state
        return event

    def _fail(self, exc: ProtocolError) -> None:
        self._state = _State.ERROR
        self._error = exc
        self._buf.clear()


def check_no_trailing_data(extra: bytes) -> None:
    """Refuse bytes that came after an SSLRequest, before the TLS handshake.

    They were sent in the clear and could be injected by a man in the middle
    (CVE-2021-23214); PostgreSQL fails with "received unencrypted data after
    SSL request". The client expects TLS, so nothing is sent back.
    """
    if extra:
        raise ProtocolError(
            "received unencrypted data after SSL request", "08P01", close_silently=True
        )
