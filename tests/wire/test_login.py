"""The backend login generator, driven by hand: no sockets."""

from __future__ import annotations

import struct

import pytest

from pgtls_proxy.wire import codec
from pgtls_proxy.wire.login import BackendLoginError, LoginResult, login
from pgtls_proxy.wire.messages import StartupMessage

STARTUP = StartupMessage(196608, (("user", "alice"), ("database", "app")))


def msg(type_: bytes, payload: bytes) -> tuple[bytes, bytes]:
    return type_, payload


def auth(code: int, data: bytes = b"") -> tuple[bytes, bytes]:
    return b"R", struct.pack("!I", code) + data


def drive(
    messages: list[tuple[bytes, bytes]], authenticator=None
) -> tuple[list[bytes], LoginResult]:
    gen = login(STARTUP, authenticator, describe='backend "main"')
    sent = [next(gen)]
    try:
        for m in messages:
            sent.append(gen.send(m))
    except StopIteration as stop:
        return sent, stop.value
    raise AssertionError("login did not finish")


def test_trust_login_collects_parameters_key_and_ready() -> None:
    sent, result = drive(
        [
            auth(0),
            msg(b"S", b"server_version\x0015.0\x00"),
            msg(b"K", struct.pack("!I", 4242) + b"\x01\x02\x03\x04"),
            msg(b"Z", b"I"),
        ]
    )
    assert sent[0] == STARTUP.encode()
    assert result.backend_pid == 4242 and result.backend_key == b"\x01\x02\x03\x04"
    assert result.to_client == [codec.encode_message(b"S", b"server_version\x0015.0\x00")]
    assert result.ready_for_query == codec.encode_message(b"Z", b"I")


def test_negotiate_protocol_version_is_passed_through() -> None:
    npv = struct.pack("!II", 196608, 1) + b"_pq_.x\x00"
    _, result = drive([msg(b"v", npv), auth(0), msg(b"Z", b"I")])
    assert result.before_auth == [codec.encode_message(b"v", npv)]


def test_protocol_32_long_key() -> None:
    key = bytes(range(32))
    _, result = drive([auth(0), msg(b"K", struct.pack("!I", 7) + key), msg(b"Z", b"I")])
    assert result.backend_key == key


def test_backend_error_keeps_its_sqlstate() -> None:
    err = codec.error_response("FATAL", "28P01", 'password authentication failed for user "alice"')
    with pytest.raises(BackendLoginError) as info:
        drive([msg(b"E", err[5:])])
    assert info.value.sqlstate == "28P01"
    assert info.value.from_backend


@pytest.mark.parametrize("code", [3, 5, 10, 7])
def test_password_request_without_secret_is_refused(code: int) -> None:
    with pytest.raises(BackendLoginError) as info:
        drive([auth(code, b"salt" if code == 5 else b"")])
    assert info.value.sqlstate == "28000"
    assert '"alice"' in info.value.message and 'backend "main"' in info.value.message


def test_authenticator_answers_are_sent() -> None:
    class Answer:
        def __init__(self) -> None:
            self.seen: list[int] = []

        def answer(self, code: int, data: bytes) -> bytes:
            self.seen.append(code)
            return codec.password_message(b"secret\x00")

        def done(self) -> None:
            self.seen.append(0)

    a = Answer()
    sent, result = drive([auth(3), auth(0), msg(b"Z", b"I")], a)
    assert a.seen == [3, 0], "answered, then told that the login succeeded"
    assert sent[1] == codec.password_message(b"secret\x00")
    assert result.ready_for_query


def test_unexpected_message_is_a_protocol_error() -> None:
    with pytest.raises(BackendLoginError) as info:
        drive([msg(b"D", b"")])
    assert info.value.sqlstate == "08P01"
