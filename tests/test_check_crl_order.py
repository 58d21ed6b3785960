"""``pgtls-proxy check`` on CRLs that would not move forward: exactly their lines.

The running proxy ignores a CRL older than the one it enforces for the same
CA; ``check`` says so from the files alone, e.g. when ``crl_files`` and
``crl_dir`` both hold a CRL of one CA.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgtls_proxy import cli
from pgtls_proxy.ca import authority
from tests.fixtures.pki import PKIFiles
from tests.fixtures.proxy import base_config
from tests.test_check import Case, assert_check_prints

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
CA = "CN=pgtls-proxy CA"


def crl(case: Case, path: Path, number: int, *, age_minutes: int = 10, **kw: Any) -> str:
    """Write a CRL of the test CA; returns how messages describe it."""
    ca_cert, ca_key = case.ca()
    this_update = NOW - dt.timedelta(minutes=age_minutes)
    path.parent.mkdir(parents=True, exist_ok=True)
    authority.write_pem(
        path,
        authority.build_crl(
            issuer_cert=ca_cert,
            issuer_key=ca_key,
            crl_number=number,
            last_update=this_update,
            **kw,
        ),
    )
    return f"cRLNumber {number}, thisUpdate {this_update:%Y-%m-%d %H:%M:%S} UTC"


def two_crls_the_older_in_crl_files(case: Case) -> list[str]:
    old, new = case.tmp / "old.pem", case.tmp / "crl.d" / "new.pem"
    old_text = crl(case, old, 4, age_minutes=5)  # later thisUpdate, lower number
    new_text = crl(case, new, 5)
    case.tls["crl_files"] = [str(old)]
    case.tls["crl_dir"] = str(new.parent)
    return [
        f"error: tls.crl_files[0]: {old}: the CRL of {CA} ({old_text}) is older than the CRL"
        f" in force ({new_text} from {new}); ignored, CRLs only move forward"
    ]


def two_crls_the_older_in_crl_dir(case: Case) -> list[str]:
    new, old = case.tmp / "new.pem", case.tmp / "crl.d" / "old.pem"
    new_text = crl(case, new, 2)
    old_text = crl(case, old, 1)
    case.tls["crl_files"] = [str(new)]
    case.tls["crl_dir"] = str(old.parent)
    return [
        f"error: tls.crl_dir: {old}: the CRL of {CA} ({old_text}) is older than the CRL"
        f" in force ({new_text} from {new}); ignored, CRLs only move forward"
    ]


def two_crls_same_number_other_entries(case: Case) -> list[str]:
    first, second = case.tmp / "a.pem", case.tmp / "b.pem"
    text = crl(case, first, 3)
    crl(case, second, 3, revoked=[(1234, NOW)])
    case.tls["crl_files"] = [str(first), str(second)]
    return [
        f"error: tls.crl_files[1]: {second}: the CRL of {CA} ({text}) has the same cRLNumber"
        f" and thisUpdate as, but other entries than, the CRL in force ({text} from {first});"
        " ignored, CRLs only move forward"
    ]


def the_same_crl_twice(case: Case) -> list[str]:
    first, second = case.tmp / "a.pem", case.tmp / "b.pem"
    crl(case, first, 3)
    second.write_bytes(first.read_bytes())
    case.tls["crl_files"] = [str(first), str(second)]
    return []


def crl_of_a_ca_outside_the_bundle(case: Case) -> list[str]:
    elsewhere = case.tmp / "elsewhere"
    authority.init_ca(elsewhere, common_name="Elsewhere")
    case.tls["crl_files"] = [str(case.pki.crl), str(elsewhere / "crl.pem")]
    return [
        f"warning: tls.crl_files[1]: {elsewhere / 'crl.pem'}: cannot verify the CRL of"
        " CN=Elsewhere: that CA is not in tls.client_ca_file, so an older copy of this CRL"
        " would not be refused either; add the CA there"
    ]


CASES: list[Callable[[Case], list[str]]] = [
    two_crls_the_older_in_crl_files,
    two_crls_the_older_in_crl_dir,
    two_crls_same_number_other_entries,
    the_same_crl_twice,
    crl_of_a_ca_outside_the_bundle,
]


@pytest.mark.parametrize("breakage", CASES, ids=[c.__name__ for c in CASES])
def test_check_reports_crls_that_would_not_move_forward(
    breakage: Callable[[Case], list[str]],
    tmp_path: Path,
    pki: PKIFiles,
    capsys: pytest.CaptureFixture[str],
) -> None:
    case = Case(tmp_path, pki, base_config(pki, 5432))
    assert_check_prints(case, breakage(case), capsys)


def test_the_crl_check_names_both_crls_in_any_order(
    tmp_path: Path, pki: PKIFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    """Whichever file comes first, the older one is the one reported."""
    case = Case(tmp_path, pki, base_config(pki, 5432))
    newer, older = tmp_path / "a.pem", tmp_path / "b.pem"
    crl(case, newer, 9)
    crl(case, older, 8)
    for order in ([newer, older], [older, newer]):
        case.tls["crl_files"] = [str(p) for p in order]
        path = tmp_path / "proxy.yaml"
        path.write_text(yaml.safe_dump(case.data))
        assert cli.main(["check", "--config", str(path)]) == 1
        [line] = capsys.readouterr().out.splitlines()
        assert f"{older}: the CRL of {CA} (cRLNumber 8" in line
        assert "in force (cRLNumber 9" in line
