"""A small file-based certificate authority for the ``pki`` commands.

The lower half builds keys, certificates and CRLs in memory so tests can mint
any certificate they need (including deliberately wrong ones). The upper half
is the directory layout behind ``pgtls-proxy pki``: ``DIR/ca.crt``,
``DIR/ca.key`` (0600), ``DIR/crl.pem`` and one ``NAME.crt``/``NAME.key`` pair
per issued certificate. Files that a running proxy may be watching are
replaced atomically so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import re
import tempfile
import urllib.parse
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import (
    CertificateIssuerPrivateKeyTypes,
    CertificatePublicKeyTypes,
    PrivateKeyTypes,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

KeyType = Literal["ec", "rsa"]
Usage = Literal["ca", "server", "client"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CRL_FILE = "crl.pem"

RSA_BITS = 3072
# Certificates start a little in the past so a peer with a slow clock accepts them.
CLOCK_SKEW = dt.timedelta(minutes=5)

_RESERVED_STEMS = frozenset({"ca"})
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


class AuthorityError(Exception):
    """A ``pki`` operation cannot be carried out; the message is for the operator."""


# ---------------------------------------------------------------------------
# In-memory building blocks
# ---------------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def generate_key(key_type: KeyType = "ec") -> PrivateKey:
    """A fresh private key: EC P-256 (small, fast) or RSA 3072 for old clients."""
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    raise AuthorityError(f"unknown key type {key_type!r} (use ec or rsa)")


def _hash_for(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    # EdDSA signs the message itself; every other algorithm signs a SHA-256 digest.
    if isinstance(key, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey):
        return None
    return hashes.SHA256()


def _authority_key_id(
    issuer_cert: x509.Certificate | None, issuer_key: CertificateIssuerPrivateKeyTypes
) -> x509.AuthorityKeyIdentifier:
    if issuer_cert is not None:
        try:
            ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        except x509.ExtensionNotFound:
            pass
        else:
            return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)
    return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key())


def _leaf_key_usage(public_key: CertificatePublicKeyTypes) -> x509.KeyUsage:
    # RSA key exchange (TLS 1.2 non-ECDHE suites) needs keyEncipherment.
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=isinstance(public_key, rsa.RSAPublicKey),
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)


def build_certificate(
    *,
    subject_cn: str,
    public_key: CertificatePublicKeyTypes,
    issuer_cert: x509.Certificate | None,
    issuer_key: CertificateIssuerPrivateKeyTypes,
    is_ca: bool,
    usage: Usage | None,
    sans: Sequence[x509.GeneralName] = (),
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    days: int = 825,
    serial: int | None = None,
    extra_subject: Sequence[x509.NameAttribute[str]] = (),
    eku_override: Sequence[ObjectIdentifier] | None = None,
    key_usage_override: x509.KeyUsage | None = None,
) -> x509.Certificate:
    """Sign one certificate; self-signed when ``issuer_cert`` is None.

    ``extra_subject`` attributes are encoded before the CN (most general
    first), so ``[O=Example]`` gives the subject ``CN=alice,O=Example``.
    ``usage`` picks the key usage / extended key usage profile; the overrides
    replace it, which is how tests make certificates a verifier must refuse
    (an empty ``eku_override`` leaves the extension out).
    """
    if usage is None and is_ca:
        usage = "ca"
    now = _now()
    start = not_before if not_before is not None else now - CLOCK_SKEW
    end = not_after if not_after is not None else (not_before or now) + dt.timedelta(days=days)
    subject = x509.Name([*extra_subject, x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    issuer_name = subject if issuer_cert is None else issuer_cert.subject

    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(public_key)
        .serial_number(serial if serial is not None else x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(_authority_key_id(issuer_cert, issuer_key), critical=False)
    )

    key_usage: x509.KeyUsage | None
    eku: Sequence[ObjectIdentifier]
    if usage == "ca":
        key_usage, eku = _CA_KEY_USAGE, ()
    elif usage == "server":
        key_usage, eku = _leaf_key_usage(public_key), (ExtendedKeyUsageOID.SERVER_AUTH,)
    elif usage == "client":
        key_usage, eku = _leaf_key_usage(public_key), (ExtendedKeyUsageOID.CLIENT_AUTH,)
    else:
        key_usage, eku = None, ()
    if key_usage_override is not None:
        key_usage = key_usage_override
    if eku_override is not None:
        eku = eku_override

    if key_usage is not None:
        builder = builder.add_extension(key_usage, critical=True)
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(issuer_key, _hash_for(issuer_key))


def build_crl(
    *,
    issuer_cert: x509.Certificate,
    issuer_key: CertificateIssuerPrivateKeyTypes,
    revoked: Iterable[tuple[int, dt.datetime]] = (),
    last_update: dt.datetime | None = None,
    next_update: dt.datetime | None = None,
    days: int = 30,
    crl_number: int = 1,
) -> x509.CertificateRevocationList:
    """Sign a CRL listing ``(serial, revocation date)`` pairs, in the given order."""
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer_cert.subject)
        .last_update(last_update if last_update is not None else now - CLOCK_SKEW)
        .next_update(next_update if next_update is not None else now + dt.timedelta(days=days))
        .add_extension(_authority_key_id(issuer_cert, issuer_key), critical=False)
        .add_extension(x509.CRLNumber(crl_number), critical=False)
    )
    for serial, when in revoked:
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(issuer_key, _hash_for(issuer_key))


# ---------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------


def write_private_key(
    path: str | os.PathLike[str], key: PrivateKeyTypes, passphrase: bytes | None = None
) -> None:
    """Write a PKCS#8 PEM key that is never readable by others, not even briefly."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    data = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        # The file may have existed with a looser mode: O_CREAT's mode only
        # applies to new files.
        os.fchmod(fh.fileno(), 0o600)
        fh.write(data)


