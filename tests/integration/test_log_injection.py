"""Strangers' bytes in the daemon's stderr: one connection, exactly the lines the proxy means.

A user name in a plaintext StartupMessage (no certificate needed), a
certificate's CN and its SAN reach the log. The daemon runs as a subprocess,
alone and with workers (whose stderr the supervisor relays), in both
formats; its stderr is read line by line: every text line is a record or a
traceback continuation, every JSON line is an object, and the forged record
never stands on a line of its own. A CN over 64 characters makes
``cryptography`` warn, which must arrive as a record too.
"""

from __future__ import annotations

import json
import re
import ssl
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pgtls_proxy.ca import authority
from pgtls_proxy.logsetup import CONTINUATION, TEXT_RECORD, escape
from tests.fixtures.clients import (
    SSL_REQUEST,
    conninfo,
    current_user,
    raw_socket,
    recv_all,
    startup_packet,
)
from tests.fixtures.pki import PKIFiles

pytestmark = pytest.mark.integration

FORGED = "2026-01-01T00:00:00.000+00:00 INFO audit event=session outcome=completed user=admin"
# NUL cannot be in a startup packet's string; everything else can.
HOSTILE_USER = f"mallory\n{FORGED}\r\x1b[2J\x1b[31m\t\x7f\x85\u2028\u2029end"
# No space: a value without one was written unquoted.
HOSTILE_DATABASE = "db\r\n" + FORGED.replace(" ", "\t")
FORGED_START = FORGED[:11]  # the forged record's date, which no real record has
# Over 64 characters: cryptography warns when the proxy parses it.
HOSTILE_CN = f"cn\n{FORGED}\x1b]0;title\x07\u2028" + "c" * 64
# A URI SAN is IA5 (ASCII), NUL included.
HOSTILE_SAN = f"spiffe://example.org/ns/x\n{FORGED}\x00\r\x1b[2J"
GOOD_SPIFFE_RULE = {"identity": "/spiffe://example\\.org/ns/prod/sa/(\\w+)/", "user": "\\1"}


def issue_raw(
    directory: Path,
    name: str,
    pki: PKIFiles,
    *,
    cn: str,
    sans: list[x509.GeneralName],
) -> tuple[Path, Path]:
    """A CA-signed client certificate with a CN nothing checks (no 64-character limit)."""
    ca_cert = authority.load_certificates(pki.ca)[0]
    ca_key = authority.load_private_key(pki.ca_key)
    key = authority.generate_key()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn, _validate=False)])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, authority._hash_for(ca_key))
    crt, keyfile = directory / f"{name}.crt", directory / f"{name}.key"
    authority.write_pem(crt, cert)
    authority.write_private_key(keyfile, key)
    return crt, keyfile


def plaintext_startup(port: int, user: str, database: str) -> bytes:
    with raw_socket(port) as sock:
        sock.sendall(startup_packet(user, database))
        return recv_all(sock)


def tls_startup(port: int, user: str, database: str, pki: PKIFiles) -> bytes:
    """SSLRequest, TLS with a good certificate, then a hostile StartupMessage."""
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    ctx.load_cert_chain(*pki.client("spiffe"))
    with raw_socket(port) as sock:
        sock.sendall(SSL_REQUEST)
        assert sock.recv(1) == b"S"
        with ctx.wrap_socket(sock, server_hostname="localhost") as tls:
            tls.sendall(startup_packet(user, database))
            return recv_all(tls)


def refused(pki: PKIFiles, port: int, crt: Path, key: Path) -> None:
    params = conninfo(pki, port, "spiffe", user="app_user", dbname="app")
    params.update(sslcert=str(crt), sslkey=str(key), connect_timeout=5)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(**params).close()


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_hostile_names_cannot_forge_log_lines(
    daemon_factory: Any, pki: PKIFiles, tmp_path: Path, fmt: str, workers: int
) -> None:
    cn_crt, cn_key = issue_raw(tmp_path, "hostile-cn", pki, cn=HOSTILE_CN, sans=[])
    san_crt, san_key = issue_raw(
        tmp_path,
        "hostile-san",
        pki,
        cn="hostile-san",
        sans=[x509.UniformResourceIdentifier(HOSTILE_SAN)],
    )
    d = daemon_factory(
        {
            "workers": workers,
            "logging": {"format": fmt, "level": "debug"},
            "identity": {"field": "san_uri"},
            "rules": [GOOD_SPIFFE_RULE],
        }
    )
    if workers > 1:
        d.wait_log(f"all {workers} workers ready")

    assert b"TLS is required" in plaintext_startup(d.port, HOSTILE_USER, HOSTILE_DATABASE)
    assert b"is not allowed to connect" in tls_startup(d.port, HOSTILE_USER, "app", pki)
    refused(pki, d.port, cn_crt, cn_key)
    refused(pki, d.port, san_crt, san_key)
    # And a good client is still served.
    assert current_user(pki, d.port, "spiffe", user="app_user", dbname="app") == "app_user"
    d.wait_log("Attribute's length")
    d.wait_log("outcome.{1,4}completed")
    d.stop()
    d._reader.join(10)

    lines = list(d.log)
    assert lines and all(line.endswith("\n") for line in lines)
    bodies = [line[:-1] for line in lines]
    for body in bodies:
        # The reader splits on CR as well as LF (universal newlines).
        assert body.isprintable(), repr(body)
        assert not body.startswith(FORGED_START), repr(body)
    if fmt == "text":
        check_text(bodies)
    else:
        check_json(bodies)


def check_text(bodies: list[str]) -> None:
    for body in bodies:
        assert TEXT_RECORD.match(body) or body.startswith(CONTINUATION), repr(body)
    text = "\n".join(bodies)
    # Each hostile value is in the log, escaped (the test saw what it tests).
    for value in (HOSTILE_USER, HOSTILE_DATABASE, HOSTILE_SAN):
        assert escape(value) in text, value
    # The subject is RFC 4514 text, which escapes "+" and ";" of its own.
    assert escape("CN=cn\n2026-01-01T00:00:00.000") in text
    audits = [b for b in bodies if re.match(r"\S+ INFO \[\w+\] audit event=session ", b)]
    assert len(audits) == 5, audits
    warning = [b for b in bodies if "Attribute's length" in b]
    assert len(warning) == 1 and " WARNING " in warning[0]


def check_json(bodies: list[str]) -> None:
    records = [json.loads(body) for body in bodies]
    assert all(isinstance(r, dict) for r in records)
    audits = [r for r in records if r.get("event") == "session"]
    assert len(audits) == 5, audits
    # JSON keeps the values exactly, so the audit trail loses nothing.
    assert {a.get("requested_user") for a in audits} >= {HOSTILE_USER}
    assert HOSTILE_DATABASE in {a.get("database") for a in audits}
    assert HOSTILE_SAN in {a.get("identity") for a in audits}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attribute = x509.NameAttribute(NameOID.COMMON_NAME, HOSTILE_CN, _validate=False)
    assert x509.Name([attribute]).rfc4514_string() in {a.get("subject") for a in audits}
    assert [a["outcome"] for a in audits].count("completed") == 1
    warning = [r for r in records if "Attribute's length" in r["msg"]]
    assert len(warning) == 1 and warning[0]["level"] == "warning"
