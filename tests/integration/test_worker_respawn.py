"""A worker that dies comes back with the last configuration and files that loaded."""

from __future__ import annotations

import os
import re
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import yaml

from tests.fixtures.clients import current_user
from tests.fixtures.pki import PKIFiles
from tests.integration.test_workers import worker_pids


def _copy_pki(pki: PKIFiles, tmp_path: Path) -> dict[str, Any]:
    """The server's files in a directory of the test's own (they get removed)."""
    own = tmp_path / "own-pki"
    own.mkdir()
    for src in (pki.server_cert, pki.server_key, pki.ca, pki.crl):
        shutil.copy2(src, own / src.name)
    return {
        "tls": {
            "cert_file": str(own / pki.server_cert.name),
            "key_file": str(own / pki.server_key.name),
            "client_ca_file": str(own / pki.ca.name),
            "crl_files": [str(own / pki.crl.name)],
        }
    }


def _kill_one_worker(d: Any) -> int:
    """SIGKILL one worker; return the id of the worker that was restarted."""
    start = len(d.log)
    victim = min(worker_pids(d.proc.pid))
    os.kill(victim, signal.SIGKILL)
    wid = int(d.wait_log(rf"worker (\d+) \(pid {victim}\) died", start=start).group(1))
    deadline = time.monotonic() + 20
    while True:
        now = worker_pids(d.proc.pid)
        if len(now) == 2 and victim not in now:
            break
        assert time.monotonic() < deadline, f"no new worker: {now}\n{''.join(d.log[-20:])}"
        time.sleep(0.1)
    return wid


def _served_by(d: Any, pki: PKIFiles, wid: int, start: int, user: str = "alice") -> None:
    """Good clients get in, and worker ``wid`` (the new one) serves some of them."""
    deadline = time.monotonic() + 30
    while True:
        assert current_user(pki, d.port, "alice") == user
        if any(
            "session open" in line and re.search(rf"worker={wid}\b", line) for line in d.log[start:]
        ):
            return
        assert time.monotonic() < deadline, f"worker {wid} never served:\n{''.join(d.log[-30:])}"


def _restarts(d: Any) -> int:
    return sum(1 for line in d.log if re.search(r"worker \d+ \(pid \d+\) died", line))


def test_worker_dying_while_the_ca_file_is_missing_comes_back(
    daemon_factory: Any, pki: PKIFiles, tmp_path: Path
) -> None:
    files = _copy_pki(pki, tmp_path)
    d = daemon_factory({**files, "workers": 2})
    d.wait_log("all 2 workers ready")
    ca = Path(files["tls"]["client_ca_file"])
    saved = ca.read_bytes()
    start = len(d.log)
    ca.unlink()
    # Each worker's watcher sees it go and keeps what it loaded.
    d.wait_metric("pgtls_tls_file_reloads_total", 1, result="failed")
    wid = _kill_one_worker(d)
    after_kill = len(d.log)
    _served_by(d, pki, wid, after_kill)
    time.sleep(2)  # a crash loop would show here, one restart every half second
    assert _restarts(d) == 1, "".join(d.log[start:])
    assert not [line for line in d.log[start:] if "configuration error" in line]
    # The file comes back: the new worker picks it up like the others.
    ca.write_bytes(saved)
    d.wait_metric("pgtls_tls_file_reloads_total", 1, result="ok")
    for _ in range(6):
        assert current_user(pki, d.port, "alice") == "alice"
    d.signal(signal.SIGHUP)
    d.wait_metric("pgtls_config_reloads_total", 1, result="ok")
    assert _restarts(d) == 1
    d.signal(signal.SIGTERM)
    assert d.proc.wait(15) == 0


def test_worker_dying_after_a_failed_reload_keeps_the_config_that_loaded(
    daemon_factory: Any, pki: PKIFiles
) -> None:
    d = daemon_factory({"workers": 2})
    d.wait_log("all 2 workers ready")
    good = d.path.read_text()
    start = len(d.log)
    d.path.write_text("listen: [this is not: yaml\n")
    d.signal(signal.SIGHUP)
    d.wait_metric("pgtls_config_reloads_total", 1, result="failed")
    wid = _kill_one_worker(d)
    _served_by(d, pki, wid, start)
    time.sleep(2)
    assert _restarts(d) == 1, "".join(d.log[start:])
    # The config is fixed, with a change the new worker must take too.
    data = yaml.safe_load(good)
    data["rules"] = [{"identity": "alice", "user": "bob"}, *data["rules"]]
    data["identity"]["on_user_mismatch"] = "rewrite"
    d.write(data)
    d.signal(signal.SIGHUP)
    d.wait_metric("pgtls_config_reloads_total", 1, result="ok")
    for _ in range(8):
        assert current_user(pki, d.port, "alice") == "bob"
    # And a worker restarted now starts from the new configuration.
    start = len(d.log)
    wid = _kill_one_worker(d)
    _served_by(d, pki, wid, start, user="bob")
    assert _restarts(d) == 2
    d.signal(signal.SIGTERM)
    assert d.proc.wait(15) == 0


def test_bundle_is_not_in_argv_or_environment(daemon_factory: Any, pki: PKIFiles) -> None:
    d = daemon_factory({"workers": 2})
    d.wait_log("all 2 workers ready")
    key = Path(d.data["tls"]["key_file"]).read_bytes()
    marker = key.splitlines()[1][:40]  # a line of the key's base64
    for pid in worker_pids(d.proc.pid):
        for name in ("cmdline", "environ"):
            assert marker not in Path(f"/proc/{pid}/{name}").read_bytes()
    assert not [line for line in d.log if marker.decode() in line]