def _atomic_write(path: Path, data: bytes, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_pem(
    path: str | os.PathLike[str],
    *objs: x509.Certificate | x509.CertificateRevocationList,
) -> None:
    """Write certificates and/or CRLs as one PEM file (0644), replacing it atomically."""
    data = b"".join(obj.public_bytes(serialization.Encoding.PEM) for obj in objs)
    _atomic_write(Path(path), data, 0o644)


def load_certificates(path: str | os.PathLike[str]) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle, in file order."""
    data = Path(path).read_bytes()
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise AuthorityError(f"{os.fspath(path)}: no PEM certificate found") from None


def load_private_key(
    path: str | os.PathLike[str], passphrase: bytes | None = None
) -> PrivateKeyTypes:
    """A PEM private key (PKCS#8 or traditional), decrypted with ``passphrase``."""
    data = Path(path).read_bytes()
    try:
        return serialization.load_pem_private_key(data, passphrase)
    except TypeError as exc:
        # Raised for "encrypted but no passphrase" and the reverse.
        raise AuthorityError(f"{os.fspath(path)}: {exc}") from None
    except ValueError:
        raise AuthorityError(
            f"{os.fspath(path)}: not a PEM private key, or the passphrase is wrong"
        ) from None


def _load_crl(path: Path) -> x509.CertificateRevocationList:
    data = path.read_bytes()
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError:
        raise AuthorityError(f"{path}: not a CRL") from None


# ---------------------------------------------------------------------------
# Name and SAN parsing
# ---------------------------------------------------------------------------


def _valid_dns(name: str) -> bool:
    if not name or len(name) > 253 or not name.isascii():
        return False
    labels = name.split(".")
    if labels[0] == "*" and len(labels) > 1:
        labels = labels[1:]
    return all(_DNS_LABEL.fullmatch(label) for label in labels)


def _dns(value: str, original: str) -> x509.DNSName:
    if not _valid_dns(value):
        raise AuthorityError(f"invalid DNS name in SAN {original!r}")
    return x509.DNSName(value)


def _ip(value: str, original: str) -> x509.IPAddress:
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        raise AuthorityError(f"invalid IP address in SAN {original!r}") from None


def _email(value: str, original: str) -> x509.RFC822Name:
    local, at, domain = value.rpartition("@")
    if not at or not local or not value.isascii() or any(c.isspace() for c in value):
        raise AuthorityError(f"invalid email address in SAN {original!r}")
    if not _valid_dns(domain):
        raise AuthorityError(f"invalid email domain in SAN {original!r}")
    return x509.RFC822Name(value)


def _uri(value: str, original: str) -> x509.UniformResourceIdentifier:
    if not value.isascii() or any(c.isspace() or not c.isprintable() for c in value):
        raise AuthorityError(f"invalid URI in SAN {original!r}")
    try:
        scheme = urllib.parse.urlsplit(value).scheme
    except ValueError:
        scheme = ""
    if not scheme:
        raise AuthorityError(f"URI SAN {original!r} needs a scheme, e.g. spiffe://")
    return x509.UniformResourceIdentifier(value)


def _bare(value: str, original: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(value))
    except ValueError:
        pass
    if ":" in value:
        raise AuthorityError(f"unsupported SAN {original!r}")
    return _dns(value, original)


def parse_san(value: str, *, client: bool = False) -> x509.GeneralName:
    """One ``--san`` argument: ``DNS:``/``IP:`` prefixed or bare (IP if it parses).

    Client certificates additionally take ``email:`` and ``URI:`` (SPIFFE IDs
    and the like), since those are identity fields a rule can match on.
    """
    prefix, sep, rest = value.partition(":")
    kind = prefix.lower() if sep else ""
    if kind == "dns":
        return _dns(rest, value)
    if kind == "ip":
        return _ip(rest, value)
    if client and kind == "email":
        return _email(rest, value)
    if client and kind == "uri":
        return _uri(rest, value)
    if kind in ("email", "uri"):
        raise AuthorityError(f"SAN {value!r}: server certificates take DNS: and IP: only")
    return _bare(value, value)


def _san_key(name: x509.GeneralName) -> tuple[str, str]:
    value = name.value
    if isinstance(name, x509.DNSName | x509.RFC822Name):
        return (type(name).__name__, str(value).lower())
    return (type(name).__name__, str(value))


def _dedup(names: Iterable[x509.GeneralName]) -> list[x509.GeneralName]:
    seen: set[tuple[str, str]] = set()
    out: list[x509.GeneralName] = []
    for name in names:
        key = _san_key(name)
        if key not in seen:
            seen.add(key)
            out.append(name)
    return out


def _check_stem(stem: str, what: str) -> None:
    """Refuse names that would write outside DIR or over the CA's own files."""
    if not stem or stem in (".", ".."):
        raise AuthorityError(f"{what} must not be empty, '.' or '..'")
    bad = {"/", "\\", "\0"} | {sep for sep in (os.sep, os.altsep) if sep}
    if any(ch in stem for ch in bad):
        raise AuthorityError(f"{what} {stem!r} must not contain a path separator")
    if not stem.isprintable():
        raise AuthorityError(f"{what} {stem!r} must not contain control characters")
    if stem.lower() in _RESERVED_STEMS:
        raise AuthorityError(f"{what} {stem!r} would overwrite the CA's own files")


# ---------------------------------------------------------------------------
# Directory operations (the ``pki`` commands)
# ---------------------------------------------------------------------------


def _signing_key(key: PrivateKeyTypes, path: Path) -> CertificateIssuerPrivateKeyTypes:
    if isinstance(
        key,
        ec.EllipticCurvePrivateKey
        | rsa.RSAPrivateKey
        | dsa.DSAPrivateKey
        | ed25519.Ed25519PrivateKey
        | ed448.Ed448PrivateKey,
    ):
        return key
    raise AuthorityError(f"{path}: this key type cannot sign certificates")


def _spki(key: CertificatePublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _load_ca(directory: Path) -> tuple[x509.Certificate, CertificateIssuerPrivateKeyTypes]:
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if not cert_path.exists() or not key_path.exists():
        raise AuthorityError(f"{directory} holds no CA (run 'pgtls-proxy pki init {directory}')")
    ca_cert = load_certificates(cert_path)[0]
    ca_key = _signing_key(load_private_key(key_path), key_path)
    if _spki(ca_cert.public_key()) != _spki(ca_key.public_key()):
        raise AuthorityError(f"{key_path} does not match {cert_path}")
    return ca_cert, ca_key


def init_ca(
    directory: str | os.PathLike[str],
    *,
    key_type: KeyType = "ec",
    days: int = 3650,
    common_name: str = "pgtls-proxy CA",
    crl_days: int = 30,
) -> None:
    """Create a self-signed CA and an empty CRL in ``directory``.

    An existing CA is never overwritten: certificates it issued would be
    orphaned and could no longer be revoked.
    """
    path = Path(directory)
    for existing in (CA_KEY, CA_CERT):
        if (path / existing).exists():
            raise AuthorityError(f"{path / existing} already exists; refusing to replace a CA")
    if days <= 0 or crl_days <= 0:
        raise AuthorityError("validity must be at least one day")
    if not path.exists():
        path.mkdir(parents=True, mode=0o700)
        os.chmod(path, 0o700)  # mkdir's mode is filtered through the umask
    key = generate_key(key_type)
    try:
        cert = build_certificate(
            subject_cn=common_name,
            public_key=key.public_key(),
            issuer_cert=None,
            issuer_key=key,
            is_ca=True,
            usage="ca",
            days=days,
        )
    except ValueError as exc:
        raise AuthorityError(f"cannot build CA certificate: {exc}") from None
    write_private_key(path / CA_KEY, key)
    write_pem(path / CA_CERT, cert)
    write_pem(
        path / CRL_FILE, build_crl(issuer_cert=cert, issuer_key=key, days=crl_days, crl_number=1)
    )


def _issue(
    directory: Path,
    stem: str,
    usage: Usage,
    sans: Sequence[x509.GeneralName],
    key_type: KeyType,
    days: int,
) -> tuple[Path, Path]:
    if days <= 0:
        raise AuthorityError("validity must be at least one day")
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    for existing in (cert_path, key_path):
        if existing.exists():
            raise AuthorityError(
                f"{existing} already exists; revoke it and move it away before reissuing"
            )
    ca_cert, ca_key = _load_ca(directory)
    key = generate_key(key_type)
    try:
        cert = build_certificate(
            subject_cn=stem,
            public_key=key.public_key(),
            issuer_cert=ca_cert,
            issuer_key=ca_key,
            is_ca=False,
            usage=usage,
            sans=sans,
            days=days,
        )
    except ValueError as exc:
        raise AuthorityError(f"cannot build certificate for {stem!r}: {exc}") from None
    write_private_key(key_path, key)
    write_pem(cert_path, cert)
    return cert_path, key_path


def issue_server(
    directory: str | os.PathLike[str],
    name: str,
    sans: Sequence[str] = (),
    *,
    key_type: KeyType = "ec",
    days: int = 825,
) -> tuple[Path, Path]:
    """Issue ``DIR/NAME.crt`` and ``DIR/NAME.key``; returns (cert path, key path).

    NAME is the CN and the first DNS SAN; when NAME is an IP address it is
    also added as an IP SAN, which is what TLS clients check for addresses.
    """
    _check_stem(name, "server name")
    if not _valid_dns(name):
        raise AuthorityError(f"server name {name!r} is not a valid DNS name")
    names: list[x509.GeneralName] = [x509.DNSName(name)]
    with contextlib.suppress(ValueError):
        names.append(x509.IPAddress(ipaddress.ip_address(name)))
    names.extend(parse_san(san) for san in sans)
    return _issue(Path(directory), name, "server", _dedup(names), key_type, days)


def issue_client(
    directory: str | os.PathLike[str],
    cn: str,
    *,
    days: int = 365,
    key_type: KeyType = "ec",
    sans: Sequence[str] = (),
) -> tuple[Path, Path]:
    """Issue ``DIR/CN.crt`` and ``DIR/CN.key``; returns (cert path, key path)."""
    _check_stem(cn, "client CN")
    names = _dedup(parse_san(san, client=True) for san in sans)
    return _issue(Path(directory), cn, "client", names, key_type, days)


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


def _current_crl(
    directory: Path, ca_cert: x509.Certificate, ca_key: CertificateIssuerPrivateKeyTypes
) -> tuple[list[tuple[int, dt.datetime]], int]:
    """Entries and number of ``DIR/crl.pem``; a missing file counts as empty."""
    path = directory / CRL_FILE
    if not path.exists():
        return [], 0
    crl = _load_crl(path)
    if crl.issuer != ca_cert.subject or not crl.is_signature_valid(ca_key.public_key()):
        raise AuthorityError(f"{path} was not signed by {directory / CA_CERT}")
    entries = [(entry.serial_number, entry.revocation_date_utc) for entry in crl]
    return entries, _crl_number(crl)


def _resign(
    directory: Path,
    ca_cert: x509.Certificate,
    ca_key: CertificateIssuerPrivateKeyTypes,
    entries: Sequence[tuple[int, dt.datetime]],
    number: int,
    crl_days: int,
) -> None:
    if crl_days <= 0:
        raise AuthorityError("CRL validity must be at least one day")
    crl = build_crl(
        issuer_cert=ca_cert, issuer_key=ca_key, revoked=entries, days=crl_days, crl_number=number
    )
    write_pem(directory / CRL_FILE, crl)


def revoke(
    directory: str | os.PathLike[str], certfile: str | os.PathLike[str], *, crl_days: int = 30
) -> int:
    """Add the certificate in ``certfile`` to ``DIR/crl.pem``; returns its serial.

    Only certificates this CA signed are accepted: a serial from another CA
    would revoke nothing and hide the mistake. Revoking twice keeps one entry.
    """
    path = Path(directory)
    ca_cert, ca_key = _load_ca(path)
    cert = load_certificates(certfile)[0]
    if cert.issuer != ca_cert.subject:
        raise AuthorityError(f"{os.fspath(certfile)} was not issued by {path / CA_CERT}")
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise AuthorityError(f"{os.fspath(certfile)} was not issued by {path / CA_CERT}") from None
    if cert.serial_number == ca_cert.serial_number and cert.subject == ca_cert.subject:
        raise AuthorityError("refusing to revoke the CA certificate itself")
    entries, number = _current_crl(path, ca_cert, ca_key)
    if all(serial != cert.serial_number for serial, _ in entries):
        entries.append((cert.serial_number, _now()))
    _resign(path, ca_cert, ca_key, entries, number + 1, crl_days)
    return cert.serial_number


def refresh_crl(directory: str | os.PathLike[str], *, crl_days: int = 30) -> None:
    """Re-sign ``DIR/crl.pem`` with the same entries before it goes stale.

    Strict revocation fails closed on a stale CRL, so this is meant for cron.
    """
    path = Path(directory)
    ca_cert, ca_key = _load_ca(path)
    entries, number = _current_crl(path, ca_cert, ca_key)
    _resign(path, ca_cert, ca_key, entries, number + 1, crl_days)
