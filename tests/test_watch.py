"""The file watcher's decisions, without a running proxy: what counts as a change, and when."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from pgtls_proxy.config import Config, load_config
from pgtls_proxy.metrics import Metrics
from pgtls_proxy.pki.contexts import TLSConfigError
from pgtls_proxy.snapshot import SnapshotBuilder
from pgtls_proxy.watch import FileWatch, snapshot, watched_files
from tests.fixtures.chain_pki import ChainPKI


@pytest.fixture
def config(chain_pki: ChainPKI, tmp_path: Path) -> Config:
    cert, key = chain_pki.server
    for path in (cert, key):
        shutil.copy(path, tmp_path / path.name)
    crl_dir = tmp_path / "crl.d"
    chain_pki.write_crl(crl_dir / "root.pem", chain_pki.root)
    chain_pki.write_crl(crl_dir / "inter.pem", chain_pki.inter)
    chain_pki.write_crl(tmp_path / "inter2.pem", chain_pki.inter2)
    data = {
        "tls": {
            "cert_file": cert.name,
            "key_file": key.name,
            "client_ca_file": str(chain_pki.bundle),
            "crl_files": ["inter2.pem"],
            "crl_dir": "crl.d",
        },
        "backends": {"main": {"address": "127.0.0.1:5432"}},
    }
    (tmp_path / "proxy.yaml").write_text(yaml.safe_dump(data))
    return load_config(tmp_path / "proxy.yaml")


def touch(path: Path) -> None:
    """Change a file the way an editor does: new content, later mtime."""
    path.write_bytes(path.read_bytes() + b"\n")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1_000_000))


def test_watched_files_are_the_tls_files_and_every_crl(config: Config, tmp_path: Path) -> None:
    tls = config.tls
    assert watched_files(config) == [
        tls.cert_file,
        tls.key_file,
        tls.client_ca_file,
        tmp_path / "inter2.pem",
        tmp_path / "crl.d" / "inter.pem",
        tmp_path / "crl.d" / "root.pem",
    ]


def test_snapshot_sees_content_renames_and_directory_entries(
    config: Config, tmp_path: Path
) -> None:
    before = snapshot(config)
    assert snapshot(config) == before
    touch(tmp_path / "localhost.key")
    after_edit = snapshot(config)
    assert after_edit != before
    replacement = tmp_path / "new.pem"
    shutil.copy(tmp_path / "inter2.pem", replacement)
    replacement.replace(tmp_path / "inter2.pem")  # same bytes, new inode
    assert snapshot(config) != after_edit
    current = snapshot(config)
    (tmp_path / "crl.d" / ".half-written.tmp").write_bytes(b"x")
    assert snapshot(config) == current, "hidden temporary files are not CRLs"
    (tmp_path / "crl.d" / "extra.pem").write_bytes(b"x")
    assert snapshot(config) != current
    (tmp_path / "crl.d" / "extra.pem").unlink()
    assert snapshot(config) == current


def test_a_change_applies_once_it_holds_still_for_one_poll(config: Config, tmp_path: Path) -> None:
    files = SnapshotBuilder()
    watch = FileWatch(files)
    files.build(config)
    assert not watch.changed(config)
    touch(tmp_path / "localhost.crt")
    assert not watch.changed(config), "first sight: the writer may not be done"
    touch(tmp_path / "localhost.crt")
    assert not watch.changed(config), "still moving"
    assert watch.changed(config), "held still for a poll"
    files.build(config)
    assert not watch.changed(config)


def test_a_failed_build_is_not_retried_until_the_files_change_again(
    config: Config, tmp_path: Path
) -> None:
    metrics = Metrics(CollectorRegistry())
    files = SnapshotBuilder(metrics)
    watch = FileWatch(files)
    files.build(config)
    (tmp_path / "localhost.key").write_bytes(b"broken")
    watch.changed(config)
    assert watch.changed(config)
    with pytest.raises(TLSConfigError):
        files.build(config)
    assert not watch.changed(config) and not watch.changed(config)


def test_bad_crls_are_counted_once_per_build_and_only_where_asked(
    config: Config, tmp_path: Path
) -> None:
    (tmp_path / "inter2.pem").write_bytes(b"garbage")
    counted = Metrics(CollectorRegistry())
    state = SnapshotBuilder(counted).build(config)
    [problem] = state.revocation.problems
    assert problem.source.key == "tls.crl_files[0]"
    assert counted.registry.get_sample_value("pgtls_crl_load_errors_total") == 1
    silent = Metrics(CollectorRegistry())
    SnapshotBuilder(silent, count_errors=False).build(config)
    assert silent.registry.get_sample_value("pgtls_crl_load_errors_total") == 0
