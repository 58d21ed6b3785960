"""CRL loading and the lenient chain check, without sockets.

Strict mode is OpenSSL's; tests/integration/test_revocation.py proves it with
real clients. Here: which CRLs load, which are refused and why, what a broken
rewrite keeps, and how a chain is judged against what loaded.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pgtls_proxy.config import TLSSettings
from pgtls_proxy.pki.peer import first_certificate
from pgtls_proxy.pki.revocation import (
    CRLLoader,
    CRLSource,
    RevocationChecker,
    crl_sources,
    load_revocation,
    parse_crls,
)
from tests.fixtures.chain_pki import ChainPKI


def settings(pki: ChainPKI, mode: str = "lenient", **kw: Any) -> TLSSettings:
    cert, key = pki.server
    return TLSSettings(
        cert_file=cert, key_file=key, client_ca_file=pki.bundle, revocation=mode, **kw
    )


def cas(pki: ChainPKI) -> list[x509.Certificate]:
    return [pki.root.cert, pki.inter.cert, pki.inter2.cert]


def full_crls(pki: ChainPKI, tmp_path: Path, **inter_kw: Any) -> list[Path]:
    """Root CRL revoking Intermediate 2; intermediate CRLs, the first revoking alice-revoked."""
    return [
        pki.write_crl(tmp_path / "root.pem", pki.root, ["inter2"]),
        pki.write_crl(tmp_path / "inter.pem", pki.inter, ["alice-revoked"], **inter_kw),
        pki.write_crl(tmp_path / "inter2.pem", pki.inter2),
    ]


def checker(pki: ChainPKI, tmp_path: Path, mode: str = "lenient", **kw: Any) -> RevocationChecker:
    return load_revocation(
        settings(pki, mode, crl_files=tuple(full_crls(pki, tmp_path, **kw))), cas(pki)
    )


def chain(pki: ChainPKI, name: str) -> list[x509.Certificate]:
    leaf = pki.leaves[name]
    issuer = {"Test Intermediate": pki.inter, "Test Intermediate 2": pki.inter2}.get(
        leaf.issuer.rfc4514_string().removeprefix("CN=")
    )
    return [leaf, *([issuer.cert] if issuer else []), pki.root.cert]


# ------------------------------------------------------------------ reading files


def test_parse_crls_reads_pem_bundles_and_der(chain_pki: ChainPKI) -> None:
    a, b = chain_pki.crl(chain_pki.root), chain_pki.crl(chain_pki.inter)
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (a, b))
    assert [c.issuer for c in parse_crls(pem)] == [a.issuer, b.issuer]
    assert parse_crls(a.public_bytes(serialization.Encoding.DER))[0] == a
    with pytest.raises(ValueError):
        parse_crls(b"garbage")
    with pytest.raises(ValueError):
        parse_crls(chain_pki.root.cert.public_bytes(serialization.Encoding.PEM))


def test_crl_sources_lists_files_then_directory_without_hidden_files(
    chain_pki: ChainPKI, tmp_path: Path
) -> None:
    crl_dir = tmp_path / "crls"
    crl_dir.mkdir()
    for name in ("b.pem", "a.pem", ".a.pem.tmp"):
        (crl_dir / name).write_bytes(b"x")
    (crl_dir / "sub").mkdir()
    tls = settings(chain_pki, crl_files=(tmp_path / "x.pem",), crl_dir=crl_dir)
    assert crl_sources(tls) == [
        CRLSource("tls.crl_files[0]", tmp_path / "x.pem"),
        CRLSource("tls.crl_dir", crl_dir / "a.pem"),
        CRLSource("tls.crl_dir", crl_dir / "b.pem"),
    ]


# ------------------------------------------------------------------ loading and verifying


def test_good_crls_load_with_their_signers(chain_pki: ChainPKI, tmp_path: Path) -> None:
    loaded = checker(chain_pki, tmp_path)
    assert loaded.problems == ()
    assert [c.issuer for c in loaded.crls] == [
        "CN=Test Root",
        "CN=Test Intermediate",
        "CN=Test Intermediate 2",
    ]
    assert all(c.signer_key is not None for c in loaded.crls)
    assert loaded.issuers_without_crl() == []


def test_der_crl_loads(chain_pki: ChainPKI, tmp_path: Path) -> None:
    path = chain_pki.write_crl(tmp_path / "inter.der", chain_pki.inter, ["alice"], der=True)
    loaded = load_revocation(settings(chain_pki, crl_files=(path,)), cas(chain_pki))
    assert loaded.problems == ()
    assert loaded.crls[0].revoked_serials == {chain_pki.serial("alice")}


def test_crl_signed_by_the_wrong_key_is_refused(chain_pki: ChainPKI, tmp_path: Path) -> None:
    path = chain_pki.write_crl(tmp_path / "forged.pem", chain_pki.inter, wrong_key=True)
    loaded = load_revocation(settings(chain_pki, "strict", crl_files=(path,)), cas(chain_pki))
    assert loaded.crls == ()
    [problem] = loaded.problems
    assert problem.source == CRLSource("tls.crl_files[0]", path)
    assert str(path) in problem.message and "does not verify" in problem.message
    assert not problem.kept
    # Strict mode hands OpenSSL nothing for that issuer: it fails closed.
    assert loaded.pem_for_openssl() == []
    assert chain_pki.inter.cert in loaded.issuers_without_crl()


def test_crl_of_an_issuer_outside_the_bundle_waits_for_the_chain(
    chain_pki: ChainPKI, tmp_path: Path
) -> None:
    path = chain_pki.write_crl(tmp_path / "inter.pem", chain_pki.inter, ["alice-revoked"])
    loaded = load_revocation(settings(chain_pki, crl_files=(path,)), [chain_pki.root.cert])
    assert loaded.problems == ()
    assert loaded.crls[0].signer_key is None
    assert loaded.check_chain(chain(chain_pki, "alice-revoked")).label == "revoked"
    # The same CRL under another key does not speak for the real intermediate.
    forged = chain_pki.write_crl(tmp_path / "f.pem", chain_pki.inter, ["alice"], wrong_key=True)
    loaded = load_revocation(settings(chain_pki, crl_files=(forged,)), [chain_pki.root.cert])
    verdict = loaded.check_chain(chain(chain_pki, "alice"))
    assert verdict.label is None
    assert verdict.problems == (
        "no CRL for issuer CN=Test Intermediate",
        "no CRL for issuer CN=Test Root",
    )


def test_a_broken_rewrite_keeps_the_previous_crl(chain_pki: ChainPKI, tmp_path: Path) -> None:
    path = chain_pki.write_crl(tmp_path / "inter.pem", chain_pki.inter, ["alice-revoked"])
    tls = settings(chain_pki, crl_files=(path,))
    loader = CRLLoader()
    first, problems = loader.load(tls, cas(chain_pki))
    assert problems == ()
    path.write_bytes(b"-----BEGIN X509 CRL-----\nhalf a fi")
    again, problems = loader.load(tls, cas(chain_pki))
    assert again == first
    [problem] = problems
    assert problem.kept and "stays in force" in str(problem)
    assert str(path) in problem.message
    # A forged replacement is a failure too, and keeps the previous CRL.
    chain_pki.write_crl(path, chain_pki.inter, wrong_key=True)
    again, problems = loader.load(tls, cas(chain_pki))
    assert again == first and problems[0].kept
    # A good rewrite takes over.
    chain_pki.write_crl(path, chain_pki.inter)
    fresh, problems = loader.load(tls, cas(chain_pki))
    assert problems == () and fresh[0].revoked_serials == frozenset()


def test_a_file_removed_from_crl_dir_is_forgotten(chain_pki: ChainPKI, tmp_path: Path) -> None:
    crl_dir = tmp_path / "crls"
    path = chain_pki.write_crl(crl_dir / "inter.pem", chain_pki.inter, ["alice-revoked"])
    tls = settings(chain_pki, crl_dir=crl_dir)
    loader = CRLLoader()
    assert len(loader.load(tls, cas(chain_pki))[0]) == 1
    path.unlink()
    assert loader.load(tls, cas(chain_pki)) == ((), ())


def test_missing_crl_dir_is_a_problem(chain_pki: ChainPKI, tmp_path: Path) -> None:
    loaded = load_revocation(settings(chain_pki, crl_dir=tmp_path / "nope"), cas(chain_pki))
    [problem] = loaded.problems
    assert problem.source.key == "tls.crl_dir" and "no such directory" in problem.message


def test_off_loads_nothing(chain_pki: ChainPKI, tmp_path: Path) -> None:
    loaded = checker(chain_pki, tmp_path, "off")
    assert loaded.crls == () and loaded.pem_for_openssl() == []
    assert loaded.check_chain(chain(chain_pki, "alice-revoked")).label is None


def test_only_strict_hands_crls_to_openssl(chain_pki: ChainPKI, tmp_path: Path) -> None:
    strict = checker(chain_pki, tmp_path, "strict")
    assert strict.openssl_crl_check and len(strict.pem_for_openssl()) == 3
    # OpenSSL has judged strict chains already; the after-handshake check passes them.
    assert strict.check_chain(chain(chain_pki, "alice-revoked")).label is None
    lenient = checker(chain_pki, tmp_path, "lenient")
    assert not lenient.openssl_crl_check and lenient.pem_for_openssl() == []


# ------------------------------------------------------------------ the lenient chain check


@pytest.mark.parametrize(
    ("name", "label", "revoked"),
    [
        ("alice", None, None),
        ("alice-root", None, None),
        ("alice-revoked", "revoked", "alice-revoked"),
        ("alice-int2", "revoked", "inter2"),  # a revoked intermediate refuses its subtree
    ],
)
def test_lenient_verdicts(
    chain_pki: ChainPKI, tmp_path: Path, name: str, label: str | None, revoked: str | None
) -> None:
    verdict = checker(chain_pki, tmp_path).check_chain(chain(chain_pki, name))
    assert verdict.label == label
    assert verdict.problems == ()
    if revoked is None:
        assert verdict.revoked is None
    else:
        assert verdict.revoked is not None
        assert verdict.revoked.serial_number == chain_pki.serial(revoked)


def test_lenient_tolerates_a_missing_crl_and_says_so(chain_pki: ChainPKI, tmp_path: Path) -> None:
    root = chain_pki.write_crl(tmp_path / "root.pem", chain_pki.root)
    loaded = load_revocation(settings(chain_pki, crl_files=(root,)), cas(chain_pki))
    verdict = loaded.check_chain(chain(chain_pki, "alice-revoked"))
    assert verdict.label is None
    assert verdict.problems == ("no CRL for issuer CN=Test Intermediate",)
    assert loaded.first_report(verdict.problems[0])
    assert not loaded.first_report(verdict.problems[0])


def test_lenient_still_refuses_what_a_stale_crl_lists(chain_pki: ChainPKI, tmp_path: Path) -> None:
    loaded = checker(chain_pki, tmp_path, stale=True)
    verdict = loaded.check_chain(chain(chain_pki, "alice-revoked"))
    assert verdict.label == "revoked"
    [problem] = verdict.problems
    assert "CN=Test Intermediate" in problem and "outside its validity" in problem
    good = loaded.check_chain(chain(chain_pki, "alice"))
    assert good.label is None and good.problems == verdict.problems


def test_the_newest_crl_of_an_issuer_decides(chain_pki: ChainPKI, tmp_path: Path) -> None:
    old = chain_pki.write_crl(tmp_path / "old.pem", chain_pki.inter, ["alice-revoked"])
    crl = chain_pki.crl(chain_pki.inter)
    newer = x509.CertificateRevocationListBuilder(
        issuer_name=crl.issuer,
        last_update=crl.last_update_utc + dt.timedelta(minutes=2),
        next_update=crl.next_update_utc,
    ).sign(chain_pki.inter.key, crl.signature_hash_algorithm)  # type: ignore[arg-type]
    new = tmp_path / "new.pem"
    new.write_bytes(newer.public_bytes(serialization.Encoding.PEM))
    loaded = load_revocation(settings(chain_pki, crl_files=(old, new)), cas(chain_pki))
    assert loaded.check_chain(chain(chain_pki, "alice-revoked")).label is None


def test_chain_for_rebuilds_the_chain_from_the_bundle(chain_pki: ChainPKI, tmp_path: Path) -> None:
    loaded = checker(chain_pki, tmp_path)
    assert loaded.chain_for(chain_pki.leaves["alice-int2"]) == chain(chain_pki, "alice-int2")
    assert loaded.chain_for(chain_pki.leaves["alice-root"]) == chain(chain_pki, "alice-root")
    # Without the intermediate in the bundle the chain stops at the leaf,
    # whose issuer then has no verifiable CRL.
    alone = load_revocation(settings(chain_pki), [chain_pki.root.cert])
    lone = alone.chain_for(chain_pki.leaves["alice"])
    assert lone == [chain_pki.leaves["alice"]]
    assert alone.check_chain(lone).problems == ("no CRL for issuer CN=Test Intermediate",)


def test_next_updates_gives_each_issuers_latest(chain_pki: ChainPKI, tmp_path: Path) -> None:
    loaded = checker(chain_pki, tmp_path)
    latest = loaded.next_updates()
    assert set(latest) == {"CN=Test Root", "CN=Test Intermediate", "CN=Test Intermediate 2"}
    assert latest["CN=Test Root"] == loaded.crls[0].next_update


# ------------------------------------------------------------------ the captured certificate


def _cert_entry(der: bytes, tls13: bool) -> bytes:
    entry = len(der).to_bytes(3, "big") + der
    return entry + (b"\x00\x00" if tls13 else b"")


@pytest.mark.parametrize("tls13", [True, False])
def test_first_certificate_of_a_certificate_message(
    chain_pki: ChainPKI, tmp_path: Path, tls13: bool
) -> None:
    leaf = chain_pki.leaves["alice"].public_bytes(serialization.Encoding.DER)
    inter = chain_pki.inter.cert.public_bytes(serialization.Encoding.DER)
    entries = _cert_entry(leaf, tls13) + _cert_entry(inter, tls13)
    body = (b"\x00" if tls13 else b"") + len(entries).to_bytes(3, "big") + entries
    message = b"\x0b" + len(body).to_bytes(3, "big") + body
    version = 0x0304 if tls13 else 0x0303
    assert first_certificate(message, version) == leaf
    empty = (b"\x00" if tls13 else b"") + b"\x00\x00\x00"
    assert first_certificate(b"\x0b" + len(empty).to_bytes(3, "big") + empty, version) is None
    assert first_certificate(message[:20], version) is None
    assert first_certificate(b"", version) is None
