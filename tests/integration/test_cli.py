"""The console script as users run it: exit codes, signals, the demo."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from pgtls_proxy import __version__
from tests.fixtures.clients import current_user
from tests.fixtures.pki import PKIFiles
from tests.fixtures.proxy import base_config

CLI = [sys.executable, "-m", "pgtls_proxy"]


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def test_version() -> None:
    out = run_cli("--version")
    assert out.returncode == 0
    assert out.stdout.strip() == f"pgtls-proxy {__version__}"


def test_bad_config_exits_2_with_one_line(tmp_path: Path, pki: PKIFiles) -> None:
    data = base_config(pki, 5432)
    data["tls"]["bogus"] = 1
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    out = run_cli("run", "--config", str(path))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "tls.bogus" in lines[0] and "unknown key" in lines[0]


def test_missing_config_exits_2(tmp_path: Path) -> None:
    out = run_cli("run", "--config", str(tmp_path / "absent.yaml"))
    assert out.returncode == 2
    assert "absent.yaml" in out.stderr


def test_config_from_environment(tmp_path: Path) -> None:
    env = {**os.environ, "PGTLS_PROXY_CONFIG": str(tmp_path / "from-env.yaml")}
    out = subprocess.run([*CLI, "run"], capture_output=True, text=True, timeout=30, env=env)
    assert out.returncode == 2
    assert "from-env.yaml" in out.stderr


def _start(tmp_path: Path, data: dict[str, Any]) -> tuple[subprocess.Popen[str], int]:
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(data))
    proc = subprocess.Popen(
        [*CLI, "run", "--config", str(path)],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        found = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
        if found:
            return proc, int(found.group(1))
    proc.kill()
    raise AssertionError("proxy did not report its port")


def test_run_serves_and_sigterm_exits_0(tmp_path: Path, pki: PKIFiles, pg_cluster: Any) -> None:
    proc, port = _start(tmp_path, base_config(pki, pg_cluster.port))
    try:
        assert current_user(pki, port, "alice") == "alice"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_demo_prints_a_working_psql_line(pg_bin_dir: Path) -> None:
    proc = subprocess.Popen(
        [*CLI, "demo", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PG_BIN_DIR": str(pg_bin_dir)},  # the server under test
    )
    try:
        assert proc.stdout is not None
        line = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not line.strip().startswith("psql "):
            line = proc.stdout.readline()
            assert line or proc.poll() is None, "demo exited early"
        argv = shlex.split(line.strip())
        workdir = Path(re.search(r"sslrootcert=(\S+)/pki/ca\.crt", line).group(1))  # type: ignore[union-attr]
        assert workdir.is_dir()
        out = subprocess.run(
            [*argv, "-XAtc", "select current_user"], capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "alice"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        assert not workdir.exists(), "Ctrl-C removes the temporary files"
    finally:
        if proc.poll() is None:
            proc.kill()
