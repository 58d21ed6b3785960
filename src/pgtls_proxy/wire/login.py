"""The backend login as a generator: startup -> authentication -> ReadyForQuery.

The generator yields the bytes to send to the backend (possibly empty) and is
resumed with the next backend message ``(type, payload)``; it returns a
:class:`LoginResult` or raises :class:`BackendLoginError`. One small I/O
function drives it (psycopg's ``generators.py`` / ``waiting.py`` split), so
the whole exchange is unit-tested without sockets.

Protocol reference: PostgreSQL documentation, "Frontend/Backend Protocol",
"Message Flow" -> "Start-up".
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Protocol

from pgtls_proxy.wire import codec
from pgtls_proxy.wire.messages import StartupMessage

# A backend message: its type byte and payload.
Message = tuple[bytes, bytes]
LoginGenerator = Generator[bytes, Message, "LoginResult"]


class BackendLoginError(Exception):
    """The backend refused the login, or asked for something we cannot answer.

    ``sqlstate`` is the backend's own when it sent an ErrorResponse.
    """

    def __init__(self, sqlstate: str, message: str, *, from_backend: bool = False) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message
        self.from_backend = from_backend


@dataclass(slots=True)
class LoginResult:
    """What the client must see, in order, plus the backend's cancel key."""

    # NegotiateProtocolVersion comes before the authentication exchange and
    # libpq insists on seeing it there, ahead of AuthenticationOk.
    before_auth: list[bytes] = field(default_factory=list)
    to_client: list[bytes] = field(default_factory=list)
    backend_pid: int | None = None
    backend_key: bytes | None = None
    ready_for_query: bytes = b""


class Authenticator(Protocol):
    """Answers the backend's authentication requests for one login.

    ``answer`` gets each AuthenticationRequest (code and the bytes after it)
    and returns the encoded reply to send, or ``b""`` when none is due (e.g.
    after SASLFinal, once the server signature has been checked). ``done`` is
    called at AuthenticationOk and raises :class:`BackendLoginError` when an
    exchange that proves the server (SCRAM) was started and not finished: a
    server that skips SASLFinal never showed that it knows the password.
    """

    def answer(self, code: int, data: bytes) -> bytes: ...

    def done(self) -> None: ...


def _sqlstate(code: str | None) -> str:
    """The backend's SQLSTATE if it is one, else 08006 (connection failure).

    It is passed on to the client in our own ErrorResponse, which must carry
    five digits or upper-case letters; a backend that sends anything else is
    still refusing the login, so it is reported, just not with its code.
    """
    if code is not None and codec.is_sqlstate(code):
        return code
    return "08006"


def login(
    startup: StartupMessage,
    authenticator: Authenticator | None = None,
    *,
    describe: str = "backend",
) -> LoginGenerator:
    """Drive a backend from the startup message to its first ReadyForQuery."""
    result = LoginResult()
    msg_type, payload = yield startup.encode()
    authenticated = False
    while True:
        reply = b""
        if msg_type == b"E":
            fields = codec.parse_error_fields(payload)
            raise BackendLoginError(
                _sqlstate(fields.get("C")),
                fields.get("M", "backend refused the connection"),
                from_backend=True,
            )
        if msg_type == b"R" and not authenticated:
            code, data = codec.parse_authentication(payload)
            if code == codec.AUTH_OK:
                if authenticator is not None:
                    authenticator.done()
                authenticated = True
            elif authenticator is None:
                method = codec.AUTH_NAMES.get(code, f"method {code}")
                raise BackendLoginError(
                    "28000",
                    f"{describe} asked for {method} authentication of user "
                    f'"{startup.user}" and the proxy holds no secret for that user',
                )
            else:
                reply = authenticator.answer(code, data)
        elif msg_type == b"v":
            # NegotiateProtocolVersion: the client asked for a newer minor
            # version or _pq_ options; it must see the answer untouched.
            result.before_auth.append(codec.encode_message(msg_type, payload))
        elif msg_type == b"K" and authenticated:
            result.backend_pid, result.backend_key = codec.parse_backend_key_data(payload)
        elif msg_type == b"Z" and authenticated:
            result.ready_for_query = codec.encode_message(msg_type, payload)
            return result
        elif (msg_type in (b"S", b"N") and authenticated) or msg_type == b"N":
            result.to_client.append(codec.encode_message(msg_type, payload))
        else:
            raise BackendLoginError(
                "08P01",
                f"{describe} sent an unexpected message {msg_type!r} during login",
            )
        msg_type, payload = yield reply
