"""The identity a verified client certificate presents to the rules and the audit log.

Extracted once per handshake from the peer's DER certificate; everything the
rule engine (``identity.field``) and the audit record (``cert_serial``,
``cert_fingerprint_sha256``) need is computed here so the rest of the proxy
never touches ASN.1.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

IDENTITY_FIELDS = ("cn", "san_dns", "san_email", "san_uri", "subject")


@dataclass(frozen=True, slots=True)
class CertIdentity:
    """Identity fields of one certificate; SAN tuples keep certificate order."""

    subject: str
    issuer: str
    cn: str | None
    san_dns: tuple[str, ...]
    san_email: tuple[str, ...]
    san_uri: tuple[str, ...]
    serial_hex: str
    fingerprint_sha256: str
    not_before: dt.datetime
    not_after: dt.datetime

    @classmethod
    def from_der(cls, der: bytes) -> CertIdentity:
        """Parse a DER certificate (``SSLObject.getpeercert(binary_form=True)``).

        Raises ``ValueError`` for anything that is not a well-formed
        certificate, including malformed extensions, which ``cryptography``
        only parses on access.
        """
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError as exc:
            raise ValueError(f"malformed certificate: {exc}") from None
        return cls._build(cert, hashlib.sha256(der).hexdigest())

    @classmethod
    def from_certificate(cls, cert: x509.Certificate) -> CertIdentity:
        """The identity of an already parsed certificate."""
        return cls._build(cert, cert.fingerprint(hashes.SHA256()).hex())

    @classmethod
    def _build(cls, cert: x509.Certificate, fingerprint: str) -> CertIdentity:
        try:
            subject = cert.subject
            cn_attrs = subject.get_attributes_for_oid(NameOID.COMMON_NAME)
            cn: str | None = None
            if cn_attrs:
                value = cn_attrs[0].value
                cn = value if isinstance(value, str) else value.decode("utf-8", "replace")
            dns: list[str] = []
            email: list[str] = []
            uri: list[str] = []
            try:
                san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            except x509.ExtensionNotFound:
                pass
            else:
                for name in san.value:
                    if isinstance(name, x509.DNSName):
                        dns.append(name.value)
                    elif isinstance(name, x509.RFC822Name):
                        email.append(name.value)
                    elif isinstance(name, x509.UniformResourceIdentifier):
                        uri.append(name.value)
            return cls(
                subject=subject.rfc4514_string(),
                issuer=cert.issuer.rfc4514_string(),
                cn=cn,
                san_dns=tuple(dns),
                san_email=tuple(email),
                san_uri=tuple(uri),
                serial_hex=format(cert.serial_number, "x"),
                fingerprint_sha256=fingerprint,
                not_before=cert.not_valid_before_utc,
                not_after=cert.not_valid_after_utc,
            )
        except (ValueError, x509.DuplicateExtension, x509.UnsupportedGeneralNameType) as exc:
            raise ValueError(f"malformed certificate: {exc}") from None

    def values(self, field: str) -> tuple[str, ...]:
        """The candidate identity strings for ``identity.field``, in certificate order.

        An empty tuple means the certificate has no such entry and so
        matches no rule.
        """
        if field == "cn":
            return () if self.cn is None else (self.cn,)
        if field == "subject":
            return (self.subject,)
        if field == "san_dns":
            return self.san_dns
        if field == "san_email":
            return self.san_email
        if field == "san_uri":
            return self.san_uri
        raise ValueError(f"unknown identity field {field!r} (one of {', '.join(IDENTITY_FIELDS)})")
