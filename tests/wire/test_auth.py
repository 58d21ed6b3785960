"""Answering backend password challenges, without sockets."""

from __future__ import annotations

import hashlib
import struct

import pytest
from scramp import ScramMechanism

from pgtls_proxy.wire import codec
from pgtls_proxy.wire.auth import PasswordAnswerer, md5_response
from pgtls_proxy.wire.login import BackendLoginError

SALT = b"\x01\x02\x03\x04"


def answerer(secret: str = "s3cret", **kw: object) -> PasswordAnswerer:
    return PasswordAnswerer("alice", secret, describe='backend "main"', **kw)  # type: ignore[arg-type]


def test_md5_from_password_and_from_stored_hash_agree() -> None:
    inner = hashlib.md5(b"s3cretalice").hexdigest()
    expected = b"md5" + hashlib.md5(inner.encode() + SALT).hexdigest().encode()
    assert md5_response("alice", "s3cret", SALT) == expected
    assert md5_response("alice", "md5" + inner, SALT) == expected
    reply = answerer().answer(codec.AUTH_MD5, SALT)
    assert reply == codec.password_message(expected + b"\0")


def test_cleartext_only_where_allowed() -> None:
    assert answerer(cleartext_ok=True).answer(codec.AUTH_CLEARTEXT, b"") == codec.password_message(
        b"s3cret\0"
    )
    with pytest.raises(BackendLoginError) as info:
        answerer(cleartext_ok=False).answer(codec.AUTH_CLEARTEXT, b"")
    assert "s3cret" not in info.value.message


def test_scram_exchange_against_a_real_scram_server() -> None:
    mech = ScramMechanism()
    salt, stored, server_key, iterations = mech.make_auth_info("s3cret", iteration_count=4096)
    server = mech.make_server(lambda _user: (salt, stored, server_key, iterations))
    client = answerer()
    first = client.answer(codec.AUTH_SASL, b"SCRAM-SHA-256\0\0")
    # 'p', length, mechanism\0, Int32 length, client-first
    body = first[5:]
    mechanism, _, rest = body.partition(b"\0")
    assert mechanism == b"SCRAM-SHA-256"
    (n,) = struct.unpack("!i", rest[:4])
    server.set_client_first(rest[4 : 4 + n].decode())
    reply = client.answer(codec.AUTH_SASL_CONTINUE, server.get_server_first().encode())
    server.set_client_final(reply[5:].decode())
    assert client.answer(codec.AUTH_SASL_FINAL, server.get_server_final().encode()) == b""


def test_forged_server_signature_is_refused() -> None:
    mech = ScramMechanism()
    auth = mech.make_auth_info("other", iteration_count=4096)
    server = mech.make_server(lambda _user: auth)
    client = answerer()
    first = client.answer(codec.AUTH_SASL, b"SCRAM-SHA-256\0\0")
    rest = first[5:].partition(b"\0")[2]
    server.set_client_first(rest[4:].decode())
    client.answer(codec.AUTH_SASL_CONTINUE, server.get_server_first().encode())
    with pytest.raises(BackendLoginError):
        client.answer(codec.AUTH_SASL_FINAL, b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")


@pytest.mark.parametrize(
    ("code", "data", "secret"),
    [
        (codec.AUTH_SASL, b"SCRAM-SHA-1\0\0", "s3cret"),  # no mechanism we speak
        (codec.AUTH_SASL, b"SCRAM-SHA-256\0\0", "md5" + "0" * 32),  # only a hash stored
        (codec.AUTH_GSS, b"", "s3cret"),
        (codec.AUTH_SSPI, b"", "s3cret"),
    ],
)
def test_methods_we_cannot_answer(code: int, data: bytes, secret: str) -> None:
    with pytest.raises(BackendLoginError) as info:
        answerer(secret).answer(code, data)
    assert info.value.sqlstate == "28000"
    assert secret not in info.value.message
    assert '"alice"' in info.value.message and 'backend "main"' in info.value.message
