"""Certificate identity extraction: every field the rules and the audit log use."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgtls_proxy.ca import authority
from pgtls_proxy.pki.identity import CertIdentity

CA_KEY = authority.generate_key()
CA = authority.build_certificate(
    subject_cn="Test CA",
    public_key=CA_KEY.public_key(),
    issuer_cert=None,
    issuer_key=CA_KEY,
    is_ca=True,
    usage="ca",
    extra_subject=[x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example")],
)
LEAF_KEY = authority.generate_key()
START = dt.datetime(2024, 3, 1, 12, 0, tzinfo=dt.UTC)
END = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def _leaf(
    cn: str = "alice",
    *,
    sans: list[x509.GeneralName] | None = None,
    serial: int | None = None,
    org: str | None = "Example",
) -> x509.Certificate:
    extra = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org)] if org else []
    return authority.build_certificate(
        subject_cn=cn,
        public_key=LEAF_KEY.public_key(),
        issuer_cert=CA,
        issuer_key=CA_KEY,
        is_ca=False,
        usage="client",
        sans=sans or [],
        not_before=START,
        not_after=END,
        serial=serial,
        extra_subject=extra,
    )


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


SANS: list[x509.GeneralName] = [
    x509.UniformResourceIdentifier("spiffe://example.org/ns/prod/sa/app"),
    x509.DNSName("b.example.com"),
    x509.RFC822Name("alice@example.com"),
    x509.IPAddress(ipaddress.ip_address("10.1.2.3")),
    x509.DNSName("a.example.com"),
    x509.UniformResourceIdentifier("https://example.org/users/alice"),
    x509.RFC822Name("a.smith@example.org"),
]


def test_all_fields_from_der() -> None:
    cert = _leaf(sans=SANS, serial=0x0123456789ABCDEF)
    der = _der(cert)
    ident = CertIdentity.from_der(der)
    assert ident.subject == "CN=alice,O=Example"
    assert ident.issuer == "CN=Test CA,O=Example"
    assert ident.cn == "alice"
    assert ident.san_dns == ("b.example.com", "a.example.com")
    assert ident.san_email == ("alice@example.com", "a.smith@example.org")
    assert ident.san_uri == (
        "spiffe://example.org/ns/prod/sa/app",
        "https://example.org/users/alice",
    )
    assert ident.serial_hex == "123456789abcdef"
    assert ident.fingerprint_sha256 == hashlib.sha256(der).hexdigest()
    assert ident.not_before == START
    assert ident.not_after == END
    assert ident.not_before.utcoffset() == dt.timedelta(0)
    assert ident.not_after.tzinfo is not None


def test_from_certificate_matches_from_der() -> None:
    cert = _leaf(sans=SANS)
    assert CertIdentity.from_certificate(cert) == CertIdentity.from_der(_der(cert))
    assert (
        CertIdentity.from_certificate(cert).fingerprint_sha256
        == cert.fingerprint(hashes.SHA256()).hex()
    )


def test_values_per_field() -> None:
    ident = CertIdentity.from_certificate(_leaf(sans=SANS))
    assert ident.values("cn") == ("alice",)
    assert ident.values("subject") == ("CN=alice,O=Example",)
    assert ident.values("san_dns") == ("b.example.com", "a.example.com")
    assert ident.values("san_email") == ("alice@example.com", "a.smith@example.org")
    assert ident.values("san_uri")[0] == "spiffe://example.org/ns/prod/sa/app"
    with pytest.raises(ValueError, match="unknown identity field"):
        ident.values("san_ip")


def test_no_san_extension_gives_empty_tuples() -> None:
    ident = CertIdentity.from_certificate(_leaf(org=None))
    assert ident.subject == "CN=alice"
    assert (ident.san_dns, ident.san_email, ident.san_uri) == ((), (), ())
    for field in ("san_dns", "san_email", "san_uri"):
        assert ident.values(field) == ()


def _custom_subject(name: x509.Name) -> x509.Certificate:
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(CA.subject)
        .public_key(LEAF_KEY.public_key())
        .serial_number(1)
        .not_valid_before(START)
        .not_valid_after(END)
        .sign(CA_KEY, hashes.SHA256())
    )


def test_no_cn() -> None:
    cert = _custom_subject(
        x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example"),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "DBA"),
            ]
        )
    )
    ident = CertIdentity.from_certificate(cert)
    assert ident.cn is None
    assert ident.values("cn") == ()
    assert ident.subject == "OU=DBA,O=Example"
    assert ident.serial_hex == "1"


def test_first_cn_wins_and_special_characters_are_escaped() -> None:
    cert = _custom_subject(
        x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, "first, user"),
                x509.NameAttribute(NameOID.COMMON_NAME, "second"),
            ]
        )
    )
    ident = CertIdentity.from_certificate(cert)
    assert ident.cn == "first, user"
    assert ident.subject == "CN=second,CN=first\\, user"
    assert ident.subject == cert.subject.rfc4514_string()


@pytest.mark.parametrize(
    ("serial", "expected"),
    [(1, "1"), (0xFF, "ff"), (0x0A0B, "a0b"), (2**159 - 1, "7" + "f" * 39)],
)
def test_serial_formatting(serial: int, expected: str) -> None:
    assert CertIdentity.from_certificate(_leaf(serial=serial)).serial_hex == expected


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(serial=st.integers(min_value=1, max_value=2**159 - 1))
def test_serial_hex_round_trips(serial: int) -> None:
    text = CertIdentity.from_der(_der(_leaf(serial=serial))).serial_hex
    assert int(text, 16) == serial
    assert text == text.lower()
    assert not text.startswith(("0x", "0"))


@pytest.mark.parametrize(
    "der",
    [
        b"",
        b"not a certificate",
        b"\x30\x03\x02\x01\x01",
        _der(_leaf())[:-20],
        _der(_leaf())[:100],
        _leaf().public_bytes(serialization.Encoding.PEM),
    ],
)
def test_malformed_der_raises_value_error(der: bytes) -> None:
    with pytest.raises(ValueError):
        CertIdentity.from_der(der)


def test_is_frozen_and_hashable() -> None:
    ident = CertIdentity.from_certificate(_leaf())
    with pytest.raises(dataclasses.FrozenInstanceError):
        ident.cn = "mallory"  # type: ignore[misc]
    cert = _leaf(serial=7)
    assert hash(CertIdentity.from_certificate(cert)) == hash(CertIdentity.from_der(_der(cert)))


def test_identity_of_issued_client_file(tmp_path: Path) -> None:
    directory = tmp_path
    authority.init_ca(directory)
    cert_path, _ = authority.issue_client(
        directory, "svc", sans=["URI:spiffe://example.org/svc", "email:svc@example.org"]
    )
    pem_cert = authority.load_certificates(cert_path)[0]
    ident = CertIdentity.from_der(_der(pem_cert))
    assert ident.cn == "svc"
    assert ident.subject == "CN=svc"
    assert ident.issuer == "CN=pgtls-proxy CA"
    assert ident.san_uri == ("spiffe://example.org/svc",)
    assert ident.san_email == ("svc@example.org",)
    assert ident.serial_hex == format(pem_cert.serial_number, "x")
