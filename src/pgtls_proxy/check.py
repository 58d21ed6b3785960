"""``pgtls-proxy check``: validate a config and every file it names.

Each finding is one line, ``error: <key path>: <what>`` or
``warning: <key path>: <what>``, so scripts can grep and operators can go to
the key. The checks are the mistakes DBAs make with PostgreSQL's own SSL
settings: keys others can read, a key that belongs to another certificate, a
certificate file without its intermediates, certificates and CRLs past their
dates, CRLs signed by the wrong key, and rules that can never match.

Areas are checked independently, so one run lists every problem; within an
area a broken file stops the checks that would only repeat it. The config
itself is read the same way: every unknown key and every broken section is
listed, and only the file checks that would read a broken section are left
out.
"""

from __future__ import annotations

import ipaddress
import os
import resource
import ssl
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from cryptography import x509

from pgtls_proxy import descriptors
from pgtls_proxy.config import Config, HostPort, TLSSettings, review_config
from pgtls_proxy.errors import KeyPathError
from pgtls_proxy.passwords import PasswordsFileError, parse_userlist
from pgtls_proxy.pki import contexts
from pgtls_proxy.pki.chain import build_chain, find_issuer, is_self_signed, public_key_der
from pgtls_proxy.pki.contexts import TLSConfigError
from pgtls_proxy.pki.revocation import LoadedCRL, load_revocation
from pgtls_proxy.pki.shadow import shadowed_rules
from pgtls_proxy.secretfiles import mode_problem

EXPIRY_WARNING_DAYS = 30
_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "*"})


class Severity(StrEnum):
    """An error makes ``check`` exit 1: ``run`` would refuse, or clients would."""

    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True)
class Finding:
    """One problem; printed as ``<severity>: <key path>: <message>``."""

    severity: Severity
    key: str
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.key}: {self.message}"


class Findings:
    """What ``check`` reports, in the order found."""

    def __init__(self) -> None:
        self.items: list[Finding] = []

    def error(self, key: str, what: str) -> None:
        self.items.append(Finding(Severity.ERROR, key, what))

    def warning(self, key: str, what: str) -> None:
        self.items.append(Finding(Severity.WARNING, key, what))

    def failed(self, exc: KeyPathError) -> None:
        self.error(exc.key or "config", exc.message)


def find_problems(path: str, now: datetime | None = None) -> list[Finding]:
    """Every problem of the config at ``path`` and the files it names (empty when all is well).

    A section of the config that fails to parse skips the checks that read it;
    the others still run.
    """
    now = now or datetime.now(UTC)
    review = review_config(path)
    found = Findings()
    for exc in review.errors:
        found.failed(exc)
    config = review.config
    if config is None:
        return found.items
    broken = review.broken
    if "tls" not in broken:
        cas = _check_server(config, now, found)
        if cas is not None:
            _check_crls(config.tls, cas, now, found)
    if not broken & {"rules", "identity"}:
        _check_rules(config, found)
    _check_backends(config, found)  # a broken backend is left out of config.backends
    if not broken & {"limits", "workers"}:
        _check_descriptors(config, found)
    if "metrics" not in broken:
        _check_metrics(config, found)
    return found.items


def run_checks(path: str, now: datetime | None = None) -> list[str]:
    """The lines ``check`` prints for the config at ``path``."""
    return [str(finding) for finding in find_problems(path, now)]


