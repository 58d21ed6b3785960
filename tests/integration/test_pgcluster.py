"""The throwaway PostgreSQL cluster that the demo and the integration tests stand on."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import stat
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pgtls_proxy.demo import cluster as pgcluster
from pgtls_proxy.demo.cluster import ClusterError, PgCluster, find_pg_bin_dir
from tests.fixtures import cluster as cluster_fixtures
from tests.fixtures.cluster import ClusterFactory
from tests.fixtures.pki import self_signed


def connect(cluster: PgCluster, user: str, dbname: str = "postgres") -> psycopg.Connection:
    return psycopg.connect(cluster.conninfo(user=user, dbname=dbname), connect_timeout=5)


def scalar(cluster: PgCluster, sql: str, user: str, dbname: str = "postgres") -> object:
    with connect(cluster, user, dbname) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


# -- locating the binaries (no server needed) --------------------------------


def _fake_bin_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    for name in ("initdb", "pg_ctl", "postgres"):
        exe = path / name
        exe.write_text("#!/bin/sh\nexit 1\n")
        exe.chmod(0o755)
    return path


@pytest.fixture
def no_system_pg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Path]:
    """Hide every real PostgreSQL install from find_pg_bin_dir."""
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.delenv("PG_BIN_DIR", raising=False)
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(pgcluster, "_PG_LIB_ROOT", tmp_path / "no-such-lib")
    yield tmp_path


def test_find_pg_bin_dir_none_when_absent(no_system_pg: Path) -> None:
    assert find_pg_bin_dir() is None


def test_find_pg_bin_dir_prefers_env(no_system_pg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_bin_dir(no_system_pg / "custom" / "bin")
    monkeypatch.setenv("PG_BIN_DIR", str(fake))
    assert find_pg_bin_dir() == fake


def test_find_pg_bin_dir_ignores_incomplete_env(
    no_system_pg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PG_BIN_DIR", str(no_system_pg))
    assert find_pg_bin_dir() is None


def test_find_pg_bin_dir_picks_highest_version(
    no_system_pg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = no_system_pg / "lib"
    for version in ("9.6", "15", "10"):
        _fake_bin_dir(root / version / "bin")
    (root / "17" / "bin").mkdir(parents=True)  # client-only install: no server binaries
    monkeypatch.setattr(pgcluster, "_PG_LIB_ROOT", root)
    assert find_pg_bin_dir() == root / "15" / "bin"


def test_find_pg_bin_dir_resolves_initdb_on_path(
    no_system_pg: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = _fake_bin_dir(no_system_pg / "real" / "bin")
    links = no_system_pg / "links"
    links.mkdir()
    (links / "initdb").symlink_to(real / "initdb")
    monkeypatch.setenv("PATH", str(links))
    assert find_pg_bin_dir() == real.resolve()


def test_missing_binaries_skip_locally_but_fail_under_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cluster_fixtures, "find_pg_bin_dir", lambda: None)
    monkeypatch.delenv(cluster_fixtures.BINDIR_ENV, raising=False)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception):
        cluster_fixtures.require_pg_bin_dir()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        cluster_fixtures.require_pg_bin_dir()


def test_quoting() -> None:
    assert pgcluster.quote_ident('we"ird') == '"we""ird"'
    assert pgcluster.quote_literal("it's") == "'it''s'"


# -- the shared session cluster ----------------------------------------------


def test_select_one_over_tcp_as_alice(pg_cluster: PgCluster) -> None:
    with connect(pg_cluster, "alice") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert conn.info.host == "127.0.0.1"
        assert conn.info.port == pg_cluster.port
        assert conn.info.user == "alice"


def test_session_cluster_has_app_database_and_roles(pg_cluster: PgCluster) -> None:
    for role in ("alice", "bob", "app_user"):
        assert scalar(pg_cluster, "SELECT current_user", role, "app") == role
    owner = pg_cluster.psql("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'app'")
    assert owner == "app_user"


def test_create_user_and_database(pg_cluster: PgCluster) -> None:
    user = f"u_{uuid.uuid4().hex[:8]}"
    db = f"db_{uuid.uuid4().hex[:8]}"
    pg_cluster.create_user(user, password="s3cr'et")
    pg_cluster.create_database(db, owner=user)
    assert scalar(pg_cluster, "SELECT current_database()", user, db) == db
    assert pg_cluster.psql(f"SELECT datname FROM pg_database WHERE datname = '{db}'") == db
    stored = pg_cluster.psql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{user}'")
    assert stored.startswith("SCRAM-SHA-256$")


def test_psql_reports_errors(pg_cluster: PgCluster) -> None:
    with pytest.raises(ClusterError, match="no_such_table"):
        pg_cluster.psql("SELECT * FROM no_such_table")
    assert pg_cluster.psql("SELECT 1; SELECT 2") == "1\n2"


# -- private clusters --------------------------------------------------------


def test_hba_rewrite_and_reload_refuses_user(pg_cluster_factory: ClusterFactory) -> None:
    cluster = pg_cluster_factory()
    for role in ("alice", "bob"):
        cluster.create_user(role)
    assert scalar(cluster, "SELECT 1", "bob") == 1

    cluster.write_hba(
        [
            "local all all trust",
            "host all bob 127.0.0.1/32 reject",
            "host all all 127.0.0.1/32 trust",
        ]
    )
    cluster.reload()
    with pytest.raises(psycopg.OperationalError, match=r"pg_hba\.conf rejects"):
        connect(cluster, "bob")
    assert scalar(cluster, "SELECT 1", "alice") == 1


def test_reload_rejects_broken_hba(pg_cluster_factory: ClusterFactory) -> None:
    cluster = pg_cluster_factory()
    cluster.write_hba(["local all all trust", "hots all all 127.0.0.1/32 trust"])
    with pytest.raises(ClusterError, match="invalid connection type"):
        cluster.reload()


def test_settings_apply_on_reload(pg_cluster_factory: ClusterFactory) -> None:
    cluster = pg_cluster_factory(settings={"work_mem": "8MB"})
    assert cluster.psql("SHOW work_mem") == "8MB"
    assert cluster.psql("SHOW fsync") == "off"
    cluster.set_settings({"work_mem": "16MB"})
    cluster.reload()
    assert cluster.psql("SHOW work_mem") == "16MB"


def test_stop_and_start(pg_cluster_factory: ClusterFactory) -> None:
    cluster = pg_cluster_factory()
    cluster.create_user("alice")
    assert cluster.running
    cluster.stop()
    assert not cluster.running
    with pytest.raises(psycopg.OperationalError):
        connect(cluster, "alice")
    cluster.stop()  # stopping a stopped server is a no-op
    cluster.start()
    assert scalar(cluster, "SELECT 1", "alice") == 1
    cluster.restart()
    assert scalar(cluster, "SELECT 1", "alice") == 1


def test_kill_then_start_recovers(pg_cluster_factory: ClusterFactory) -> None:
    cluster = pg_cluster_factory()
    cluster.psql("SET synchronous_commit = on; CREATE TABLE t (v int); INSERT INTO t VALUES (42);")
    cluster.kill()
    assert not cluster.running
    cluster.start()
    assert "not properly shut down" in cluster.log_tail(200)
    assert cluster.psql("SELECT v FROM t") == "42"


def test_start_retries_when_port_is_taken(
    pg_bin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        ports = iter([taken])
        real_pick = pgcluster._pick_free_port
        monkeypatch.setattr(pgcluster, "_pick_free_port", lambda: next(ports, None) or real_pick())
        with PgCluster(bin_dir=pg_bin_dir) as cluster:
            assert cluster.port == taken
            cluster.init()
            cluster.start()
            assert cluster.port != taken
            assert cluster.psql("SHOW port") == str(cluster.port)


def test_cleanup_removes_directory(pg_cluster_factory: ClusterFactory) -> None:
    cluster = pg_cluster_factory()
    base, port = cluster.base_dir, cluster.port
    assert cluster.data_dir.is_dir() and cluster.socket_dir.is_dir()
    cluster.cleanup()
    assert not base.exists()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    cluster.cleanup()  # idempotent


def test_given_base_dir_is_left_in_place(pg_bin_dir: Path) -> None:
    base = Path(tempfile.mkdtemp(prefix="pgcluster-given-"))
    try:
        with PgCluster(base, bin_dir=pg_bin_dir) as cluster:
            cluster.init()
            cluster.start()
            assert cluster.data_dir.parent == base
        assert not cluster.running
        assert (base / "data" / "PG_VERSION").exists()
    finally:
        shutil.rmtree(base)


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = self_signed("localhost", key, hashes.SHA256())
    cert_path, key_path = tmp_path / "server.crt", tmp_path / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_install_file_lets_the_server_use_tls(
    pg_cluster_factory: ClusterFactory, tmp_path: Path
) -> None:
    cluster = pg_cluster_factory()
    cluster.create_user("alice")
    cert_src, key_src = _self_signed(tmp_path)
    cert = cluster.install_file(cert_src, "server.crt")
    key = cluster.install_file(key_src, "server.key", mode=0o600)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(cert.stat().st_mode) == 0o644
    if os.geteuid() == 0:
        assert key.stat().st_uid == pwd.getpwnam("postgres").pw_uid
    cluster.set_settings({"ssl": True})
    cluster.restart()
    conninfo = cluster.conninfo(user="alice") + " sslmode=require"
    with psycopg.connect(conninfo, connect_timeout=5) as conn:
        row = conn.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
    assert row == (True,)
    with pytest.raises(ClusterError, match="plain file name"):
        cluster.install_file(cert_src, "../escape.crt")
