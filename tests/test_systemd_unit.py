"""The systemd unit: notify type, reload, and a hardening score of at most 2.0."""

from __future__ import annotations

import configparser
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from pgtls_proxy.server import sd_notify

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "pgtls-proxy.service"


def _unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_unit_runs_as_notify_service_with_reload() -> None:
    service = _unit()["Service"]
    assert service["Type"] == "notify"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert "pgtls-proxy run --config" in service["ExecStart"]
    assert service["User"] != "root"
    assert service["LoadCredential"].startswith("key-passphrase:")
    assert service.get("CapabilityBoundingSet", None) == ""


def test_exposure_score_is_ok() -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if "CI" in os.environ:
            pytest.fail("systemd-analyze is required under CI (Debian package systemd)")
        pytest.skip("systemd-analyze not installed")
    out = subprocess.run(
        [tool, "security", "--offline=true", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", out.stdout)
    assert found, out.stdout + out.stderr
    assert float(found.group(1)) <= 2.0, out.stdout
    assert found.group(2) == "OK"


@pytest.mark.parametrize("abstract", [False, True])
def test_sd_notify_sends_a_datagram(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, abstract: bool
) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        if abstract:
            name = f"pgtls-proxy-test-{os.getpid()}"
            sock.bind("\0" + name)
            monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        else:
            path = str(tmp_path / "notify")
            sock.bind(path)
            monkeypatch.setenv("NOTIFY_SOCKET", path)
        sock.settimeout(5)
        sd_notify("READY=1")
        assert sock.recv(100) == b"READY=1"


def test_sd_notify_without_socket_is_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    sd_notify("READY=1")  # must neither raise nor block
