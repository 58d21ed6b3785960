"""CRL rollback with real clients: an older CRL copied back does not un-revoke anyone.

The attack: someone who can write the CRL file copies back an older CRL,
validly signed by the same CA, from before a revocation. The proxy keeps the
newer CRL, logs the file and both cRLNumbers once, and counts a CRL load
error; the revoked client stays out and good clients are still served. A
newer CRL that lifts the revocation is an operator's decision and applies.
"""

from __future__ import annotations

import datetime as dt
import io
import re
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography import x509

from pgtls_proxy.ca import authority
from tests.fixtures.chain_pki import ChainPKI
from tests.fixtures.clients import connect
from tests.fixtures.logs import captured_log
from tests.fixtures.pki import PKIFiles
from tests.fixtures.proxy import ProxyFactory, RunningProxy
from tests.integration.test_revocation import connects, eventually, refusal, refused

# Two polls of the file watcher and then some: long enough for a change on
# disk to have been applied if it were going to be.
SETTLE = 3.0
OLDER = re.compile(r"is older than the CRL in force")


@pytest.fixture
def log() -> Iterator[io.StringIO]:
    with captured_log() as stream:
        yield stream


@pytest.fixture
def crl_dir(chain_pki: ChainPKI, tmp_path: Path) -> Path:
    crl_dir = tmp_path / "crl.d"
    chain_pki.write_crl(crl_dir / "root.pem", chain_pki.root)
    chain_pki.write_crl(crl_dir / "inter.pem", chain_pki.inter)
    chain_pki.write_crl(crl_dir / "inter2.pem", chain_pki.inter2)
    return crl_dir


def start(factory: ProxyFactory, pki: ChainPKI, crl_dir: Path, mode: str) -> RunningProxy:
    cert, key = pki.server
    return factory(
        {
            "tls": {
                "cert_file": str(cert),
                "key_file": str(key),
                "client_ca_file": str(pki.bundle),
                "crl_files": [],
                "crl_dir": str(crl_dir),
                "revocation": mode,
            }
        }
    )


def stays_refused(pki: ChainPKI, port: int, cert: str) -> None:
    """Refused now and still after the watcher had every chance to apply a change."""
    deadline = time.monotonic() + SETTLE
    while time.monotonic() < deadline:
        assert "certificate revoked" in refusal(pki, port, cert)
        time.sleep(0.5)


def crl_number(path: Path) -> int:
    crl = x509.load_pem_x509_crl(path.read_bytes())
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


@pytest.mark.parametrize("mode", ["strict", "lenient"])
def test_an_older_crl_copied_back_keeps_the_revocation(
    proxy_factory: ProxyFactory,
    chain_pki: ChainPKI,
    crl_dir: Path,
    log: io.StringIO,
    mode: str,
) -> None:
    inter = crl_dir / "inter.pem"
    before_revocation = inter.read_bytes()
    old_number = crl_number(inter)
    proxy = start(proxy_factory, chain_pki, crl_dir, mode)
    assert connects(chain_pki, proxy.port, "alice-spare")

    chain_pki.write_crl(inter, chain_pki.inter, ["alice-spare"])
    new_number = crl_number(inter)
    eventually(lambda: refused(chain_pki, proxy.port, "alice-spare"))

    inter.write_bytes(before_revocation)  # the rollback
    eventually(lambda: proxy.sample("pgtls_crl_load_errors_total") == 1)
    stays_refused(chain_pki, proxy.port, "alice-spare")
    assert connects(chain_pki, proxy.port, "alice")
    [line] = [line for line in log.getvalue().splitlines() if OLDER.search(line)]
    assert str(inter) in line and "CN=Test Intermediate" in line
    assert f"cRLNumber {old_number}," in line and f"cRLNumber {new_number}," in line
    # Any later rebuild (here: another CRL file changes) says it no more.
    chain_pki.write_crl(crl_dir / "inter2.pem", chain_pki.inter2)
    eventually(lambda: proxy.sample("pgtls_tls_file_reloads_total", {"result": "ok"}) >= 3)
    assert len([line for line in log.getvalue().splitlines() if OLDER.search(line)]) == 1
    assert proxy.sample("pgtls_crl_load_errors_total") == 1
    stays_refused(chain_pki, proxy.port, "alice-spare")

    # A newer CRL without the entry is the CA lifting the revocation: it applies.
    chain_pki.write_crl(inter, chain_pki.inter)
    eventually(lambda: not refused(chain_pki, proxy.port, "alice-spare"))
    assert proxy.sample("pgtls_crl_load_errors_total") == 1


