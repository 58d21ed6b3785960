"""The file-based CA: files, modes, extensions, CRL upkeep and a real TLS handshake."""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import socket
import ssl
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pgtls_proxy.ca import authority, commands
from pgtls_proxy.ca.authority import AuthorityError
from pgtls_proxy.pki.identity import CertIdentity


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


_E = TypeVar("_E", bound=x509.ExtensionType)


def _ext(cert: x509.Certificate, kind: type[_E]) -> x509.Extension[_E]:
    return cert.extensions.get_extension_for_class(kind)


def _crl(directory: Path) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl((directory / "crl.pem").read_bytes())


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def _ca(directory: Path) -> x509.Certificate:
    return authority.load_certificates(directory / "ca.crt")[0]


def _cert(path: Path) -> x509.Certificate:
    return authority.load_certificates(path)[0]


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "ca"
    authority.init_ca(directory)
    return directory


# ---------------------------------------------------------------------------
# init
# ---------------------------------------------------------------------------


def test_init_writes_ca_key_and_empty_crl(ca_dir: Path) -> None:
    assert _mode(ca_dir) == 0o700
    assert _mode(ca_dir / "ca.key") == 0o600
    assert _mode(ca_dir / "ca.crt") == 0o644
    assert _mode(ca_dir / "crl.pem") == 0o644
    assert sorted(p.name for p in ca_dir.iterdir()) == ["ca.crt", "ca.key", "crl.pem"]

    ca = _ca(ca_dir)
    assert ca.subject.rfc4514_string() == "CN=pgtls-proxy CA"
    assert ca.issuer == ca.subject
    ca.verify_directly_issued_by(ca)
    bc = _ext(ca, x509.BasicConstraints)
    assert bc.critical and bc.value.ca
    ku = _ext(ca, x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
    assert not ku.value.digital_signature
    ski = _ext(ca, x509.SubjectKeyIdentifier).value
    aki = _ext(ca, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    lifetime = ca.not_valid_after_utc - ca.not_valid_before_utc
    assert dt.timedelta(days=3650) <= lifetime <= dt.timedelta(days=3650, minutes=10)

    key = authority.load_private_key(ca_dir / "ca.key")
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == ca.public_key()

    crl = _crl(ca_dir)
    assert len(crl) == 0
    assert crl.issuer == ca.subject
    assert crl.is_signature_valid(key.public_key())
    assert _crl_number(crl) == 1
    assert crl.next_update_utc is not None
    now = dt.datetime.now(dt.UTC)
    assert now + dt.timedelta(days=29) < crl.next_update_utc <= now + dt.timedelta(days=30)
    assert crl.last_update_utc <= now
    crl_aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert crl_aki.key_identifier == ski.digest


def test_init_refuses_existing_ca(ca_dir: Path) -> None:
    before = (ca_dir / "ca.key").read_bytes()
    with pytest.raises(AuthorityError, match="already exists"):
        authority.init_ca(ca_dir)
    assert (ca_dir / "ca.key").read_bytes() == before


def test_init_in_existing_empty_directory(tmp_path: Path) -> None:
    authority.init_ca(tmp_path, common_name="Example DB CA", days=10, crl_days=2)
    ca = _ca(tmp_path)
    assert ca.subject.rfc4514_string() == "CN=Example DB CA"
    assert ca.not_valid_after_utc - ca.not_valid_before_utc < dt.timedelta(days=11)
    assert _crl(tmp_path).next_update_utc is not None


# ---------------------------------------------------------------------------
# server certificates
# ---------------------------------------------------------------------------


def test_server_cert_extensions_and_sans(ca_dir: Path) -> None:
    cert_path, key_path = authority.issue_server(
        ca_dir,
        "db.example.com",
        ["127.0.0.1", "IP:::1", "DNS:replica.example.com", "db.example.com", "internal-host"],
    )
    assert cert_path == ca_dir / "db.example.com.crt"
    assert key_path == ca_dir / "db.example.com.key"
    assert _mode(key_path) == 0o600
    assert _mode(cert_path) == 0o644

    cert = _cert(cert_path)
    ca = _ca(ca_dir)
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "db.example.com"
    assert list(_ext(cert, x509.SubjectAlternativeName).value) == [
        x509.DNSName("db.example.com"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        x509.IPAddress(ipaddress.ip_address("::1")),
        x509.DNSName("replica.example.com"),
        x509.DNSName("internal-host"),
    ]
    bc = _ext(cert, x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = _ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_encipherment
    assert not ku.value.key_cert_sign
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    aki = _ext(cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == _ext(ca, x509.SubjectKeyIdentifier).value.digest
    assert _ext(cert, x509.SubjectKeyIdentifier).value == x509.SubjectKeyIdentifier.from_public_key(
        cert.public_key()
    )
    key = authority.load_private_key(key_path)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == cert.public_key()
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=825) <= lifetime <= dt.timedelta(days=825, minutes=10)


def test_server_name_that_is_an_ip_gets_dns_and_ip_san(ca_dir: Path) -> None:
    cert_path, _ = authority.issue_server(ca_dir, "10.0.0.5", ["IP:10.0.0.5", "10.0.0.5"])
    sans = list(_ext(_cert(cert_path), x509.SubjectAlternativeName).value)
    assert sans == [x509.DNSName("10.0.0.5"), x509.IPAddress(ipaddress.ip_address("10.0.0.5"))]


@pytest.mark.parametrize(
    "san",
    [
        "IP:300.1.1.1",
        "IP:db.example.com",
        "DNS:",
        "DNS:bad name",
        "DNS:-leading.example",
        "DNS:bücher.example",
        "bücher.example",
        "under score!",
        "email:dba@example.com",
        "URI:spiffe://example.org/db",
        "foo:bar",
    ],
)
def test_server_bad_san_is_refused(ca_dir: Path, san: str) -> None:
    with pytest.raises(AuthorityError):
        authority.issue_server(ca_dir, "db", [san])
    assert not (ca_dir / "db.crt").exists()
    assert not (ca_dir / "db.key").exists()


@pytest.mark.parametrize("name", ["", "a/b", "../db", "..", "ca", "bad name", "-x"])
def test_server_bad_name_is_refused(ca_dir: Path, name: str) -> None:
    with pytest.raises(AuthorityError):
        authority.issue_server(ca_dir, name)


def test_wildcard_san(ca_dir: Path) -> None:
    cert_path, _ = authority.issue_server(ca_dir, "db", ["*.db.example.com"])
    sans = _ext(_cert(cert_path), x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["db", "*.db.example.com"]


# ---------------------------------------------------------------------------
# client certificates
# ---------------------------------------------------------------------------


def test_client_cert_extensions(ca_dir: Path) -> None:
    cert_path, key_path = authority.issue_client(ca_dir, "alice", days=30)
    assert (cert_path, key_path) == (ca_dir / "alice.crt", ca_dir / "alice.key")
    assert _mode(key_path) == 0o600
    cert = _cert(cert_path)
    cert.verify_directly_issued_by(_ca(ca_dir))
    assert cert.subject.rfc4514_string() == "CN=alice"
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not _ext(cert, x509.BasicConstraints).value.ca
    assert _ext(cert, x509.KeyUsage).value.digital_signature
    with pytest.raises(x509.ExtensionNotFound):
        _ext(cert, x509.SubjectAlternativeName)
    now = dt.datetime.now(dt.UTC)
    assert now + dt.timedelta(days=29) < cert.not_valid_after_utc <= now + dt.timedelta(days=30)
    assert cert.not_valid_before_utc < now


def test_client_sans_keep_order(ca_dir: Path) -> None:
    cert_path, _ = authority.issue_client(
        ca_dir,
        "svc-app",
        sans=[
            "URI:spiffe://example.org/ns/prod/sa/app",
            "email:app@example.com",
            "DNS:app.example.com",
            "uri:spiffe://example.org/ns/prod/sa/app",
            "EMAIL:other@example.com",
        ],
    )
    sans = list(_ext(_cert(cert_path), x509.SubjectAlternativeName).value)
    assert sans == [
        x509.UniformResourceIdentifier("spiffe://example.org/ns/prod/sa/app"),
        x509.RFC822Name("app@example.com"),
        x509.DNSName("app.example.com"),
        x509.RFC822Name("other@example.com"),
    ]


@pytest.mark.parametrize(
    "san", ["email:no-at-sign", "email:@example.com", "URI:no-scheme", "URI:spiffe://a b", "x:y"]
)
def test_client_bad_san_is_refused(ca_dir: Path, san: str) -> None:
    with pytest.raises(AuthorityError):
        authority.issue_client(ca_dir, "alice", sans=[san])
    assert not (ca_dir / "alice.key").exists()


@pytest.mark.parametrize(
    "cn",
    [
        "",
        "a/b",
        "../alice",
        "/etc/passwd",
        ".",
        "..",
        "ca",
        "a\\b",
        "x" * 65,
        "alice\n",
        "tab\there",
    ],
)
def test_client_bad_cn_is_refused(ca_dir: Path, cn: str) -> None:
    with pytest.raises(AuthorityError):
        authority.issue_client(ca_dir, cn)
    assert sorted(p.name for p in ca_dir.iterdir()) == ["ca.crt", "ca.key", "crl.pem"]
    assert not (ca_dir.parent / "alice.key").exists()


def test_client_cn_with_spaces_and_dots(ca_dir: Path) -> None:
    cert_path, _ = authority.issue_client(ca_dir, "Jane Doe.ops")
    assert cert_path.name == "Jane Doe.ops.crt"
    assert _cert(cert_path).subject.rfc4514_string() == "CN=Jane Doe.ops"


def test_reissue_is_refused(ca_dir: Path) -> None:
    authority.issue_client(ca_dir, "alice")
    before = (ca_dir / "alice.key").read_bytes()
    with pytest.raises(AuthorityError, match="already exists"):
        authority.issue_client(ca_dir, "alice")
    assert (ca_dir / "alice.key").read_bytes() == before


def test_issue_without_ca_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AuthorityError, match="pki init"):
        authority.issue_client(tmp_path, "alice")


def test_issue_with_mismatched_ca_key_is_refused(ca_dir: Path) -> None:
    authority.write_private_key(ca_dir / "ca.key", authority.generate_key())
    with pytest.raises(AuthorityError, match="does not match"):
        authority.issue_client(ca_dir, "alice")


def test_serials_are_random_and_distinct(ca_dir: Path) -> None:
    serials = set()
    for cn in ("a", "b", "c"):
        cert_path, _ = authority.issue_client(ca_dir, cn)
        serials.add(_cert(cert_path).serial_number)
    serials.add(_ca(ca_dir).serial_number)
    assert len(serials) == 4
    assert all(s.bit_length() > 64 for s in serials)


def test_rsa_keys(tmp_path: Path) -> None:
    authority.init_ca(tmp_path, key_type="rsa")
    cert_path, key_path = authority.issue_client(tmp_path, "alice", key_type="rsa")
    cert = _cert(cert_path)
    public = cert.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.key_size == 3072
    ku = _ext(cert, x509.KeyUsage).value
    assert ku.digital_signature and ku.key_encipherment
    cert.verify_directly_issued_by(_ca(tmp_path))
    assert isinstance(authority.load_private_key(key_path), rsa.RSAPrivateKey)


# ---------------------------------------------------------------------------
# revocation
# ---------------------------------------------------------------------------


def test_revoke_adds_serial_and_resigns(ca_dir: Path) -> None:
    cert_path, _ = authority.issue_client(ca_dir, "alice")
    other_path, _ = authority.issue_client(ca_dir, "bob")
    serial = authority.revoke(ca_dir, cert_path)
    cert = _cert(cert_path)
    assert serial == cert.serial_number
    assert _mode(ca_dir / "crl.pem") == 0o644

    crl = _crl(ca_dir)
    ca = _ca(ca_dir)
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    assert _crl_number(crl) == 2
    entry = crl.get_revoked_certificate_by_serial_number(serial)
    assert entry is not None
    assert abs(entry.revocation_date_utc - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)
    assert crl.get_revoked_certificate_by_serial_number(_cert(other_path).serial_number) is None
    # No temporary files are left behind by the atomic rewrite.
    assert not [p for p in ca_dir.iterdir() if p.name.startswith(".")]


def test_revoke_twice_is_idempotent(ca_dir: Path) -> None:
    cert_path, _ = authority.issue_client(ca_dir, "alice")
    bob_path, _ = authority.issue_client(ca_dir, "bob")
    serial = authority.revoke(ca_dir, cert_path)
    first_date = _crl(ca_dir).get_revoked_certificate_by_serial_number(serial)
    assert first_date is not None
    authority.revoke(ca_dir, bob_path)
    assert authority.revoke(ca_dir, cert_path) == serial
    crl = _crl(ca_dir)
    assert [e.serial_number for e in crl] == [serial, _cert(bob_path).serial_number]
    again = crl.get_revoked_certificate_by_serial_number(serial)
    assert again is not None
    assert again.revocation_date_utc == first_date.revocation_date_utc
    assert _crl_number(crl) == 4


def test_revoke_refuses_foreign_certificate(ca_dir: Path, tmp_path: Path) -> None:
    # Same issuer name, different key: only the signature tells them apart.
    other = tmp_path / "other"
    authority.init_ca(other)
    foreign, _ = authority.issue_client(other, "mallory")
    assert _cert(foreign).issuer == _ca(ca_dir).subject
    before = (ca_dir / "crl.pem").read_bytes()
    with pytest.raises(AuthorityError, match="not issued by"):
        authority.revoke(ca_dir, foreign)
    assert (ca_dir / "crl.pem").read_bytes() == before

    renamed = tmp_path / "renamed"
    authority.init_ca(renamed, common_name="Another CA")
    foreign2, _ = authority.issue_client(renamed, "eve")
    with pytest.raises(AuthorityError, match="not issued by"):
        authority.revoke(ca_dir, foreign2)


def test_revoke_refuses_the_ca_itself(ca_dir: Path) -> None:
    with pytest.raises(AuthorityError, match="CA certificate itself"):
        authority.revoke(ca_dir, ca_dir / "ca.crt")


def test_revoke_refuses_non_certificate(ca_dir: Path) -> None:
    junk = ca_dir.parent / "junk.crt"
    junk.write_text("not a certificate\n")
    with pytest.raises(AuthorityError, match="no PEM certificate"):
        authority.revoke(ca_dir, junk)


def test_revoke_refuses_crl_signed_by_someone_else(ca_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    authority.init_ca(other)
    (ca_dir / "crl.pem").write_bytes((other / "crl.pem").read_bytes())
    cert_path, _ = authority.issue_client(ca_dir, "alice")
    with pytest.raises(AuthorityError, match="not signed by"):
        authority.revoke(ca_dir, cert_path)


def test_revoke_recreates_missing_crl(ca_dir: Path) -> None:
    cert_path, _ = authority.issue_client(ca_dir, "alice")
    (ca_dir / "crl.pem").unlink()
    serial = authority.revoke(ca_dir, cert_path)
    crl = _crl(ca_dir)
    assert [e.serial_number for e in crl] == [serial]
    assert _crl_number(crl) == 1


def test_refresh_crl_bumps_number_and_next_update(ca_dir: Path) -> None:
    cert_path, _ = authority.issue_client(ca_dir, "alice")
    serial = authority.revoke(ca_dir, cert_path, crl_days=1)
    before = _crl(ca_dir)
    authority.refresh_crl(ca_dir, crl_days=60)
    after = _crl(ca_dir)
    assert _crl_number(after) == _crl_number(before) + 1
    assert before.next_update_utc is not None and after.next_update_utc is not None
    assert after.next_update_utc > before.next_update_utc + dt.timedelta(days=58)
    assert after.last_update_utc >= before.last_update_utc
    assert [e.serial_number for e in after] == [serial]
    assert after.is_signature_valid(_ca(ca_dir).public_key())  # type: ignore[arg-type]


# ---------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------


def test_private_key_mode_tightened_on_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    path.write_text("old")
    os.chmod(path, 0o644)
    authority.write_private_key(path, authority.generate_key())
    assert _mode(path) == 0o600
    assert b"BEGIN PRIVATE KEY" in path.read_bytes()


def test_encrypted_private_key_round_trip(tmp_path: Path) -> None:
    key = authority.generate_key()
    path = tmp_path / "enc.key"
    authority.write_private_key(path, key, passphrase=b"correct horse")
    assert b"BEGIN ENCRYPTED PRIVATE KEY" in path.read_bytes()
    assert _mode(path) == 0o600
    loaded = authority.load_private_key(path, b"correct horse")
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    assert loaded.private_numbers() == key.private_numbers()
    with pytest.raises(AuthorityError):
        authority.load_private_key(path, b"wrong")
    with pytest.raises(AuthorityError, match="encrypted"):
        authority.load_private_key(path)


def test_write_pem_bundle_round_trip(ca_dir: Path, tmp_path: Path) -> None:
    leaf, _ = authority.issue_client(ca_dir, "alice")
    bundle = tmp_path / "bundle.pem"
    authority.write_pem(bundle, _cert(leaf), _ca(ca_dir), _crl(ca_dir))
    assert _mode(bundle) == 0o644
    assert authority.load_certificates(bundle) == [_cert(leaf), _ca(ca_dir)]
    assert b"BEGIN X509 CRL" in bundle.read_bytes()


def test_build_certificate_subject_and_overrides() -> None:
    ca_key = authority.generate_key()
    ca = authority.build_certificate(
        subject_cn="Test CA",
        public_key=ca_key.public_key(),
        issuer_cert=None,
        issuer_key=ca_key,
        is_ca=True,
        usage="ca",
    )
    leaf_key = authority.generate_key()
    start = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    cert = authority.build_certificate(
        subject_cn="alice",
        public_key=leaf_key.public_key(),
        issuer_cert=ca,
        issuer_key=ca_key,
        is_ca=False,
        usage="client",
        extra_subject=[x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example")],
        eku_override=[ExtendedKeyUsageOID.SERVER_AUTH],
        not_before=start,
        days=10,
        serial=0xABC,
    )
    assert cert.subject.rfc4514_string() == "CN=alice,O=Example"
    assert list(_ext(cert, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert cert.serial_number == 0xABC
    assert cert.not_valid_before_utc == start
    assert cert.not_valid_after_utc == start + dt.timedelta(days=10)
    cert.verify_directly_issued_by(ca)

    no_eku = authority.build_certificate(
        subject_cn="bob",
        public_key=leaf_key.public_key(),
        issuer_cert=ca,
        issuer_key=ca_key,
        is_ca=False,
        usage="client",
        eku_override=[],
        key_usage_override=x509.KeyUsage(
            digital_signature=False,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=True,
            key_agreement=False,
            key_cert_sign=False,
            crl_sign=False,
            encipher_only=False,
            decipher_only=False,
        ),
    )
    with pytest.raises(x509.ExtensionNotFound):
        _ext(no_eku, x509.ExtendedKeyUsage)
    assert _ext(no_eku, x509.KeyUsage).value.data_encipherment


def test_build_crl_explicit_dates() -> None:
    key = authority.generate_key()
    ca = authority.build_certificate(
        subject_cn="Test CA",
        public_key=key.public_key(),
        issuer_cert=None,
        issuer_key=key,
        is_ca=True,
        usage=None,
    )
    assert _ext(ca, x509.KeyUsage).value.key_cert_sign
    last = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    nxt = dt.datetime(2020, 2, 1, tzinfo=dt.UTC)
    revoked_at = dt.datetime(2019, 12, 31, tzinfo=dt.UTC)
    crl = authority.build_crl(
        issuer_cert=ca,
        issuer_key=key,
        revoked=[(7, revoked_at), (9, revoked_at)],
        last_update=last,
        next_update=nxt,
        crl_number=42,
    )
    assert crl.last_update_utc == last
    assert crl.next_update_utc == nxt
    assert _crl_number(crl) == 42
    assert [e.serial_number for e in crl] == [7, 9]
    assert crl.is_signature_valid(key.public_key())


# ---------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="pgtls-proxy")
    commands.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    return func(args)


def test_cli_flow(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "pki"
    assert _run(["pki", "init", str(d), "--days", "100"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    assert str(d / "ca.crt") in out and str(d / "ca.key") in out and str(d / "crl.pem") in out

    assert _run(["pki", "server", str(d), "db", "--san", "127.0.0.1", "--san", "DNS:x"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == f"wrote {d / 'db.crt'} {d / 'db.key'}"
    sans = _ext(_cert(d / "db.crt"), x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["db", "x"]

    assert _run(["pki", "client", str(d), "alice", "--days", "7", "--san", "email:a@x.org"]) == 0
    assert str(d / "alice.crt") in capsys.readouterr().out

    assert _run(["pki", "revoke", str(d), str(d / "alice.crt"), "--crl-days", "3"]) == 0
    out = capsys.readouterr().out
    assert format(_cert(d / "alice.crt").serial_number, "x") in out
    assert str(d / "crl.pem") in out

    assert _run(["pki", "crl", str(d)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {d / 'crl.pem'}"
    assert _crl_number(_crl(d)) == 3


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "pki"
    assert _run(["pki", "init", str(d)]) == 0
    capsys.readouterr()
    assert _run(["pki", "init", str(d)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1

    assert _run(["pki", "client", str(d), "a/b"]) == 1
    assert capsys.readouterr().err.startswith("error: ")
    assert _run(["pki", "server", str(d), "db", "--san", "IP:nope"]) == 1
    assert "IP:nope" in capsys.readouterr().err
    assert _run(["pki", "revoke", str(d), str(tmp_path / "missing.crt")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.crt" in err


def test_cli_rejects_bad_days(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _run(["pki", "client", "d", "alice", "--days", "0"])
    with pytest.raises(SystemExit):
        _run(["pki", "init", "d", "--key-type", "dsa"])
    capsys.readouterr()


# ---------------------------------------------------------------------------
# the certificates work for real TLS
# ---------------------------------------------------------------------------


@dataclass
class _Outcome:
    server_error: BaseException | None = None
    client_error: BaseException | None = None
    peer_cn: str | None = None
    reply: bytes = b""


def _handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext, server_hostname: str
) -> _Outcome:
    """Run one mutual-TLS exchange over a socketpair (server in a thread)."""
    outcome = _Outcome()
    server_sock, client_sock = socket.socketpair()
    server_sock.settimeout(10)
    client_sock.settimeout(10)

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(server_sock, server_side=True) as tls:
                der = tls.getpeercert(binary_form=True)
                assert der is not None
                outcome.peer_cn = CertIdentity.from_der(der).cn
                if tls.recv(4) == b"ping":
                    tls.sendall(b"pong")
        except (ssl.SSLError, OSError) as exc:
            outcome.server_error = exc
        finally:
            server_sock.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(client_sock, server_hostname=server_hostname) as tls:
            tls.sendall(b"ping")
            outcome.reply = tls.recv(4)
    except (ssl.SSLError, OSError) as exc:
        outcome.client_error = exc
    finally:
        client_sock.close()
        thread.join(10)
    return outcome


def _contexts(
    directory: Path, server: str, client: str, *, crl: bool = False
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(directory / f"{server}.crt", directory / f"{server}.key")
    server_ctx.load_verify_locations(cafile=directory / "ca.crt")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    if crl:
        server_ctx.load_verify_locations(cafile=directory / "crl.pem")
        server_ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(cafile=directory / "ca.crt")
    client_ctx.load_cert_chain(directory / f"{client}.crt", directory / f"{client}.key")
    return server_ctx, client_ctx


@pytest.mark.parametrize("key_type", ["ec", "rsa"])
def test_issued_certificates_complete_mutual_tls(tmp_path: Path, key_type: str) -> None:
    kt: authority.KeyType = "rsa" if key_type == "rsa" else "ec"
    authority.init_ca(tmp_path, key_type=kt)
    authority.issue_server(tmp_path, "db.example.com", ["127.0.0.1"], key_type=kt)
    authority.issue_client(tmp_path, "alice", key_type=kt)
    server_ctx, client_ctx = _contexts(tmp_path, "db.example.com", "alice", crl=True)
    for hostname in ("db.example.com", "127.0.0.1"):
        outcome = _handshake(server_ctx, client_ctx, hostname)
        assert outcome.server_error is None, outcome.server_error
        assert outcome.client_error is None, outcome.client_error
        assert outcome.peer_cn == "alice"
        assert outcome.reply == b"pong"


def test_client_checks_server_name(tmp_path: Path) -> None:
    authority.init_ca(tmp_path)
    authority.issue_server(tmp_path, "db.example.com")
    authority.issue_client(tmp_path, "alice")
    outcome = _handshake(*_contexts(tmp_path, "db.example.com", "alice"), "other.example.com")
    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError)
    assert "mismatch" in outcome.client_error.verify_message.lower()


def test_server_cert_cannot_authenticate_a_client(tmp_path: Path) -> None:
    authority.init_ca(tmp_path)
    authority.issue_server(tmp_path, "db")
    authority.issue_server(tmp_path, "imposter")
    outcome = _handshake(*_contexts(tmp_path, "db", "imposter"), "db")
    assert isinstance(outcome.server_error, ssl.SSLCertVerificationError)
    assert "purpose" in outcome.server_error.verify_message
    assert outcome.reply == b""


def test_revoked_client_is_refused_with_crl_loaded(tmp_path: Path) -> None:
    authority.init_ca(tmp_path)
    authority.issue_server(tmp_path, "db")
    cert_path, _ = authority.issue_client(tmp_path, "alice")
    authority.revoke(tmp_path, cert_path)
    outcome = _handshake(*_contexts(tmp_path, "db", "alice", crl=True), "db")
    assert isinstance(outcome.server_error, ssl.SSLCertVerificationError)
    assert "revoked" in outcome.server_error.verify_message
    assert outcome.reply == b""
