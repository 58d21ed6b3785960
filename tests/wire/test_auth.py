"""Answering backend password challenges, without sockets."""

from __future__ import annotations

import hashlib
import struct

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from scramp import ScramException, ScramMechanism

from pgtls_proxy.config import BackendAuthSettings, BackendSettings, HostPort
from pgtls_proxy.runtime import cleartext_allowed
from pgtls_proxy.wire import codec
from pgtls_proxy.wire.auth import (
    SCRAM,
    SCRAM_PLUS,
    PasswordAnswerer,
    md5_response,
    tls_server_end_point,
)
from pgtls_proxy.wire.login import BackendLoginError
from tests.fixtures.pki import self_signed

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
    client.done()


def test_authentication_ok_before_the_server_signature_is_refused() -> None:
    # A server that says OK without SASLFinal never proved it knows the password.
    client = answerer()
    client.answer(codec.AUTH_SASL, b"SCRAM-SHA-256\0\0")
    with pytest.raises(BackendLoginError) as info:
        client.done()
    assert info.value.sqlstate == "08P01" and "without completing SCRAM" in info.value.message


@pytest.mark.parametrize("code", [codec.AUTH_MD5, codec.AUTH_CLEARTEXT])
def test_methods_without_a_server_proof_are_done_at_once(code: int) -> None:
    client = answerer(cleartext_ok=True)
    client.answer(code, SALT if code == codec.AUTH_MD5 else b"")
    client.done()
    answerer().done()  # trust: nothing asked, nothing to prove


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


# ------------------------------------------------------------------ channel binding


def _self_signed_der(
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey,
    algorithm: hashes.HashAlgorithm | None,
) -> bytes:
    return self_signed("db", key, algorithm).public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(
    ("signed_with", "hashed_with"),
    [
        (hashes.SHA256(), hashlib.sha256),
        (hashes.SHA384(), hashlib.sha384),
        (hashes.SHA512(), hashlib.sha512),
    ],
)
def test_tls_server_end_point_uses_the_signature_hash(
    signed_with: hashes.HashAlgorithm, hashed_with: object
) -> None:
    der = _self_signed_der(ec.generate_private_key(ec.SECP256R1()), signed_with)
    assert tls_server_end_point(der) == hashed_with(der).digest()  # type: ignore[operator]


@pytest.mark.parametrize("weak", [hashes.MD5(), hashes.SHA1()])
def test_md5_and_sha1_signatures_bind_with_sha256(
    weak: hashes.HashAlgorithm, monkeypatch: pytest.MonkeyPatch
) -> None:
    # This OpenSSL no longer signs with them, so the certificate is faked.
    class Signed:
        signature_hash_algorithm = weak

    monkeypatch.setattr(x509, "load_der_x509_certificate", lambda _der: Signed())
    assert tls_server_end_point(b"DER") == hashlib.sha256(b"DER").digest()


def test_no_binding_for_signatures_without_a_hash() -> None:
    der = _self_signed_der(ed25519.Ed25519PrivateKey.generate(), None)
    assert tls_server_end_point(der) is None
    assert tls_server_end_point(b"not a certificate") is None


def _scram_round(
    client: PasswordAnswerer, server_mechanism: str, offered: bytes, server_cb: bytes | None
) -> None:
    """One full exchange against scramp's server side; raises what either side raises."""
    mech = ScramMechanism(server_mechanism)
    auth = mech.make_auth_info("s3cret", iteration_count=4096)
    cb = ("tls-server-end-point", server_cb) if server_cb is not None else None
    server = mech.make_server(lambda _user: auth, channel_binding=cb)
    first = client.answer(codec.AUTH_SASL, offered)
    mechanism, _, rest = first[5:].partition(b"\0")
    assert mechanism.decode() == server_mechanism
    server.set_client_first(rest[4:].decode())
    reply = client.answer(codec.AUTH_SASL_CONTINUE, server.get_server_first().encode())
    server.set_client_final(reply[5:].decode())
    assert client.answer(codec.AUTH_SASL_FINAL, server.get_server_final().encode()) == b""
    client.done()


OFFERED_OVER_TLS = b"SCRAM-SHA-256-PLUS\0SCRAM-SHA-256\0\0"


def test_scram_plus_binds_to_the_server_certificate() -> None:
    binding = hashlib.sha256(b"the backend's certificate").digest()
    client = answerer(channel_binding=binding)
    _scram_round(client, SCRAM_PLUS, OFFERED_OVER_TLS, binding)
    assert client.method == SCRAM_PLUS


def test_scram_plus_fails_through_a_middleman_with_another_certificate() -> None:
    client = answerer(channel_binding=hashlib.sha256(b"the middleman's certificate").digest())
    with pytest.raises(ScramException):
        _scram_round(client, SCRAM_PLUS, OFFERED_OVER_TLS, hashlib.sha256(b"real").digest())


def test_plain_scram_when_the_server_offers_no_binding() -> None:
    client = answerer(channel_binding=b"\x01" * 32)
    _scram_round(client, SCRAM, b"SCRAM-SHA-256\0\0", None)
    assert client.method == SCRAM


def test_plain_scram_over_plain_tcp() -> None:
    client = answerer()
    _scram_round(client, SCRAM, OFFERED_OVER_TLS, None)
    assert client.method == SCRAM


@pytest.mark.parametrize("code", [codec.AUTH_SASL, codec.AUTH_MD5, codec.AUTH_CLEARTEXT])
def test_a_stored_scram_verifier_is_refused_clearly(code: int) -> None:
    verifier = "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy"
    data = {codec.AUTH_SASL: b"SCRAM-SHA-256\0\0", codec.AUTH_MD5: SALT}.get(code, b"")
    with pytest.raises(BackendLoginError, match="SCRAM verifier") as info:
        answerer(verifier, cleartext_ok=True).answer(code, data)
    assert verifier not in info.value.message


# ------------------------------------------------------------------ cleartext policy


def _backend(host: str, *, allow: bool = False) -> BackendSettings:
    return BackendSettings(
        name="main",
        address=HostPort(host, 5432),
        auth=BackendAuthSettings(allow_cleartext_over_plaintext=allow),
    )


@pytest.mark.parametrize(
    ("host", "over_tls", "allow", "expected"),
    [
        ("db.internal", True, False, True),
        ("10.0.0.7", False, False, False),
        ("db.internal", False, False, False),
        ("10.0.0.7", False, True, True),
        ("127.0.0.1", False, False, True),
        ("::1", False, False, True),
        ("localhost", False, False, True),
    ],
)
def test_cleartext_only_over_tls_or_loopback(
    host: str, over_tls: bool, allow: bool, expected: bool
) -> None:
    assert cleartext_allowed(_backend(host, allow=allow), over_tls=over_tls) is expected