def _check_descriptors(config: Config, found: Findings) -> None:
    """``run`` raises the soft RLIMIT_NOFILE to the hard one; is that enough?

    Measured in this process: run ``check`` under the same limits as the
    daemon (systemd's LimitNOFILE= does not apply to a shell).
    """
    problem = descriptors.shortfall(config, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    if problem is not None:
        found.warning("limits.max_connections", problem)


# ------------------------------------------------------------------ secrets on disk


def check_secret_file(path: Path, key: str, found: Findings) -> bool:
    """A private key or passphrase must not be readable by others; False if unreadable.

    The rule (PostgreSQL's) is the one ``run`` enforces: see
    :mod:`pgtls_proxy.secretfiles`.
    """
    try:
        path.stat()
    except OSError as exc:
        found.error(key, f"cannot read {path}: {exc.strerror or exc}")
        return False
    problem = mode_problem(path)
    if problem is not None:
        found.error(key, problem)
    if not os.access(path, os.R_OK):
        found.error(key, f"cannot read {path}: permission denied")
        return False
    return True


# ------------------------------------------------------------------ the server's own identity


def _check_server(config: Config, now: datetime, found: Findings) -> list[x509.Certificate] | None:
    """Key, certificate, chain, dates and names; returns the client CAs if they load."""
    tls = config.tls
    readable = check_secret_file(tls.key_file, "tls.key_file", found)
    if tls.key_passphrase_file is not None:
        readable &= check_secret_file(tls.key_passphrase_file, "tls.key_passphrase_file", found)
    certs: list[x509.Certificate] | None = None
    cas: list[x509.Certificate] | None = None
    try:
        certs = contexts.load_server_certificates(tls)
    except TLSConfigError as exc:
        found.failed(exc)
    try:
        cas = contexts.load_client_cas(tls)
    except TLSConfigError as exc:
        found.failed(exc)
    if certs is None or cas is None:
        return cas
    if readable:
        # Whatever else OpenSSL refuses: a key of another certificate, a
        # wrong passphrase, a cipher string that matches nothing.
        try:
            contexts.server_context(tls)
        except TLSConfigError as exc:
            found.failed(exc)
    _check_chain(certs, cas, found)
    _check_dates(certs, now, found)
    _check_names(certs[0], [item.address for item in config.listen], found)
    return cas


def _system_roots() -> list[x509.Certificate]:
    """The host's trust store, block by block: one odd certificate must not hide the rest."""
    cafile = ssl.get_default_verify_paths().cafile
    try:
        data = Path(cafile).read_bytes() if cafile else b""
    except OSError:
        return []
    roots = []
    end = b"-----END CERTIFICATE-----"
    for block in data.split(end)[:-1]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # old roots with non-RFC 5280 serials
            try:
                roots.append(x509.load_pem_x509_certificate(block.strip() + b"\n" + end))
            except ValueError:
                continue
    return roots


def _check_chain(
    certs: Sequence[x509.Certificate], cas: Sequence[x509.Certificate], found: Findings
) -> None:
    """``tls.cert_file`` must reach a root with what it holds itself: clients lack intermediates."""
    chain = build_chain(certs[0], certs[1:])
    top = chain[-1]
    if is_self_signed(top):
        return
    issuer = find_issuer(top, cas) or find_issuer(top, _system_roots())
    if issuer is None:
        found.warning(
            "tls.cert_file",
            f"cannot tell whether the chain is complete: {top.issuer.rfc4514_string()}, the"
            f" issuer of {top.subject.rfc4514_string()}, is in neither tls.cert_file,"
            " tls.client_ca_file nor the system trust store",
        )
    elif not is_self_signed(issuer):
        found.error(
            "tls.cert_file",
            f"incomplete chain: append the intermediate {issuer.subject.rfc4514_string()},"
            f" which issued {top.subject.rfc4514_string()}; clients only have root CAs",
        )


def _check_dates(certs: Sequence[x509.Certificate], now: datetime, found: Findings) -> None:
    leaf = certs[0]
    not_after = leaf.not_valid_after_utc
    left = not_after - now
    if leaf.not_valid_before_utc > now:
        found.error(
            "tls.cert_file",
            f"certificate is not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC",
        )
    elif left.total_seconds() <= 0:
        found.error("tls.cert_file", f"certificate expired on {not_after:%Y-%m-%d}")
    elif left.days < EXPIRY_WARNING_DAYS:
        found.warning(
            "tls.cert_file", f"certificate expires in {left.days} days ({not_after:%Y-%m-%d})"
        )
    for cert in certs[1:]:
        if cert.not_valid_after_utc <= now:
            found.error(
                "tls.cert_file",
                f"intermediate {cert.subject.rfc4514_string()} expired on"
                f" {cert.not_valid_after_utc:%Y-%m-%d}",
            )


def certificate_names(cert: x509.Certificate) -> tuple[list[str], list[str]]:
    """(DNS names, IP addresses) a client may check the host name against.

    Like libpq: the SAN when the certificate has one, else the CN.
    """
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        cns = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
        return [str(attr.value) for attr in cns], []
    dns = [name.lower() for name in san.get_values_for_type(x509.DNSName)]
    ips = [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return dns, ips


def _dns_matches(pattern: str, host: str) -> bool:
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


def _check_names(cert: x509.Certificate, hosts: Sequence[HostPort], found: Findings) -> None:
    dns, ips = certificate_names(cert)
    for address in hosts:
        host = address.host.lower()
        if host in _WILDCARD_HOSTS:
            continue
        try:
            covered = str(ipaddress.ip_address(host)) in ips
        except ValueError:
            covered = any(_dns_matches(pattern, host) for pattern in dns)
        if not covered:
            found.warning(
                "tls.cert_file",
                f"the certificate does not cover {address.host} (a listen address);"
                " clients with sslmode=verify-full connecting to it will refuse it",
            )


# ------------------------------------------------------------------ CRLs


def _crl_key(tls: TLSSettings) -> str:
    return "tls.crl_dir" if tls.crl_dir is not None and not tls.crl_files else "tls.crl_files"


def _signers(item: LoadedCRL, cas: Sequence[x509.Certificate]) -> list[x509.Certificate]:
    return [
        ca for ca in cas if item.signer_key is not None and public_key_der(ca) == item.signer_key
    ]


def _check_crls(
    tls: TLSSettings, cas: Sequence[x509.Certificate], now: datetime, found: Findings
) -> None:
    """Every CRL loads and verifies; strict mode has a current CRL from every CA.

    Two CRLs of one CA: the proxy enforces the newer and ignores the older
    as broken (CRLs only move forward), so the older is an error here too.
    """
    if tls.revocation == "off":
        return
    checker = load_revocation(tls, cas)
    strict = tls.revocation == "strict"
    report = found.error if strict else found.warning
    for problem in checker.problems:
        found.error(problem.source.key, problem.message)
    for item in checker.crls:
        if item.signer_key is None:
            found.warning(
                item.source.key,
                f"{item.source.path}: cannot verify the CRL of {item.issuer}: that CA is not"
                " in tls.client_ca_file, so an older copy of this CRL would not be refused"
                " either; add the CA there",
            )
        if any(ca.serial_number in item.revoked_serials for ca in _signers(item, cas)):
            # Measured with OpenSSL 3: strict also looks the trust anchor up in
            # its own CRL, so this refuses everything under it (as PostgreSQL).
            found.warning(
                item.source.key,
                f"{item.source.path}: the CRL of {item.issuer} lists that CA itself; strict"
                " revocation refuses every certificate under it",
            )
        if item.last_update > now:
            report(
                item.source.key,
                f"{item.source.path}: the CRL of {item.issuer} is not valid before"
                f" {item.last_update:%Y-%m-%d %H:%M} UTC",
            )
        elif item.next_update is not None and item.next_update <= now:
            report(
                item.source.key,
                f"{item.source.path}: the CRL of {item.issuer} is stale since"
                f" {item.next_update:%Y-%m-%d %H:%M} UTC (nextUpdate); re-sign it"
                " (pgtls-proxy pki crl)",
            )
    if any(not problem.older for problem in checker.problems):
        return  # a CA without a CRL is most likely the one whose file just failed
    for ca in checker.issuers_without_crl():
        if strict:
            found.error(
                _crl_key(tls),
                f"no CRL from {ca.subject.rfc4514_string()}: strict revocation refuses"
                " every client certificate it issued",
            )
        else:
            found.warning(
                _crl_key(tls),
                f"no CRL from {ca.subject.rfc4514_string()}: its revocations are not checked",
            )


# ------------------------------------------------------------------ policy and backends


def _check_rules(config: Config, found: Findings) -> None:
    for later, earlier in shadowed_rules(config.rules, config.identity.on_user_mismatch):
        found.warning(
            f"rules[{later}]",
            f"shadowed by rules[{earlier}], which comes first and decides for every client"
            " this rule would match",
        )


def _check_passwords_file(path: Path, key: str, found: Findings) -> None:
    """Backend secrets: as private as a key, and parseable.

    The proxy reads the file at a backend's first password challenge, so a
    broken one would otherwise surface only as failed logins.
    """
    if not check_secret_file(path, key, found):
        return
    try:
        parse_userlist(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        found.error(key, f"{path} is not UTF-8 text")
    except (OSError, PasswordsFileError) as exc:  # messages name lines, never secrets
        found.error(key, f"{path}: {exc}")


def _check_backends(config: Config, found: Findings) -> None:
    for name, backend in config.backends.items():
        if backend.auth.passwords_file is not None:
            _check_passwords_file(
                backend.auth.passwords_file, f"backends.{name}.auth.passwords_file", found
            )
        prefix = f"backends.{name}.tls"
        if backend.tls.key_file is not None:
            check_secret_file(backend.tls.key_file, f"{prefix}.key_file", found)
        if backend.tls.mode == "disable":
            continue
        try:
            contexts.backend_context(backend.tls, prefix)
        except TLSConfigError as exc:
            found.failed(exc)


# ------------------------------------------------------------------ the metrics endpoint


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name may resolve to anything


def _check_metrics(config: Config, found: Findings) -> None:
    """``metrics.tls`` loads; an endpoint beyond loopback without it is a warning."""
    address = config.metrics.address
    tls = config.metrics.tls
    if address is None:
        return
    if tls is None:
        if not _is_loopback(address.host):
            found.warning(
                "metrics.address",
                f"{address} listens beyond loopback without metrics.tls: anyone who reaches"
                " it reads the metrics; set metrics.tls (client certificates) or firewall it",
            )
        return
    readable = check_secret_file(tls.key_file, "metrics.tls.key_file", found)
    for key, path in (
        ("metrics.tls.cert_file", tls.cert_file),
        ("metrics.tls.client_ca_file", tls.client_ca_file),
    ):
        try:
            x509.load_pem_x509_certificates(path.read_bytes())
        except OSError as exc:
            found.error(key, f"cannot read {path}: {exc.strerror or exc}")
            readable = False
        except ValueError:
            found.error(key, f"{path} holds no PEM certificate")
            readable = False
    if readable:
        try:
            contexts.metrics_context(tls)  # the key matches the certificate
        except TLSConfigError as exc:
            found.failed(exc)
