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

from pgtls_proxy.systemd import sd_notify

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "pgtls-proxy.service"


def _unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNIT)
    return parser


def test_unit_runs_as_notify_service_with_reload() -> None:
    service = _unit()["Service"]
    assert service["Type"] == "notify"
    assert service["NotifyAccess"] == "main"  # workers must not speak for the service
    assert service["WatchdogSec"] == "30"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["ExecStart"].startswith("/usr/bin/pgtls-proxy run --config /etc/pgtls-proxy/")
    assert service["RestartPreventExitStatus"] == "2"  # `run` exits 2 on a bad config
    assert service["User"] == service["Group"] == "pgtls-proxy"
    assert service["LoadCredential"] == "key-passphrase:/etc/pgtls-proxy/key.passphrase"
    assert service.get("CapabilityBoundingSet", None) == ""
    assert service["ProtectSystem"] == "strict"
    assert service["RestrictAddressFamilies"] == "AF_INET AF_INET6 AF_UNIX"


def test_unit_documents_the_literal_credential_path() -> None:
    """Config paths do not expand ${CREDENTIALS_DIRECTORY}; the comment must say so."""
    text = UNIT.read_text()
    assert "key_passphrase_file: /run/credentials/pgtls-proxy.service/key-passphrase" in text


def test_exposure_score_is_ok() -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if "CI" in os.environ:
            pytest.fail("systemd-analyze is required under CI (Debian package systemd)")
        pytest.skip("systemd-analyze not installed")
    # --threshold is in tenths: the command fails above an exposure of 2.0.
    out = subprocess.run(
        [tool, "security", "--offline=true", "--threshold=20", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+) (\w+)", out.stdout)
    assert found, out.stdout + out.stderr
    assert float(found.group(1)) <= 2.0, out.stdout
    assert found.group(2) == "OK"
    assert out.returncode == 0, out.stdout + out.stderr


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
