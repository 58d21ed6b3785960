"""Revocation with real clients: a real proxy in front of a real PostgreSQL, libpq via psycopg.

Every refusal is checked three ways: the text libpq prints (the TLS alert, or
the FATAL message in lenient mode), the handshake ``result`` counted, and
that the next good client still gets in.
"""

from __future__ import annotations

import io
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from cryptography import x509

from pgtls_proxy.ca import authority
from tests.fixtures.chain_pki import ChainPKI
from tests.fixtures.clients import SSL_REQUEST, current_user
from tests.fixtures.logs import captured_log
from tests.fixtures.pki import PKIFiles
from tests.fixtures.proxy import ProxyFactory, RunningProxy, base_config, deep_merge

# docs/reference.md's promise for files changed on disk.
FILE_CHANGE_DELAY = 5.0


def params(pki: ChainPKI, port: int, cert: str = "alice", **extra: Any) -> dict[str, Any]:
    crt, key = pki.leaf(cert)
    out: dict[str, Any] = {
        "host": "localhost",
        "hostaddr": "127.0.0.1",
        "port": port,
        "user": "alice",
        "dbname": "postgres",
        "sslmode": "verify-full",
        "sslrootcert": str(pki.root_file),
        "sslcert": str(crt),
        "sslkey": str(key),
        "connect_timeout": 10,
        "gssencmode": "disable",
    }
    out.update(extra)
    return out


def connects(pki: ChainPKI, port: int, cert: str = "alice", **extra: Any) -> bool:
    with psycopg.connect(**params(pki, port, cert, **extra), autocommit=True) as conn:
        return conn.execute("select current_user").fetchone() == ("alice",)


def refusal(pki: ChainPKI, port: int, cert: str, **extra: Any) -> str:
    """What libpq says when the proxy refuses ``cert``."""
    with pytest.raises(psycopg.OperationalError) as info:
        connects(pki, port, cert, **extra)
    return str(info.value)


