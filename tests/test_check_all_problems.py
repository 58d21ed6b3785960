"""``pgtls-proxy check`` lists every problem in one run.

A config problem (an unknown key, a bad value) no longer hides the problems
of the files the config names, nor the other config problems; ``run`` still
stops at the first. And a server certificate file without the intermediate
between it and a known CA is an error: clients do not have intermediates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

from pgtls_proxy import cli
from pgtls_proxy.ca import authority
from pgtls_proxy.check import Severity, find_problems
from pgtls_proxy.config import ConfigError, load_config
from tests.fixtures.pki import PKIFiles
from tests.fixtures.proxy import base_config
from tests.test_check import Case

READABLE = "is readable by group or others (mode 0644); make it 0600 (or 0640 owned by root)"


def _check(
    case: Case, capsys: pytest.CaptureFixture[str], expected: list[str], status: int
) -> Path:
    path = case.tmp / "proxy.yaml"
    path.write_text(yaml.safe_dump(case.data))
    assert cli.main(["check", "--config", str(path)]) == status
    out = capsys.readouterr()
    assert out.out.splitlines() == expected
    assert out.err == ""
    return path


@pytest.fixture
def case(tmp_path: Path, pki: PKIFiles) -> Case:
    return Case(tmp_path, pki, base_config(pki, 5432))


def test_unknown_key_does_not_stop_the_file_checks(
    case: Case, capsys: pytest.CaptureFixture[str]
) -> None:
    case.tls["bogus"] = 1
    key = case.copy_key(case.pki.server_key, 0o644)
    path = _check(
        case,
        capsys,
        ["error: tls.bogus: unknown key", f"error: tls.key_file: {key} {READABLE}"],
        1,
    )
    # run still refuses the file at its first problem.
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.key, info.value.message) == ("tls.bogus", "unknown key")


def test_every_unknown_key_is_listed(case: Case, capsys: pytest.CaptureFixture[str]) -> None:
    case.data["colour"] = "blue"
    case.data["listen"][0]["backlog"] = 5
    case.tls["ocsp"] = True
    case.data["rules"][1]["usr"] = "bob"
    case.data["backends"]["main"]["tls"] = {"mode": "disable", "sni": "x"}
    case.data["metrics"]["path"] = "/metrics"
    _check(
        case,
        capsys,
        [
            "error: colour: unknown key",
            "error: backends.main.tls.sni: unknown key",
            "error: metrics.path: unknown key",
            "error: listen[0].backlog: unknown key",
            "error: tls.ocsp: unknown key",
            "error: rules[1].usr: unknown key",
        ],
        1,
    )


def test_a_bad_value_skips_only_the_checks_of_its_section(
    case: Case, capsys: pytest.CaptureFixture[str]
) -> None:
    """A broken ``tls`` leaves its files unchecked; a backend's secrets are still checked."""
    case.tls["min_version"] = "1.1"
    case.copy_key(case.pki.server_key, 0o644)  # not reported: tls is broken
    case.data["logging"] = {"level": "trace"}
    userlist = case.tmp / "userlist.txt"
    userlist.write_text('"alice" "secret"\n')
    userlist.chmod(0o644)
    case.data["backends"]["main"]["auth"] = {"passwords_file": str(userlist)}
    case.data["rules"][0]["action"] = "deny"
    case.data["rules"][2]["identity"] = "/(carol/"
    _check(
        case,
        capsys,
        [
            "error: tls.min_version: must be one of 1.2, 1.3, not '1.1'",
            "error: rules[0].action: must be one of allow, reject, not 'deny'",
            "error: rules[2].identity: is not a valid regex: missing ): (carol",
            "error: logging.level: must be one of debug, info, warning, error, not 'trace'",
            f"error: backends.main.auth.passwords_file: {userlist} {READABLE}",
        ],
        1,
    )


def test_a_broken_backend_is_not_unknown_to_its_rules(
    case: Case, capsys: pytest.CaptureFixture[str]
) -> None:
    case.data["backends"]["main"]["connect_timeout"] = -1
    case.data["rules"][0]["backend"] = "main"
    key = case.copy_key(case.pki.server_key, 0o644)
    _check(
        case,
        capsys,
        [
            "error: backends.main.connect_timeout: must be greater than 0, not -1",
            f"error: tls.key_file: {key} {READABLE}",
        ],
        1,
    )


def test_a_file_that_is_no_mapping_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "proxy.yaml"
    path.write_text("- just\n- a list\n")
    findings = find_problems(str(path))
    assert [(f.severity, f.key, f.message) for f in findings] == [
        (Severity.ERROR, "(top level)", "must be a mapping")
    ]


# ------------------------------------------------------------------ chains


def _ca(case: Case, cn: str, issuer: tuple[x509.Certificate, Any]) -> tuple[x509.Certificate, Any]:
    key = authority.generate_key()
    cert = authority.build_certificate(
        subject_cn=cn,
        public_key=key.public_key(),
        issuer_cert=issuer[0],
        issuer_key=issuer[1],
        is_ca=True,
        usage="ca",
    )
    return cert, key


def _trust(case: Case, *cas: tuple[x509.Certificate, Any]) -> None:
    """The root and ``cas`` in client_ca_file, each with a CRL, so only the chain is wrong."""
    bundle = case.tmp / "bundle.crt"
    authority.write_pem(bundle, case.ca()[0], *(cert for cert, _ in cas))
    case.tls["client_ca_file"] = str(bundle)
    crls = [str(case.pki.crl)]
    for i, (cert, key) in enumerate(cas):
        crl = case.tmp / f"crl-{i}.pem"
        authority.write_pem(crl, authority.build_crl(issuer_cert=cert, issuer_key=key))
        crls.append(str(crl))
    case.tls["crl_files"] = crls


def test_chain_missing_the_upper_of_two_intermediates_is_an_error(
    case: Case, capsys: pytest.CaptureFixture[str]
) -> None:
    upper = _ca(case, "Upper Intermediate", case.ca())
    lower = _ca(case, "Lower Intermediate", upper)
    _trust(case, upper, lower)
    case.server_cert(issuer=lower, extra=[lower[0]])
    _check(
        case,
        capsys,
        [
            "error: tls.cert_file: incomplete chain: append the intermediate"
            " CN=Upper Intermediate, which issued CN=Lower Intermediate; clients only have"
            " root CAs"
        ],
        1,
    )


def test_chain_with_the_root_but_not_the_intermediate_is_an_error(
    case: Case, capsys: pytest.CaptureFixture[str]
) -> None:
    inter = _ca(case, "Server Intermediate", case.ca())
    _trust(case, inter)
    case.server_cert(issuer=inter, extra=[case.ca()[0]])
    _check(
        case,
        capsys,
        [
            "error: tls.cert_file: incomplete chain: append the intermediate"
            " CN=Server Intermediate, which issued CN=localhost; clients only have root CAs"
        ],
        1,
    )


def test_chain_with_both_intermediates_passes(
    case: Case, capsys: pytest.CaptureFixture[str]
) -> None:
    upper = _ca(case, "Upper Intermediate", case.ca())
    lower = _ca(case, "Lower Intermediate", upper)
    _trust(case, upper, lower)
    case.server_cert(issuer=lower, extra=[lower[0], upper[0]])
    _check(case, capsys, [], 0)
