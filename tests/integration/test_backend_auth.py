"""The backend side: TLS to the server and logging in on the client's behalf.

A second cluster with ``ssl=on`` and one ``hostssl`` line per method. The
client brings only its certificate; the proxy answers the password challenge
(or presents its own client certificate) for it.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgtls_proxy.logsetup import setup_logging
from tests.fixtures.clients import (
    SSL_REQUEST,
    client_tls_context,
    connect,
    current_user,
    parse_error,
    raw_socket,
    recv_all,
    startup_packet,
)
from tests.fixtures.cluster import requires_pg
from tests.fixtures.pki import PKIFiles, issue_custom
from tests.fixtures.proxy import ProxyFactory

SECRET = "Backend-Secret-0x5e"
HBA = [
    "local all all trust",
    "hostssl all scram_user 127.0.0.1/32 scram-sha-256",
    "hostssl all md5_user 127.0.0.1/32 md5",
    "hostssl all pw_user 127.0.0.1/32 password",
    "hostssl all cert_user 127.0.0.1/32 cert",
    "host all plain_scram 127.0.0.1/32 scram-sha-256",
]
USERS = ("scram_user", "md5_user", "pw_user", "cert_user", "plain_scram")


@pytest.fixture(scope="module")
def tls_cluster(pki: PKIFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from pgtls_proxy.demo.cluster import PgCluster
    from tests.fixtures.cluster import require_pg_bin_dir

    cluster = PgCluster(bin_dir=require_pg_bin_dir())
    try:
        cluster.init(hba_lines=HBA)
        cluster.install_file(pki.server_cert, "server.crt")
        cluster.install_file(pki.server_key, "server.key", mode=0o600)
        cluster.install_file(pki.ca, "root.crt")
        cluster.set_settings(
            {
                "ssl": "on",
                "ssl_cert_file": "server.crt",
                "ssl_key_file": "server.key",
                "ssl_ca_file": "root.crt",
            }
        )
        cluster.start()
        cluster.psql(
            f"create role scram_user login password '{SECRET}';"
            f"create role pw_user login password '{SECRET}';"
            f"create role plain_scram login password '{SECRET}';"
            "create role cert_user login;"
            "set password_encryption = 'md5';"
            f"create role md5_user login password '{SECRET}';"
        )
        yield cluster
    finally:
        cluster.cleanup()


def backend_config(
    pki: PKIFiles, cluster: Any, tmp_path: Path, *, secret: str = SECRET, **tls: Any
) -> dict[str, Any]:
    userlist = tmp_path / "userlist.txt"
    userlist.write_text(
        "; users the proxy logs in as\n"
        + "".join(
            f'"{u}" "{secret}"\n' for u in ("scram_user", "md5_user", "pw_user", "plain_scram")
        )
    )
    userlist.chmod(0o600)  # run refuses a passwords file others can read
    issue_custom(tmp_path, "cert_user", ca_dir=pki.dir)  # the proxy's own client cert
    crt, key = tmp_path / "cert_user.crt", tmp_path / "cert_user.key"
    backend_tls = {
        "mode": "verify-full",
        "ca_file": str(pki.ca),
        "server_name": "localhost",
        "cert_file": str(crt),
        "key_file": str(key),
    }
    backend_tls.update(tls)
    return {
        "rules": [{"identity": "alice", "user": u} for u in USERS],
        "backends": {
            "main": {
                "address": f"127.0.0.1:{cluster.port}",
                "tls": backend_tls,
                "auth": {"passwords_file": str(userlist)},
            }
        },
    }


def startup_error(port: int, pki: PKIFiles, user: str) -> dict[str, str]:
    """The ErrorResponse fields a raw client gets for ``user``."""
    with raw_socket(port) as s:
        s.sendall(SSL_REQUEST)
        assert s.recv(1) == b"S"
        tls = client_tls_context(pki).wrap_socket(s, server_hostname="localhost")
        tls.sendall(startup_packet(user, "postgres"))
        return parse_error(recv_all(tls))


@pytest.mark.parametrize("user", ["scram_user", "md5_user", "pw_user", "cert_user"])
def test_client_with_only_its_certificate_logs_in(
    proxy_factory: ProxyFactory, pki: PKIFiles, tls_cluster: Any, tmp_path: Path, user: str
) -> None:
    proxy = proxy_factory(backend_config(pki, tls_cluster, tmp_path))
    with connect(pki, proxy.port, "alice", user=user) as conn:
        assert conn.execute("select current_user").fetchone() == (user,)
        row = conn.execute("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetchone()
        assert row == (True,), "the backend link is TLS"


def test_scram_over_plain_tcp(
    proxy_factory: ProxyFactory, pki: PKIFiles, tls_cluster: Any, tmp_path: Path
) -> None:
    proxy = proxy_factory(backend_config(pki, tls_cluster, tmp_path, mode="disable"))
    assert current_user(pki, proxy.port, "alice", user="plain_scram") == "plain_scram"


@pytest.fixture
def captured_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    setup_logging("debug", "json", stream)
    yield stream
    setup_logging("warning", "text")


def test_wrong_secret_gives_28p01_without_the_secret(
    proxy_factory: ProxyFactory,
    pki: PKIFiles,
    tls_cluster: Any,
    tmp_path: Path,
    captured_log: io.StringIO,
) -> None:
    wrong = "Not-The-Secret-77"
    proxy = proxy_factory(backend_config(pki, tls_cluster, tmp_path, secret=wrong))
    with pytest.raises(psycopg.OperationalError) as info:
        connect(pki, proxy.port, "alice", user="scram_user")
    text = str(info.value)
    assert startup_error(proxy.port, pki, "scram_user")["C"] == "28P01"
    assert '"scram_user"' in text and 'backend "main"' in text
    assert wrong not in text and SECRET not in text
    proxy.wait_sample("pgtls_sessions_total", {"outcome": "backend_error"}, 1)
    assert wrong not in captured_log.getvalue()
    from prometheus_client import generate_latest

    assert wrong.encode() not in generate_latest(proxy.proxy.metrics.registry)
    assert current_user(pki, proxy.port, "alice", user="cert_user") == "cert_user"


def test_user_without_secret_is_refused(
    proxy_factory: ProxyFactory, pki: PKIFiles, tls_cluster: Any, tmp_path: Path
) -> None:
    config = backend_config(pki, tls_cluster, tmp_path)
    config["backends"]["main"]["auth"]["passwords_file"] = str(tmp_path / "empty.txt")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "empty.txt").chmod(0o600)
    proxy = proxy_factory(config)
    with pytest.raises(psycopg.OperationalError, match="holds no secret"):
        connect(pki, proxy.port, "alice", user="scram_user")


def test_verify_full_with_wrong_name_is_08006(
    proxy_factory: ProxyFactory, pki: PKIFiles, tls_cluster: Any, tmp_path: Path
) -> None:
    proxy = proxy_factory(backend_config(pki, tls_cluster, tmp_path, server_name="db.example.com"))
    with pytest.raises(psycopg.OperationalError) as info:
        connect(pki, proxy.port, "alice", user="cert_user")
    assert startup_error(proxy.port, pki, "cert_user")["C"] == "08006"
    assert "Hostname mismatch" in str(info.value) or "hostname" in str(info.value).lower()


def test_require_against_server_without_tls_is_08006(
    proxy_factory: ProxyFactory, pki: PKIFiles, pg_cluster: Any, tmp_path: Path
) -> None:
    config = backend_config(pki, pg_cluster, tmp_path, mode="require")
    proxy = proxy_factory(config)
    with pytest.raises(psycopg.OperationalError) as info:
        connect(pki, proxy.port, "alice", user="scram_user")
    assert startup_error(proxy.port, pki, "scram_user")["C"] == "08006"
    assert "does not accept TLS" in str(info.value)


@pytest.mark.parametrize(
    ("user", "mode", "method"),
    [
        pytest.param(
            "scram_user",
            "verify-full",
            "SCRAM-SHA-256-PLUS",  # bound to the server's cert
            marks=requires_pg(11, "SCRAM channel binding"),
        ),
        ("md5_user", "verify-full", "md5"),
        ("pw_user", "verify-full", "password"),
        ("cert_user", "verify-full", "trust-or-cert"),
        ("plain_scram", "disable", "SCRAM-SHA-256"),  # nothing to bind to
    ],
)
def test_the_log_names_how_the_proxy_got_in(
    proxy_factory: ProxyFactory,
    pki: PKIFiles,
    tls_cluster: Any,
    tmp_path: Path,
    captured_log: io.StringIO,
    user: str,
    mode: str,
    method: str,
) -> None:
    proxy = proxy_factory(backend_config(pki, tls_cluster, tmp_path, mode=mode))
    assert current_user(pki, proxy.port, "alice", user=user) == user
    assert f"backend_auth={method}" in captured_log.getvalue()
    assert SECRET not in captured_log.getvalue()


@pytest.mark.parametrize(
    ("mode", "server_name", "ca", "error"),
    [
        ("require", "db.example.com", None, None),  # encrypts, checks nothing
        ("verify-ca", "db.example.com", "ca", None),  # the chain, not the name
        ("verify-ca", None, "other", "server certificate not accepted"),
        ("verify-full", "localhost", "other", "server certificate not accepted"),
        ("verify-full", "db.example.com", "ca", "Hostname mismatch"),
    ],
)
def test_backend_tls_modes(
    proxy_factory: ProxyFactory,
    pki: PKIFiles,
    tls_cluster: Any,
    tmp_path: Path,
    mode: str,
    server_name: str | None,
    ca: str | None,
    error: str | None,
) -> None:
    ca_file = {"ca": str(pki.ca), "other": str(pki.other_ca / "ca.crt"), None: None}[ca]
    config = backend_config(
        pki, tls_cluster, tmp_path, mode=mode, server_name=server_name, ca_file=ca_file
    )
    proxy = proxy_factory(config)
    if error is None:
        assert current_user(pki, proxy.port, "alice", user="scram_user") == "scram_user"
        return
    with pytest.raises(psycopg.OperationalError) as info:
        connect(pki, proxy.port, "alice", user="scram_user")
    assert 'backend "main"' in str(info.value) and error in str(info.value)
    assert startup_error(proxy.port, pki, "scram_user")["C"] == "08006"


def test_cancel_reaches_a_backend_over_its_tls(
    proxy_factory: ProxyFactory, pki: PKIFiles, tls_cluster: Any, tmp_path: Path
) -> None:
    proxy = proxy_factory(backend_config(pki, tls_cluster, tmp_path))
    with connect(pki, proxy.port, "alice", user="scram_user") as conn:
        timer = threading.Timer(0.5, conn.cancel_safe)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("select pg_sleep(30)")
        timer.join()
        assert time.monotonic() - started < 2.5
    assert proxy.sample("pgtls_cancel_requests_total", {"result": "forwarded"}) == 1
