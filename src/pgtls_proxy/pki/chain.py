"""Certificate chains built offline, from a leaf and a pool of candidate issuers.

OpenSSL builds the client's chain during the handshake, but Python's ``ssl``
before 3.13 has no public way to hand it back, and ``check`` has to judge the
server's own chain without any handshake at all. Both need the same small
walk: from a certificate to the one whose subject names its issuer and whose
key verifies its signature, until a self-signed certificate or a dead end.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

# Far deeper than any real PKI; it only bounds a walk through a hostile pool.
MAX_DEPTH = 16


def issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when ``issuer``'s subject and key account for ``cert``'s signature."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def is_self_signed(cert: x509.Certificate) -> bool:
    """A root: its own issuer, signed with its own key."""
    return cert.issuer == cert.subject and issued_by(cert, cert)


def public_key_der(cert: x509.Certificate) -> bytes:
    """The SubjectPublicKeyInfo, to compare keys of certificates that share a name."""
    return cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def find_issuer(
    cert: x509.Certificate, pool: Sequence[x509.Certificate]
) -> x509.Certificate | None:
    """The first certificate of ``pool`` that issued ``cert`` (name and signature)."""
    for candidate in pool:
        if candidate.subject == cert.issuer and issued_by(cert, candidate):
            return candidate
    return None


def build_chain(leaf: x509.Certificate, pool: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    """``[leaf, issuer, issuer's issuer, ...]`` as far as ``pool`` reaches.

    The walk stops at a self-signed certificate, at a certificate whose
    issuer is not in the pool, or at a loop; the caller decides whether the
    last element is an acceptable end.
    """
    chain = [leaf]
    current = leaf
    while len(chain) < MAX_DEPTH and not is_self_signed(current):
        issuer = find_issuer(current, pool)
        if issuer is None or issuer in chain:
            break
        chain.append(issuer)
        current = issuer
    return chain