def test_a_crl_file_removed_and_put_back_older(
    proxy_factory: ProxyFactory, chain_pki: ChainPKI, crl_dir: Path, log: io.StringIO
) -> None:
    """Strict: removing the file refuses the CA's clients; the old file cannot come back."""
    inter = crl_dir / "inter.pem"
    before_revocation = inter.read_bytes()
    proxy = start(proxy_factory, chain_pki, crl_dir, "strict")
    chain_pki.write_crl(inter, chain_pki.inter, ["alice-spare"])
    eventually(lambda: refused(chain_pki, proxy.port, "alice-spare"))
    inter.unlink()
    eventually(lambda: refused(chain_pki, proxy.port, "alice"))
    assert "unknown ca" in refusal(chain_pki, proxy.port, "alice")  # no CRL: fail closed
    (crl_dir / "restored.pem").write_bytes(before_revocation)
    eventually(lambda: proxy.sample("pgtls_crl_load_errors_total") == 1)
    stays_refused(chain_pki, proxy.port, "alice-spare")
    assert connects(chain_pki, proxy.port, "alice")  # the newer CRL is back in force
    assert any(str(crl_dir / "restored.pem") in line for line in log.getvalue().splitlines())


# ------------------------------------------------------------------ SIGHUP


def write_crl(pki: PKIFiles, path: Path, number: int, revoked: list[str]) -> Path:
    ca_cert = authority.load_certificates(pki.ca)[0]
    serials = [
        authority.load_certificates(pki.client(name)[0])[0].serial_number for name in revoked
    ]
    now = dt.datetime.now(dt.UTC)
    crl = authority.build_crl(
        issuer_cert=ca_cert,
        issuer_key=authority.load_private_key(pki.ca_key),
        revoked=[(serial, now) for serial in serials],
        crl_number=number,
    )
    authority.write_pem(path, crl)
    return path


def bob_refused(pki: PKIFiles, port: int) -> bool:
    try:
        with connect(pki, port, "bob", dbname="app"):
            return False
    except psycopg.OperationalError as exc:
        assert "certificate revoked" in str(exc)
        return True


def test_sighup_with_an_older_crl_keeps_the_revocation(
    daemon_factory: Callable[..., Any], pki: PKIFiles, tmp_path: Path
) -> None:
    """A reload whose config names a file with an older CRL (no file watch involved)."""
    current = write_crl(pki, tmp_path / "current.pem", 2, ["bob"])
    older = write_crl(pki, tmp_path / "older.pem", 1, [])
    d = daemon_factory({"tls": {"crl_files": [str(current)]}})
    assert bob_refused(pki, d.port)
    start = len(d.log)
    d.write({**d.data, "tls": {**d.data["tls"], "crl_files": [str(older)]}})
    d.signal(signal.SIGHUP)
    d.wait_log("configuration reloaded", start=start)
    line = d.wait_log(r"CRL tls\.crl_files\[0\]: .* is older than", start=start).string
    assert str(older) in line and "cRLNumber 1," in line and "cRLNumber 2," in line
    assert d.metric("pgtls_crl_load_errors_total") == 1
    assert bob_refused(pki, d.port)
    with connect(pki, d.port, "alice") as conn:
        assert conn.execute("select 1").fetchone() == (1,)

    # The older CRL copied over the file in use, then SIGHUP (the file
    # watcher may see it first: either way it is reported once).
    newer = write_crl(pki, tmp_path / "newer.pem", 3, ["bob"])
    start = len(d.log)
    d.write({**d.data, "tls": {**d.data["tls"], "crl_files": [str(newer)]}})
    d.signal(signal.SIGHUP)
    d.wait_log("configuration reloaded", start=start)
    newer.write_bytes(older.read_bytes())
    d.signal(signal.SIGHUP)
    d.wait_metric("pgtls_crl_load_errors_total", 2)
    assert bob_refused(pki, d.port)

    # A newer CRL that lifts the revocation applies on SIGHUP.
    write_crl(pki, newer, 4, [])
    d.signal(signal.SIGHUP)
    eventually(lambda: not bob_refused(pki, d.port))
    assert d.metric("pgtls_crl_load_errors_total") == 2
