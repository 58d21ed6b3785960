"""``pgtls-proxy check`` on broken configs: each mistake gives exactly its line.

The command runs as users run it (``cli.main``), on a config that serves in
the integration tests; each case breaks one thing.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from pgtls_proxy import cli
from pgtls_proxy.ca import authority
from tests.fixtures.pki import PKIFiles
from tests.fixtures.proxy import base_config

NOW = dt.datetime.now(dt.UTC)
SERVER_SANS = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]


@dataclass
class Case:
    """A config to check (``tmp``, ``pki``) and the lines ``check`` must print."""

    tmp: Path
    pki: PKIFiles
    data: dict[str, Any]

    @property
    def tls(self) -> dict[str, Any]:
        return self.data["tls"]  # type: ignore[no-any-return]

    def ca(self) -> tuple[x509.Certificate, Any]:
        return (
            authority.load_certificates(self.pki.ca)[0],
            authority.load_private_key(self.pki.ca_key),
        )

    def copy_key(self, source: Path, mode: int = 0o600) -> Path:
        path = self.tmp / source.name
        shutil.copy(source, path)
        path.chmod(mode)
        self.tls["key_file"] = str(path)
        return path

    def server_cert(self, **kw: Any) -> Path:
        """A server certificate for localhost, issued by ``issuer`` (default: the CA)."""
        issuer_cert, issuer_key = kw.pop("issuer", None) or self.ca()
        extra = kw.pop("extra", ())
        key = authority.generate_key()
        cert = authority.build_certificate(
            subject_cn="localhost",
            public_key=key.public_key(),
            issuer_cert=issuer_cert,
            issuer_key=issuer_key,
            is_ca=False,
            usage="server",
            sans=SERVER_SANS,
            **kw,
        )
        path = self.tmp / "server.crt"
        authority.write_pem(path, cert, *extra)
        authority.write_private_key(self.tmp / "server.key", key)
        self.tls["cert_file"], self.tls["key_file"] = str(path), str(self.tmp / "server.key")
        return path

    def crl(self, name: str = "crl.pem", **kw: Any) -> Path:
        ca_cert, ca_key = self.ca()
        path = self.tmp / name
        authority.write_pem(path, authority.build_crl(issuer_cert=ca_cert, issuer_key=ca_key, **kw))
        self.tls["crl_files"] = [str(path)]
        return path

    def encrypted_key(self, passphrase: str | None) -> tuple[Path, Path]:
        key = self.tmp / "enc.key"
        authority.write_private_key(
            key, authority.load_private_key(self.pki.server_key), b"the real one"
        )
        self.tls["key_file"] = str(key)
        secret = self.tmp / "pass"
        if passphrase is not None:
            secret.write_text(passphrase + "\n")
            secret.chmod(0o600)
            self.tls["key_passphrase_file"] = str(secret)
        return key, secret


Breakage = Callable[[Case], list[str]]


def good(case: Case) -> list[str]:
    return []


def key_readable_by_others(case: Case) -> list[str]:
    key = case.copy_key(case.pki.server_key, 0o644)
    return [
        f"error: tls.key_file: {key} is readable by group or others (mode 0644);"
        " make it 0600 (or 0640 owned by root)"
    ]


def key_group_readable(case: Case) -> list[str]:
    """0640 is fine when root owns the key (a service group reads it), as in PostgreSQL."""
    key = case.copy_key(case.pki.server_key, 0o640)
    if key.stat().st_uid == 0:
        return []
    return [
        f"error: tls.key_file: {key} is readable by group or others (mode 0640);"
        " make it 0600 (or 0640 owned by root)"
    ]


def key_missing(case: Case) -> list[str]:
    case.tls["key_file"] = str(case.tmp / "absent.key")
    return [
        f"error: tls.key_file: cannot read {case.tmp / 'absent.key'}: No such file or directory"
    ]


def key_of_another_certificate(case: Case) -> list[str]:
    key = case.copy_key(case.pki.client("bob")[1])
    return [
        f"error: tls.key_file: {key} does not hold a private key matching {case.pki.server_cert}"
    ]


def wrong_passphrase(case: Case) -> list[str]:
    key, secret = case.encrypted_key("not the real one")
    return [f"error: tls.key_passphrase_file: the passphrase in {secret} does not decrypt {key}"]


def encrypted_key_without_passphrase(case: Case) -> list[str]:
    key, _ = case.encrypted_key(None)
    return [
        f"error: tls.key_passphrase_file: {key} is encrypted; set tls.key_passphrase_file"
        " to a file holding its passphrase"
    ]


def passphrase_readable_by_others(case: Case) -> list[str]:
    _, secret = case.encrypted_key("the real one")
    secret.chmod(0o604)
    return [
        f"error: tls.key_passphrase_file: {secret} is readable by group or others"
        " (mode 0604); make it 0600 (or 0640 owned by root)"
    ]


def _intermediate(case: Case, cn: str = "Server Intermediate") -> tuple[x509.Certificate, Any]:
    ca_cert, ca_key = case.ca()
    key = authority.generate_key()
    cert = authority.build_certificate(
        subject_cn=cn,
        public_key=key.public_key(),
        issuer_cert=ca_cert,
        issuer_key=ca_key,
        is_ca=True,
        usage="ca",
    )
    return cert, key


def _trusted_intermediate(case: Case) -> tuple[x509.Certificate, Any]:
    """An intermediate in client_ca_file, with its CRL: only the server chain is wrong."""
    cert, key = _intermediate(case)
    bundle = case.tmp / "bundle.crt"
    authority.write_pem(bundle, case.ca()[0], cert)
    case.tls["client_ca_file"] = str(bundle)
    inter_crl = case.tmp / "inter-crl.pem"
    authority.write_pem(inter_crl, authority.build_crl(issuer_cert=cert, issuer_key=key))
    case.tls["crl_files"] = [str(case.pki.crl), str(inter_crl)]
    return cert, key


def chain_without_intermediate(case: Case) -> list[str]:
    case.server_cert(issuer=_trusted_intermediate(case))
    return [
        "error: tls.cert_file: incomplete chain: append the intermediate CN=Server Intermediate,"
        " which issued CN=localhost; clients only have root CAs"
    ]


def chain_with_intermediate(case: Case) -> list[str]:
    inter = _trusted_intermediate(case)
    case.server_cert(issuer=inter, extra=[inter[0]])
    return []


def chain_issuer_unknown(case: Case) -> list[str]:
    case.server_cert(issuer=_intermediate(case, "Elsewhere"))
    return [
        "warning: tls.cert_file: cannot tell whether the chain is complete: CN=Elsewhere, the"
        " issuer of CN=localhost, is in neither tls.cert_file, tls.client_ca_file nor the"
        " system trust store"
    ]


def server_cert_expired(case: Case) -> list[str]:
    end = NOW - dt.timedelta(days=2)
    case.server_cert(not_before=NOW - dt.timedelta(days=30), not_after=end)
    return [f"error: tls.cert_file: certificate expired on {end:%Y-%m-%d}"]


def server_cert_expiring(case: Case) -> list[str]:
    end = NOW + dt.timedelta(days=10, hours=1)
    case.server_cert(not_after=end)
    return [f"warning: tls.cert_file: certificate expires in 10 days ({end:%Y-%m-%d})"]


def listen_name_not_in_certificate(case: Case) -> list[str]:
    case.data["listen"] = [{"address": "127.0.0.1:0"}, {"address": "192.0.2.10:6432"}]
    return [
        "warning: tls.cert_file: the certificate does not cover 192.0.2.10 (a listen address);"
        " clients with sslmode=verify-full connecting to it will refuse it"
    ]


def _stale_crl(case: Case) -> tuple[Path, dt.datetime]:
    end = (NOW - dt.timedelta(days=1)).replace(microsecond=0)
    return case.crl(last_update=NOW - dt.timedelta(days=10), next_update=end), end


def crl_stale(case: Case) -> list[str]:
    path, end = _stale_crl(case)
    return [
        f"error: tls.crl_files[0]: {path}: the CRL of CN=pgtls-proxy CA is stale since"
        f" {end:%Y-%m-%d %H:%M} UTC (nextUpdate); re-sign it (pgtls-proxy pki crl)"
    ]


def crl_stale_lenient(case: Case) -> list[str]:
    case.tls["revocation"] = "lenient"
    return ["warning" + line.removeprefix("error") for line in crl_stale(case)]


def crl_lists_its_own_ca(case: Case) -> list[str]:
    ca_cert, _ = case.ca()
    path = case.crl(revoked=[(ca_cert.serial_number, NOW)])
    return [
        f"warning: tls.crl_files[0]: {path}: the CRL of CN=pgtls-proxy CA lists that CA itself;"
        " strict revocation refuses every certificate under it"
    ]


def crl_file_missing(case: Case) -> list[str]:
    path = case.tmp / "gone.pem"
    case.tls["crl_files"] = [str(path)]
    return [f"error: tls.crl_files[0]: cannot read CRL file {path}: No such file or directory"]


def crl_signed_by_another_key(case: Case) -> list[str]:
    ca_cert, _ = case.ca()
    path = case.tmp / "forged.pem"
    forged = authority.build_crl(issuer_cert=ca_cert, issuer_key=authority.generate_key())
    authority.write_pem(path, forged)
    case.tls["crl_files"] = [str(path)]
    return [
        f"error: tls.crl_files[0]: {path}: the signature of the CRL of CN=pgtls-proxy CA"
        " does not verify against that CA's key in tls.client_ca_file"
    ]


def no_crl_in_strict_mode(case: Case) -> list[str]:
    case.tls["crl_files"] = []
    return [
        "error: tls.crl_files: no CRL from CN=pgtls-proxy CA: strict revocation refuses"
        " every client certificate it issued"
    ]


def crl_dir_missing(case: Case) -> list[str]:
    case.tls["crl_dir"] = str(case.tmp / "crl.d")
    return [f"error: tls.crl_dir: {case.tmp / 'crl.d'}: no such directory"]


def min_version_too_low(case: Case) -> list[str]:
    case.tls["min_version"] = "1.1"
    return ["error: tls.min_version: must be one of 1.2, 1.3, not '1.1'"]


def rule_with_unknown_backend(case: Case) -> list[str]:
    case.data["rules"][0]["backend"] = "nope"
    return ["error: rules[0].backend: names an unknown backend 'nope'"]


def regex_that_does_not_compile(case: Case) -> list[str]:
    case.data["rules"][2]["identity"] = "/(carol/"
    return ["error: rules[2].identity: is not a valid regex: missing ): (carol"]


def shadowed_rule(case: Case) -> list[str]:
    case.data["rules"].append({"identity": "bob", "user": "bob", "databases": ["app"]})
    return [
        "warning: rules[4]: shadowed by rules[1], which comes first and decides for every client"
        " this rule would match"
    ]


def backend_ca_missing(case: Case) -> list[str]:
    path = case.tmp / "backend-ca.crt"
    case.data["backends"]["main"]["tls"] = {"mode": "verify-ca", "ca_file": str(path)}
    return [
        f"error: backends.main.tls.ca_file: cannot load {path}: [Errno 2] No such file or directory"
    ]


def _passwords(case: Case, text: str, mode: int = 0o600) -> Path:
    path = case.tmp / "userlist.txt"
    path.write_text(text)
    path.chmod(mode)
    case.data["backends"]["main"]["auth"] = {"passwords_file": str(path)}
    return path


def passwords_file_private_and_valid(case: Case) -> list[str]:
    _passwords(case, '"alice" "s3cret"\n"bob" "md5' + "0" * 32 + '"\n')
    return []


def passwords_file_readable_by_others(case: Case) -> list[str]:
    path = _passwords(case, '"alice" "s3cret"\n', 0o644)
    return [
        f"error: backends.main.auth.passwords_file: {path} is readable by group or others"
        " (mode 0644); make it 0600 (or 0640 owned by root)"
    ]


def passwords_file_malformed(case: Case) -> list[str]:
    # The secret is not quoted; the error names the line, not the secret.
    path = _passwords(case, '# comment\n"alice" s3cret\n')
    return [
        f"error: backends.main.auth.passwords_file: {path}: line 2: expected a double-quoted value"
    ]


def passwords_file_not_utf8(case: Case) -> list[str]:
    path = _passwords(case, "")
    path.write_bytes(b'"alice" "caf\xe9"\n')  # Latin-1, as an old editor might save it
    return [f"error: backends.main.auth.passwords_file: {path} is not UTF-8 text"]


def passwords_file_missing(case: Case) -> list[str]:
    path = case.tmp / "userlist.txt"
    case.data["backends"]["main"]["auth"] = {"passwords_file": str(path)}
    return [
        f"error: backends.main.auth.passwords_file: cannot read {path}: No such file or directory"
    ]


def cert_file_not_pem(case: Case) -> list[str]:
    path = case.tmp / "junk.crt"
    path.write_text("not a certificate\n")
    case.tls["cert_file"] = str(path)
    return [f"error: tls.cert_file: {path} holds no PEM certificate"]


def client_ca_missing(case: Case) -> list[str]:
    path = case.tmp / "nope.crt"
    case.tls["client_ca_file"] = str(path)
    return [f"error: tls.client_ca_file: cannot read {path}: No such file or directory"]


CASES = [
    good,
    key_readable_by_others,
    key_group_readable,
    key_missing,
    key_of_another_certificate,
    wrong_passphrase,
    encrypted_key_without_passphrase,
    passphrase_readable_by_others,
    chain_without_intermediate,
    chain_with_intermediate,
    chain_issuer_unknown,
    server_cert_expired,
    server_cert_expiring,
    listen_name_not_in_certificate,
    crl_stale,
    crl_stale_lenient,
    crl_lists_its_own_ca,
    crl_file_missing,
    crl_signed_by_another_key,
    no_crl_in_strict_mode,
    crl_dir_missing,
    min_version_too_low,
    rule_with_unknown_backend,
    regex_that_does_not_compile,
    shadowed_rule,
    backend_ca_missing,
    passwords_file_private_and_valid,
    passwords_file_readable_by_others,
    passwords_file_malformed,
    passwords_file_not_utf8,
    passwords_file_missing,
    cert_file_not_pem,
    client_ca_missing,
]


def assert_check_prints(
    case: Case, expected: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """``check`` on the case's config prints exactly ``expected``; exit 1 on any error."""
    path = case.tmp / "proxy.yaml"
    path.write_text(yaml.safe_dump(case.data))
    status = cli.main(["check", "--config", str(path)])
    out = capsys.readouterr()
    assert out.out.splitlines() == expected
    assert out.err == ""
    assert status == (1 if any(line.startswith("error:") for line in expected) else 0)


@pytest.mark.parametrize("breakage", CASES, ids=[c.__name__ for c in CASES])
def test_check_reports_exactly_the_problem(
    breakage: Breakage, tmp_path: Path, pki: PKIFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    case = Case(tmp_path, pki, base_config(pki, 5432))
    assert_check_prints(case, breakage(case), capsys)


def test_check_never_prints_the_passphrase(
    tmp_path: Path, pki: PKIFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    case = Case(tmp_path, pki, base_config(pki, 5432))
    case.encrypted_key("hunter2 is not it")
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(case.data))
    assert cli.main(["check", "--config", str(path)]) == 1
    out = capsys.readouterr()
    assert "hunter2" not in out.out + out.err
    assert "the real one" not in out.out + out.err