def eventually(check: Callable[[], bool], timeout: float = FILE_CHANGE_DELAY) -> float:
    """Seconds until ``check()`` held; fails after ``timeout``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < timeout, f"not within {timeout}s"
        time.sleep(0.1)
    return time.monotonic() - started


def refused(pki: ChainPKI, port: int, cert: str) -> bool:
    try:
        connects(pki, port, cert)
    except psycopg.OperationalError:
        return True
    return False


@pytest.fixture
def crls(chain_pki: ChainPKI, tmp_path: Path) -> Path:
    """A CRL directory: the root revokes Intermediate 2, the intermediate revokes alice-revoked."""
    crl_dir = tmp_path / "crl.d"
    chain_pki.write_crl(crl_dir / "root.pem", chain_pki.root, ["inter2"])
    chain_pki.write_crl(crl_dir / "inter.pem", chain_pki.inter, ["alice-revoked"])
    chain_pki.write_crl(crl_dir / "inter2.pem", chain_pki.inter2)
    return crl_dir


@pytest.fixture
def start(
    proxy_factory: ProxyFactory, chain_pki: ChainPKI, crls: Path
) -> Callable[..., RunningProxy]:
    """A proxy on the chain PKI; ``mode`` and ``tls`` adjust its TLS settings."""

    def make(mode: str = "strict", **tls: Any) -> RunningProxy:
        cert, key = chain_pki.server
        settings: dict[str, Any] = {
            "cert_file": str(cert),
            "key_file": str(key),
            "client_ca_file": str(chain_pki.bundle),
            "crl_files": [],
            "crl_dir": str(crls),
            "revocation": mode,
        }
        settings.update({k: str(v) if isinstance(v, Path) else v for k, v in tls.items()})
        return proxy_factory({"tls": settings})

    return make


@pytest.fixture
def log() -> Iterator[io.StringIO]:
    with captured_log() as stream:
        yield stream


def handshakes(proxy: RunningProxy, result: str, expected: float = 1) -> float:
    return proxy.wait_sample("pgtls_handshakes_total", {"result": result}, expected)


# ------------------------------------------------------------------ strict


@pytest.mark.parametrize("mode", ["strict", "lenient"])
@pytest.mark.parametrize("cert", ["alice-revoked", "alice-int2"])
def test_revoked_leaf_and_revoked_intermediate_are_refused(
    start: Callable[..., RunningProxy], chain_pki: ChainPKI, mode: str, cert: str
) -> None:
    """Strict refuses inside the handshake (the TLS alert), lenient just after it
    (a FATAL message); libpq names the reason either way."""
    proxy = start(mode)
    assert "certificate revoked" in refusal(chain_pki, proxy.port, cert)
    assert handshakes(proxy, "revoked") == 1
    assert proxy.wait_sample("pgtls_sessions_total", {"outcome": "client_error"}, 1) == 1
    assert connects(chain_pki, proxy.port, "alice")
    assert connects(chain_pki, proxy.port, "alice-root")


@pytest.mark.parametrize(
    ("case", "libpq_text", "still_good"),
    [
        ("stale", "certificate expired", "alice-root"),  # OpenSSL's alert for a stale CRL
        ("missing", "unknown ca", "alice-root"),  # ... and for no CRL at all
        ("wrong_key", "unknown ca", "alice-root"),  # an unverifiable CRL counts as missing
        # The intermediate itself is checked against the root's CRL: without
        # it nothing under the root gets in.
        ("root_missing", "unknown ca", None),
    ],
)
def test_strict_fails_closed_without_a_current_verified_crl(
    start: Callable[..., RunningProxy],
    chain_pki: ChainPKI,
    crls: Path,
    case: str,
    libpq_text: str,
    still_good: str | None,
) -> None:
    inter = crls / "inter.pem"
    if case == "missing":
        inter.unlink()
    elif case == "root_missing":
        (crls / "root.pem").unlink()
    else:
        chain_pki.write_crl(inter, chain_pki.inter, **{case: True})
    proxy = start("strict")
    assert libpq_text in refusal(chain_pki, proxy.port, "alice")
    assert handshakes(proxy, "crl_unavailable") == 1
    assert proxy.sample("pgtls_crl_load_errors_total") == (1 if case == "wrong_key" else 0)
    if still_good is not None:
        assert connects(chain_pki, proxy.port, still_good)


@pytest.mark.parametrize(("mode", "refused_as"), [("strict", "revoked"), ("lenient", None)])
def test_a_root_that_lists_itself(
    start: Callable[..., RunningProxy],
    chain_pki: ChainPKI,
    crls: Path,
    mode: str,
    refused_as: str | None,
) -> None:
    """Measured: OpenSSL's chain check also looks the root up in its own CRL, as
    PostgreSQL does; lenient checks below the anchor only. ``check`` warns."""
    crl = chain_pki.crl(chain_pki.root)
    listed = authority.build_crl(
        issuer_cert=chain_pki.root.cert,
        issuer_key=chain_pki.root.key,
        revoked=[(chain_pki.root.cert.serial_number, crl.last_update_utc)],
    )
    authority.write_pem(crls / "root.pem", listed)
    proxy = start(mode)
    if refused_as is None:
        assert connects(chain_pki, proxy.port, "alice-root")
    else:
        assert "certificate revoked" in refusal(chain_pki, proxy.port, "alice-root")
        assert handshakes(proxy, refused_as) == 1


def test_refused_handshakes_are_logged_with_the_certificate(
    start: Callable[..., RunningProxy], chain_pki: ChainPKI, log: io.StringIO
) -> None:
    proxy = start("strict")
    refusal(chain_pki, proxy.port, "alice-revoked")  # TLS 1.3: the certificate is encrypted
    crt, key = chain_pki.leaf("alice-revoked")
    ctx = ssl.create_default_context(cafile=str(chain_pki.root_file))
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(crt, key)
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as raw:
        raw.sendall(SSL_REQUEST)
        assert raw.recv(1) == b"S"
        with pytest.raises(ssl.SSLError, match="CERTIFICATE_REVOKED"):
            ctx.wrap_socket(raw, server_hostname="localhost").recv(1)
    handshakes(proxy, "revoked", 2)
    serial = format(chain_pki.serial("alice-revoked"), "x")

    def refused_lines() -> list[str]:
        return [line for line in log.getvalue().splitlines() if "handshake refused" in line]

    # The proxy counts a refusal just before it logs it: poll, do not race it.
    eventually(lambda: len(refused_lines()) >= 2)
    lines = refused_lines()
    assert len(lines) == 2, lines
    for line in lines:
        assert re.search(r"client=127\.0\.0\.1:\d+", line), line
        assert f"subject='CN=alice' serial={serial}" in line
        assert "revoked (certificate revoked)" in line


def test_a_client_without_certificate_is_logged_as_such(
    start: Callable[..., RunningProxy], chain_pki: ChainPKI, log: io.StringIO
) -> None:
    proxy = start("strict")
    text = refusal(chain_pki, proxy.port, "alice", sslcert="/nonexistent", sslkey="/nonexistent")
    assert "certificate required" in text
    handshakes(proxy, "no_certificate")
    [line] = [line for line in log.getvalue().splitlines() if "handshake refused" in line]
    assert "no_certificate" in line and "no client certificate seen" in line


# ------------------------------------------------------------------ lenient and off


def test_lenient_lets_clients_in_without_a_crl_and_counts_it(
    start: Callable[..., RunningProxy], chain_pki: ChainPKI, crls: Path, log: io.StringIO
) -> None:
    (crls / "inter.pem").unlink()
    proxy = start("lenient")
    assert connects(chain_pki, proxy.port, "alice")
    assert connects(chain_pki, proxy.port, "alice-revoked")  # no loaded CRL lists it
    assert proxy.sample("pgtls_crl_problems_total") == 2
    warnings = [line for line in log.getvalue().splitlines() if "despite" in line]
    assert len(warnings) == 1 and "no CRL for issuer CN=Test Intermediate" in warnings[0]


def test_lenient_refuses_what_a_stale_crl_lists(
    start: Callable[..., RunningProxy], chain_pki: ChainPKI, crls: Path
) -> None:
    chain_pki.write_crl(crls / "inter.pem", chain_pki.inter, ["alice-revoked"], stale=True)
    proxy = start("lenient")
    assert "certificate revoked" in refusal(chain_pki, proxy.port, "alice-revoked")
    assert connects(chain_pki, proxy.port, "alice")
    assert proxy.sample("pgtls_crl_problems_total") == 2


def test_lenient_checks_the_chain_the_client_sent(
    start: Callable[..., RunningProxy], chain_pki: ChainPKI
) -> None:
    # The CA file holds the root only: the intermediate comes from the client.
    proxy = start("lenient", client_ca_file=chain_pki.root_file)
    chained = chain_pki.chain_file("alice-revoked")
    text = refusal(chain_pki, proxy.port, "alice-revoked", sslcert=str(chained))
    assert "certificate revoked" in text
    assert connects(chain_pki, proxy.port, "alice", sslcert=str(chain_pki.chain_file("alice")))


def test_off_checks_nothing(start: Callable[..., RunningProxy], chain_pki: ChainPKI) -> None:
    proxy = start("off")
    assert connects(chain_pki, proxy.port, "alice-revoked")
    assert connects(chain_pki, proxy.port, "alice-int2")
    assert handshakes(proxy, "ok", 2) == 2


# ------------------------------------------------------------------ files changed on disk


def test_crl_hot_swap(start: Callable[..., RunningProxy], chain_pki: ChainPKI, crls: Path) -> None:
    proxy = start("strict")
    with psycopg.connect(**params(chain_pki, proxy.port, "alice-spare"), autocommit=True) as old:
        chain_pki.write_crl(crls / "inter.pem", chain_pki.inter, ["alice-revoked", "alice-spare"])
        took = eventually(lambda: refused(chain_pki, proxy.port, "alice-spare"))
        assert took < FILE_CHANGE_DELAY
        assert "certificate revoked" in refusal(chain_pki, proxy.port, "alice-spare")
        # The session opened before the revocation is not touched.
        assert old.execute("select 42").fetchone() == (42,)
        # A half-written CRL keeps the previous one in force.
        (crls / "inter.pem").write_bytes(b"-----BEGIN X509 CRL-----\nMIIB")
        eventually(lambda: proxy.sample("pgtls_crl_load_errors_total") == 1)
        assert "certificate revoked" in refusal(chain_pki, proxy.port, "alice-spare")
        assert connects(chain_pki, proxy.port, "alice")
        assert old.execute("select 43").fetchone() == (43,)
    assert proxy.sample("pgtls_tls_file_reloads_total", {"result": "ok"}) == 2


def test_a_crl_added_to_crl_dir_is_picked_up(
    start: Callable[..., RunningProxy], chain_pki: ChainPKI, crls: Path
) -> None:
    (crls / "inter.pem").unlink()
    proxy = start("strict")
    assert "unknown ca" in refusal(chain_pki, proxy.port, "alice")
    chain_pki.write_crl(crls / "inter.pem", chain_pki.inter, der=True)
    eventually(lambda: not refused(chain_pki, proxy.port, "alice"))
    # And removing it again takes it away.
    (crls / "inter.pem").unlink()
    eventually(lambda: refused(chain_pki, proxy.port, "alice"))


def served_serial(port: int, cafile: Path) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        raw.sendall(SSL_REQUEST)
        assert raw.recv(1) == b"S"
        ctx = ssl.create_default_context(cafile=str(cafile))
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def test_renewed_server_certificate_is_picked_up_and_a_broken_key_is_not(
    start: Callable[..., RunningProxy], chain_pki: ChainPKI, tmp_path: Path
) -> None:
    cert_path, key_path = tmp_path / "server.crt", tmp_path / "server.key"
    shutil.copy(chain_pki.server[0], cert_path)
    shutil.copy(chain_pki.server[1], key_path)
    proxy = start("strict", cert_file=cert_path, key_file=key_path)
    old_serial = served_serial(proxy.port, chain_pki.root_file)
    with psycopg.connect(**params(chain_pki, proxy.port), autocommit=True) as before:
        key = authority.generate_key()
        renewed = authority.build_certificate(
            subject_cn="localhost",
            public_key=key.public_key(),
            issuer_cert=chain_pki.root.cert,
            issuer_key=chain_pki.root.key,
            is_ca=False,
            usage="server",
            sans=x509.load_pem_x509_certificate(cert_path.read_bytes())
            .extensions.get_extension_for_class(x509.SubjectAlternativeName)
            .value,
        )
        authority.write_private_key(key_path, key)
        authority.write_pem(cert_path, renewed)
        eventually(lambda: served_serial(proxy.port, chain_pki.root_file) != old_serial)
        assert served_serial(proxy.port, chain_pki.root_file) == renewed.serial_number
        assert before.execute("select 1").fetchone() == (1,)
        # A key that does not load keeps the running certificate.
        key_path.write_bytes(b"not a key")
        eventually(lambda: proxy.sample("pgtls_tls_file_reloads_total", {"result": "failed"}) == 1)
        assert served_serial(proxy.port, chain_pki.root_file) == renewed.serial_number
        assert connects(chain_pki, proxy.port)


# ------------------------------------------------------------------ encrypted server keys

PASSPHRASE = "correct horse battery staple"


def encrypted_key_config(pki: PKIFiles, tmp_path: Path, port: int, passphrase: str) -> Path:
    key = authority.load_private_key(pki.server_key)
    authority.write_private_key(tmp_path / "enc.key", key, PASSPHRASE.encode())
    (tmp_path / "pass").write_text(passphrase + "\n")
    (tmp_path / "pass").chmod(0o600)
    data = deep_merge(
        base_config(pki, port),
        {
            "tls": {
                "key_file": str(tmp_path / "enc.key"),
                "key_passphrase_file": str(tmp_path / "pass"),
            }
        },
    )
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_encrypted_key_serves_and_never_logs_its_passphrase(
    proxy_factory: ProxyFactory, pki: PKIFiles, tmp_path: Path, log: io.StringIO
) -> None:
    config = yaml.safe_load(encrypted_key_config(pki, tmp_path, 5432, PASSPHRASE).read_text())
    proxy = proxy_factory({"tls": config["tls"]})
    assert current_user(pki, proxy.port, "alice") == "alice"
    assert proxy.reload()
    (tmp_path / "pass").write_text("hunter2-not-it\n")
    assert not proxy.reload()
    assert str(tmp_path / "pass") in log.getvalue()
    assert PASSPHRASE not in log.getvalue() and "hunter2" not in log.getvalue()
    assert current_user(pki, proxy.port, "alice") == "alice"


@pytest.mark.parametrize("passphrase", ["wrong", ""])
def test_wrong_passphrase_stops_run_with_one_line(
    pki: PKIFiles, tmp_path: Path, passphrase: str
) -> None:
    path = encrypted_key_config(pki, tmp_path, 5432, passphrase)
    out = subprocess.run(
        [sys.executable, "-m", "pgtls_proxy", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    [line] = out.stderr.strip().splitlines()
    assert "tls.key_passphrase_file" in line and str(tmp_path / "pass") in line
    assert PASSPHRASE not in out.stderr + out.stdout
