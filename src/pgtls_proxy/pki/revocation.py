"""CRLs: loading, and the revocation policy of ``tls.revocation``.

``strict`` is enforced by OpenSSL during the handshake (the CRLs are loaded
into the context with ``VERIFY_CRL_CHECK_CHAIN``, which demands a current CRL
for every certificate of the chain). ``lenient`` cannot be expressed with
those flags, so it is checked after the handshake with ``cryptography``
against the CRLs that loaded. ``off`` loads nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from pgtls_proxy.config import TLSSettings

_log = logging.getLogger("pgtls_proxy.revocation")


class _MetricsSink(Protocol):
    @property
    def crl_next_update(self) -> object: ...


@dataclass(frozen=True, slots=True)
class LoadedCRL:
    path: Path
    crl: x509.CertificateRevocationList
    issuer: str
    next_update: datetime | None
    revoked_serials: frozenset[int]


def read_crl(path: Path) -> list[x509.CertificateRevocationList]:
    """Parse a PEM (one or several CRLs) or DER CRL file."""
    data = path.read_bytes()
    if b"-----BEGIN X509 CRL-----" in data:
        out = []
        for block in data.split(b"-----END X509 CRL-----")[:-1]:
            start = block.find(b"-----BEGIN X509 CRL-----")
            out.append(x509.load_pem_x509_crl(block[start:] + b"-----END X509 CRL-----\n"))
        return out
    return [x509.load_der_x509_crl(data)]


def crl_paths(tls: TLSSettings) -> list[Path]:
    """Every CRL file the config names, directory entries in sorted order."""
    paths = list(tls.crl_files)
    if tls.crl_dir is not None and tls.crl_dir.is_dir():
        paths.extend(
            p for p in sorted(tls.crl_dir.iterdir()) if p.is_file() and not p.name.startswith(".")
        )
    return paths


class RevocationChecker:
    """The loaded CRLs and the policy to apply with them."""

    def __init__(self, mode: str, crls: Iterable[LoadedCRL]) -> None:
        self.mode = mode
        self.crls = tuple(crls)
        self._by_issuer: dict[str, list[LoadedCRL]] = {}
        for item in self.crls:
            self._by_issuer.setdefault(item.issuer, []).append(item)

    @property
    def openssl_crl_check(self) -> bool:
        return self.mode == "strict"

    def pem_for_openssl(self) -> list[str]:
        if self.mode == "off":
            return []
        return [c.crl.public_bytes(Encoding.PEM).decode("ascii") for c in self.crls]

    def check_chain(
        self, chain: Iterable[x509.Certificate], now: datetime | None = None
    ) -> tuple[str | None, list[str]]:
        """Lenient check of certificates below the trust anchor.

        Returns (failure label or None, problems worth logging).
        """
        if self.mode != "lenient":
            return None, []
        now = now or datetime.now(UTC)
        problems: list[str] = []
        for cert in chain:
            issuer = cert.issuer.rfc4514_string()
            crls = self._by_issuer.get(issuer)
            if not crls:
                problems.append(f"no CRL for issuer {issuer}")
                continue
            for item in crls:
                if item.next_update is not None and item.next_update < now:
                    problems.append(f"CRL {item.path} for {issuer} is past its nextUpdate")
                if cert.serial_number in item.revoked_serials:
                    return "revoked", problems
        return None, problems

    def export(self, metrics: object) -> None:
        gauge = getattr(metrics, "crl_next_update", None)
        if gauge is None:
            return
        for item in self.crls:
            if item.next_update is not None:
                gauge.labels(item.issuer).set(item.next_update.timestamp())


def load_revocation(tls: TLSSettings, now: datetime | None = None) -> RevocationChecker:
    """Load every CRL; unreadable files are logged and skipped."""
    if tls.revocation == "off":
        return RevocationChecker("off", ())
    loaded: list[LoadedCRL] = []
    for path in crl_paths(tls):
        try:
            crls = read_crl(path)
        except (OSError, ValueError) as exc:
            _log.warning("P: cannot load CRL %s: %s", path, exc)
            continue
        for crl in crls:
            loaded.append(
                LoadedCRL(
                    path=path,
                    crl=crl,
                    issuer=crl.issuer.rfc4514_string(),
                    next_update=crl.next_update_utc,
                    revoked_serials=frozenset(r.serial_number for r in crl),
                )
            )
    return RevocationChecker(tls.revocation, loaded)
