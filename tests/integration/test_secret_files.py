"""Private keys, passphrases and passwords files: ``run`` refuses them readable by others."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgtls_proxy.ca import authority
from tests.fixtures.clients import current_user
from tests.fixtures.pki import PKIFiles
from tests.fixtures.proxy import ProxyFactory, base_config, deep_merge

CLI = [sys.executable, "-m", "pgtls_proxy"]
FIX = "make it 0600 (or 0640 owned by root)"


def _secret(tmp_path: Path, name: str, data: bytes, mode: int) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    path.chmod(mode)
    return path


def _loose(pki: PKIFiles, tmp_path: Path, which: str, mode: int = 0o644) -> tuple[dict, str, Path]:
    """A config override whose ``which`` secret file has ``mode``; (override, key, path)."""
    key_bytes = pki.server_key.read_bytes()
    if which == "tls.key_file":
        path = _secret(tmp_path, "server.key", key_bytes, mode)
        return {"tls": {"key_file": str(path)}}, which, path
    if which == "tls.key_passphrase_file":
        key = authority.load_private_key(pki.server_key)
        authority.write_private_key(tmp_path / "enc.key", key, b"horse")
        path = _secret(tmp_path, "pass", b"horse\n", mode)
        override = {
            "tls": {"key_file": str(tmp_path / "enc.key"), "key_passphrase_file": str(path)}
        }
        return override, which, path
    if which == "backends.main.tls.key_file":
        path = _secret(tmp_path, "proxy-client.key", pki.client("alice")[1].read_bytes(), mode)
        tls = {"mode": "require", "cert_file": str(pki.client("alice")[0]), "key_file": str(path)}
        return {"backends": {"main": {"tls": tls}}}, which, path
    if which == "backends.main.auth.passwords_file":
        path = _secret(tmp_path, "userlist.txt", b'"alice" "secret"\n', mode)
        return {"backends": {"main": {"auth": {"passwords_file": str(path)}}}}, which, path
    assert which == "metrics.tls.key_file"
    path = _secret(tmp_path, "metrics.key", key_bytes, mode)
    tls = {"cert_file": str(pki.server_cert), "key_file": str(path), "client_ca_file": str(pki.ca)}
    return {"metrics": {"tls": tls}}, which, path


SECRET_KEYS = [
    "tls.key_file",
    "tls.key_passphrase_file",
    "backends.main.tls.key_file",
    "backends.main.auth.passwords_file",
    "metrics.tls.key_file",
]


def _run(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "run", "--config", str(path)], capture_output=True, text=True, timeout=30
    )


def _assert_one_line(stderr: str, reason: str) -> None:
    """The refusal is the one line on stderr: an ERROR record ending in ``reason``."""
    lines = stderr.splitlines()
    assert len(lines) == 1, lines
    assert " ERROR " in lines[0] and lines[0].endswith(reason), lines[0]


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("which", SECRET_KEYS)
def test_run_refuses_a_secret_file_others_can_read(
    pki: PKIFiles, pg_cluster: Any, tmp_path: Path, which: str, workers: int
) -> None:
    override, key, path = _loose(pki, tmp_path, which)
    data = deep_merge(base_config(pki, pg_cluster.port), {**override, "workers": workers})
    config = tmp_path / "proxy.yaml"
    config.write_text(yaml.safe_dump(data))
    out = _run(config)
    assert out.returncode == 2
    _assert_one_line(
        out.stderr, f"pgtls-proxy: {key}: {path} is readable by group or others (mode 0644); {FIX}"
    )


def test_the_owner_rule_is_postgresqls(
    proxy_factory: ProxyFactory, pki: PKIFiles, pg_cluster: Any, tmp_path: Path
) -> None:
    """0640 passes when root owns the key, not when another user does (root reads both)."""
    override, _key, path = _loose(pki, tmp_path, "tls.key_file", 0o640)
    assert path.stat().st_uid == 0
    proxy = proxy_factory(override)
    assert current_user(pki, proxy.port) == "alice"
    os.chown(path, 10001, 10001)  # the container's user owns a mounted key
    data = deep_merge(base_config(pki, pg_cluster.port), override)
    config = tmp_path / "proxy.yaml"
    config.write_text(yaml.safe_dump(data))
    out = _run(config)
    assert out.returncode == 2
    _assert_one_line(
        out.stderr,
        f"pgtls-proxy: tls.key_file: {path} is readable by group or others (mode 0640); {FIX}",
    )
    os.chmod(path, 0o600)  # owned by someone else, private: root may read it
    assert current_user(pki, proxy_factory(override).port) == "alice"


def test_reload_and_file_watch_refuse_a_key_made_readable(
    daemon_factory: Any, pki: PKIFiles, tmp_path: Path
) -> None:
    override, _key, path = _loose(pki, tmp_path, "tls.key_file", 0o600)
    d = daemon_factory(override)
    path.chmod(0o644)
    # The mode change is a change of the file: the watcher tries, and refuses.
    d.wait_metric("pgtls_tls_file_reloads_total", 1, result="failed")
    start = len(d.log)
    d.signal(signal.SIGHUP)
    d.wait_metric("pgtls_config_reloads_total", 1, result="failed")
    line = d.wait_log("reload failed", start=start).string
    assert f"tls.key_file: {path} is readable by group or others (mode 0644)" in line
    assert current_user(pki, d.port) == "alice", "the running configuration stays"
    path.chmod(0o600)
    d.wait_metric("pgtls_tls_file_reloads_total", 1, result="ok")
    d.signal(signal.SIGHUP)
    d.wait_metric("pgtls_config_reloads_total", 1, result="ok")
    assert current_user(pki, d.port) == "alice"
