"""CRLs only move forward: the ordering rules of ``pki.revocation``, without sockets.

An older CRL, validly signed by the same CA, copied over the current one
must not lift the revocations made since. tests/integration/test_crl_rollback.py
shows the same with real clients, through the file watcher and SIGHUP.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pgtls_proxy.ca import authority
from pgtls_proxy.config import TLSSettings
from pgtls_proxy.pki.revocation import (
    CRLLoader,
    CRLSource,
    LoadedCRL,
    compare_crls,
    load_revocation,
)
from tests.fixtures.chain_pki import CA, ChainPKI

NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)


def settings(pki: ChainPKI, mode: str = "strict", **kw: Any) -> TLSSettings:
    cert, key = pki.server
    return TLSSettings(
        cert_file=cert, key_file=key, client_ca_file=pki.bundle, revocation=mode, **kw
    )


def cas(pki: ChainPKI) -> list[x509.Certificate]:
    return [pki.root.cert, pki.inter.cert, pki.inter2.cert]


def make_crl(
    pki: ChainPKI,
    number: int | None,
    revoked: tuple[str, ...] = (),
    *,
    age: dt.timedelta = dt.timedelta(minutes=5),
    stale: bool = False,
    issuer: CA | None = None,
) -> x509.CertificateRevocationList:
    """A CRL of the intermediate with this cRLNumber (None: without one), issued ``age`` ago."""
    ca = issuer or pki.inter
    this_update = NOW - age
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=ca.cert.subject,
        last_update=this_update,
        next_update=NOW - dt.timedelta(minutes=1) if stale else NOW + dt.timedelta(days=7),
    )
    if number is not None:
        builder = builder.add_extension(x509.CRLNumber(number), critical=False)
    for name in revoked:
        entry = (
            x509.RevokedCertificateBuilder()
            .serial_number(pki.serial(name))
            .revocation_date(this_update)
            .build()
        )
        builder = builder.add_revoked_certificate(entry)
    return builder.sign(ca.key, ca.cert.signature_hash_algorithm)  # type: ignore[arg-type]


def write(path: Path, crl: x509.CertificateRevocationList) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    authority.write_pem(path, crl)
    return path


def loaded(crl: x509.CertificateRevocationList, signer: bytes | None = b"k") -> LoadedCRL:
    return LoadedCRL(
        source=CRLSource("tls.crl_files[0]", Path("/crl.pem")),
        crl=crl,
        issuer=crl.issuer.rfc4514_string(),
        signer_key=signer,
        last_update=crl.last_update_utc,
        next_update=crl.next_update_utc,
        revoked_serials=frozenset(entry.serial_number for entry in crl),
        number=next(
            (e.value.crl_number for e in crl.extensions if isinstance(e.value, x509.CRLNumber)),
            None,
        ),
    )


def serials(crls: tuple[LoadedCRL, ...]) -> set[int]:
    return {serial for item in crls for serial in item.revoked_serials}


# ------------------------------------------------------------------ which CRL is newer


def test_the_higher_crl_number_is_newer_whatever_the_dates(chain_pki: ChainPKI) -> None:
    low = loaded(make_crl(chain_pki, 4, age=dt.timedelta(minutes=1)))
    high = loaded(make_crl(chain_pki, 5, age=dt.timedelta(hours=1)))
    assert compare_crls(high, low) == 1
    assert compare_crls(low, high) == -1


@pytest.mark.parametrize(("older", "newer"), [(None, None), (7, None), (None, 7), (7, 7)])
def test_without_two_different_numbers_the_later_this_update_is_newer(
    chain_pki: ChainPKI, older: int | None, newer: int | None
) -> None:
    old = loaded(make_crl(chain_pki, older, age=dt.timedelta(hours=2)))
    new = loaded(make_crl(chain_pki, newer, age=dt.timedelta(hours=1)))
    assert compare_crls(new, old) == 1
    assert compare_crls(old, new) == -1


def test_the_same_crl_is_no_change_and_a_twin_with_other_entries_cannot_be_ordered(
    chain_pki: ChainPKI,
) -> None:
    crl = make_crl(chain_pki, 3, ("alice-revoked",))
    assert compare_crls(loaded(crl), loaded(crl)) == 0
    twin = make_crl(chain_pki, 3)  # same number and thisUpdate, other entries
    assert compare_crls(loaded(twin), loaded(crl)) is None


# ------------------------------------------------------------------ the loader


def test_an_older_crl_over_the_current_one_is_ignored_and_reported_once(
    chain_pki: ChainPKI, tmp_path: Path
) -> None:
    path = write(tmp_path / "inter.pem", make_crl(chain_pki, 5, ("alice-revoked",)))
    old_bytes = write(tmp_path / "old.pem", make_crl(chain_pki, 4)).read_bytes()
    tls = settings(chain_pki, crl_files=(path,))
    loader = CRLLoader()
    first, problems = loader.load(tls, cas(chain_pki))
    assert problems == () and serials(first) == {chain_pki.serial("alice-revoked")}

    path.write_bytes(old_bytes)  # the attack: an older, validly signed CRL
    kept, problems = loader.load(tls, cas(chain_pki))
    assert kept == first
    [problem] = problems
    assert problem.older and not problem.repeated and not problem.kept
    assert str(path) in problem.message and "CN=Test Intermediate" in problem.message
    assert "cRLNumber 4" in problem.message and "cRLNumber 5" in problem.message
    assert "is older than the CRL in force" in problem.message

    # Another rebuild with the same files: still ignored, not reported again.
    again, problems = loader.load(tls, cas(chain_pki))
    assert again == first
    [problem] = problems
    assert problem.repeated

    # A newer CRL that lifts the revocation is legitimate and applies.
    write(path, make_crl(chain_pki, 6))
    newer, problems = loader.load(tls, cas(chain_pki))
    assert problems == () and serials(newer) == set() and newer[0].number == 6

    # And the old one again is a new change, reported again.
    path.write_bytes(old_bytes)
    kept, problems = loader.load(tls, cas(chain_pki))
    assert kept[0].number == 6 and problems[0].older and not problems[0].repeated


def test_a_stale_older_crl_cannot_replace_a_current_one(
    chain_pki: ChainPKI, tmp_path: Path
) -> None:
    path = write(tmp_path / "inter.pem", make_crl(chain_pki, 9, ("alice-revoked",)))
    tls = settings(chain_pki, crl_files=(path,))
    loader = CRLLoader()
    loader.load(tls, cas(chain_pki))
    write(path, make_crl(chain_pki, 8, stale=True, age=dt.timedelta(days=3)))
    kept, problems = loader.load(tls, cas(chain_pki))
    assert kept[0].number == 9 and kept[0].is_current(dt.datetime.now(dt.UTC))
    assert problems[0].older


def test_a_crl_file_removed_then_put_back_older(chain_pki: ChainPKI, tmp_path: Path) -> None:
    crl_dir = tmp_path / "crl.d"
    path = write(crl_dir / "inter.pem", make_crl(chain_pki, 5, ("alice-revoked",)))
    old = make_crl(chain_pki, 2)
    tls = settings(chain_pki, crl_dir=crl_dir)
    loader = CRLLoader()
    loader.load(tls, cas(chain_pki))
    path.unlink()
    # Removing the file takes the CRL away (strict then refuses the CA's clients) ...
    assert loader.load(tls, cas(chain_pki)) == ((), ())
    # ... but it cannot come back older, under its own name or another.
    for name in ("inter.pem", "renamed.pem"):
        back = write(crl_dir / name, old)
        crls, problems = loader.load(tls, cas(chain_pki))
        assert [c.number for c in crls] == [5]
        assert serials(crls) == {chain_pki.serial("alice-revoked")}
        [problem] = problems
        assert problem.older and str(back) in problem.message
        back.unlink()


@pytest.mark.parametrize("older_first", [True, False])
def test_two_crls_of_one_ca_at_once_the_newer_decides(
    chain_pki: ChainPKI, tmp_path: Path, older_first: bool
) -> None:
    """``crl_files`` and ``crl_dir`` naming one CA, the older one in either place."""
    in_files, in_dir = (7, 8) if older_first else (8, 7)
    listed = ("alice-revoked",)
    file = write(tmp_path / "file.pem", make_crl(chain_pki, in_files, listed))
    entry = write(tmp_path / "crl.d" / "entry.pem", make_crl(chain_pki, in_dir, listed))
    older = file if older_first else entry
    tls = settings(chain_pki, crl_files=(file,), crl_dir=entry.parent)
    checker = load_revocation(tls, cas(chain_pki))
    assert [c.number for c in checker.crls] == [8]
    assert len(checker.pem_for_openssl()) == 1  # OpenSSL sees the newer one only
    [problem] = checker.problems
    assert problem.older and str(older) in problem.message
    assert "cRLNumber 7" in problem.message and "cRLNumber 8" in problem.message


def test_the_same_crl_in_two_files_is_no_problem(chain_pki: ChainPKI, tmp_path: Path) -> None:
    crl = make_crl(chain_pki, 3, ("alice-revoked",))
    a, b = write(tmp_path / "a.pem", crl), write(tmp_path / "b.pem", crl)
    loader = CRLLoader()
    tls = settings(chain_pki, crl_files=(a, b))
    crls, problems = loader.load(tls, cas(chain_pki))
    assert problems == () and len(crls) == 1
    assert loader.load(tls, cas(chain_pki)) == (crls, ())


def test_a_twin_with_other_entries_keeps_the_crl_in_force(
    chain_pki: ChainPKI, tmp_path: Path
) -> None:
    path = write(tmp_path / "inter.pem", make_crl(chain_pki, 3, ("alice-revoked",)))
    tls = settings(chain_pki, crl_files=(path,))
    loader = CRLLoader()
    first, _ = loader.load(tls, cas(chain_pki))
    write(path, make_crl(chain_pki, 3))
    kept, problems = loader.load(tls, cas(chain_pki))
    assert kept == first
    assert "same cRLNumber and thisUpdate" in problems[0].message


def test_each_ca_is_ordered_on_its_own(chain_pki: ChainPKI, tmp_path: Path) -> None:
    inter = write(tmp_path / "inter.pem", make_crl(chain_pki, 50))
    root = write(tmp_path / "root.pem", make_crl(chain_pki, 1, issuer=chain_pki.root))
    checker = load_revocation(settings(chain_pki, crl_files=(inter, root)), cas(chain_pki))
    assert checker.problems == ()
    assert sorted(c.number or 0 for c in checker.crls) == [1, 50]


def test_crls_of_an_issuer_outside_the_bundle_are_not_ordered(
    chain_pki: ChainPKI, tmp_path: Path
) -> None:
    """Nothing verifies them at load time, so a forged one could look newest; ``check``
    warns about such CRLs, and the docs say to put the CA in tls.client_ca_file."""
    cert, key = chain_pki.server
    tls = TLSSettings(
        cert_file=cert,
        key_file=key,
        client_ca_file=chain_pki.root_file,
        crl_files=(write(tmp_path / "inter.pem", make_crl(chain_pki, 5, ("alice-revoked",))),),
    )
    loader = CRLLoader()
    loader.load(tls, [chain_pki.root.cert])
    write(tls.crl_files[0], make_crl(chain_pki, 4))
    crls, problems = loader.load(tls, [chain_pki.root.cert])
    assert problems == () and [c.number for c in crls] == [4] and crls[0].signer_key is None


def test_a_failed_build_reports_again(chain_pki: ChainPKI, tmp_path: Path) -> None:
    path = write(tmp_path / "inter.pem", make_crl(chain_pki, 5))
    tls = settings(chain_pki, crl_files=(path,))
    loader = CRLLoader()
    loader.load(tls, cas(chain_pki))
    write(path, make_crl(chain_pki, 4))
    assert not loader.load(tls, cas(chain_pki))[1][0].repeated
    loader.forget_reports()
    assert not loader.load(tls, cas(chain_pki))[1][0].repeated
    assert loader.load(tls, cas(chain_pki))[1][0].repeated


def test_pki_revoke_counts_crl_numbers_up(chain_pki: ChainPKI, tmp_path: Path) -> None:
    """The CA the proxy ships (``pgtls-proxy pki``) writes CRLs the proxy will accept."""
    ca_dir = tmp_path / "ca"
    authority.init_ca(ca_dir)
    authority.issue_client(ca_dir, "mallory")
    first = x509.load_pem_x509_crl((ca_dir / authority.CRL_FILE).read_bytes())
    authority.revoke(ca_dir, ca_dir / "mallory.crt")
    second = x509.load_pem_x509_crl((ca_dir / authority.CRL_FILE).read_bytes())
    assert compare_crls(loaded(second), loaded(first)) == 1
    assert second.public_bytes(serialization.Encoding.PEM) != first.public_bytes(
        serialization.Encoding.PEM
    )
