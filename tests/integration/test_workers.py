"""``workers: N``: one port served by several processes under a supervisor."""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import time
from typing import Any

import psycopg

from tests.fixtures.clients import connect, current_user
from tests.fixtures.pki import PKIFiles

WORKERS = 3


def worker_pids(supervisor_pid: int) -> set[int]:
    children = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == supervisor_pid:
            children.add(int(entry))
    return children


def test_connections_spread_and_metrics_add_up(daemon_factory: Any, pki: PKIFiles) -> None:
    d = daemon_factory({"workers": WORKERS})
    d.wait_log(f"all {WORKERS} workers ready")

    def one(_: int) -> str:
        with connect(pki, d.port, "alice") as conn:
            row = conn.execute("select current_user, pg_sleep(0.3)").fetchone()
            assert row is not None
            return str(row[0])

    with concurrent.futures.ThreadPoolExecutor(max_workers=30) as pool:
        assert set(pool.map(one, range(60))) == {"alice"}
    d.wait_metric("pgtls_sessions_total", 60, outcome="completed")
    assert d.metric("pgtls_handshakes_total", result="ok") == 60
    assert d.metric("pgtls_sessions_active", backend="main") == 0
    used = {
        int(m.group(1))
        for line in d.log
        if "session open" in line and (m := re.search(r"worker=(\d+)", line))
    }
    assert len(used) >= 2, f"connections all landed on workers {used}"


def test_killed_worker_is_replaced(daemon_factory: Any, pki: PKIFiles) -> None:
    d = daemon_factory({"workers": 2})
    d.wait_log("all 2 workers ready")
    before = worker_pids(d.proc.pid)
    assert len(before) == 2
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    d.wait_log(rf"worker \d \(pid {victim}\) died")
    deadline = time.monotonic() + 15
    while True:
        now = worker_pids(d.proc.pid)
        if len(now) == 2 and victim not in now:
            break
        assert time.monotonic() < deadline, now
        time.sleep(0.1)
    for _ in range(6):
        assert current_user(pki, d.port, "alice") == "alice"
    d.signal(signal.SIGTERM)
    assert d.proc.wait(15) == 0


def test_sighup_counts_one_reload(daemon_factory: Any, pki: PKIFiles) -> None:
    d = daemon_factory({"workers": 2})
    d.wait_log("all 2 workers ready")
    d.signal(signal.SIGHUP)
    d.wait_metric("pgtls_config_reloads_total", 1, result="ok")
    time.sleep(0.5)
    assert d.metric("pgtls_config_reloads_total", result="ok") == 1
    assert current_user(pki, d.port, "alice") == "alice"


def test_reload_with_new_listener_replaces_workers(daemon_factory: Any, pki: PKIFiles) -> None:
    # The old worker must still drain when its successor serves: new workers
    # take seconds to start on a loaded machine, more than the fixture's 5 s.
    d = daemon_factory({"workers": 2, "shutdown": {"drain_timeout": 60}})
    d.wait_log("all 2 workers ready")
    conn = connect(pki, d.port, "alice")  # an old worker keeps it while draining
    try:
        new_port, start = d.move_listener()
        d.wait_log(r"replacing worker 1", start=start)
        deadline = time.monotonic() + 15
        while True:
            try:
                assert current_user(pki, new_port, "alice", connect_timeout=2) == "alice"
                break
            except Exception:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert conn.execute("select 1").fetchone() == (1,), "sessions survive the rebind"
    finally:
        conn.close()
    d.signal(signal.SIGTERM)
    assert d.proc.wait(15) == 0


def test_workers_exit_when_the_supervisor_is_killed(daemon_factory: Any, pki: PKIFiles) -> None:
    d = daemon_factory({"workers": 2})
    d.wait_log("all 2 workers ready")
    workers = worker_pids(d.proc.pid)
    assert len(workers) == 2
    d.proc.kill()
    d.proc.wait(10)
    deadline = time.monotonic() + 10
    while any(os.path.exists(f"/proc/{pid}") for pid in workers):
        assert time.monotonic() < deadline, "orphaned workers keep running"
        time.sleep(0.05)


def test_cancel_reaches_the_worker_that_runs_the_session(
    daemon_factory: Any, pki: PKIFiles
) -> None:
    d = daemon_factory({"workers": 4})
    d.wait_log("all 4 workers ready")

    def cancel_one(i: int) -> float:
        with connect(pki, d.port, "alice") as conn:
            started = time.monotonic()

            def later() -> None:
                time.sleep(0.5)
                if i % 2:
                    conn.cancel_safe()  # inside TLS, libpq 17+
                else:
                    conn.cancel()  # plaintext, what psql's Ctrl-C sends

            with concurrent.futures.ThreadPoolExecutor(1) as one:
                one.submit(later)
                try:
                    conn.execute("select pg_sleep(30)")
                except psycopg.errors.QueryCanceled:
                    return time.monotonic() - started
            raise AssertionError("the query was not cancelled")

    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        took = list(pool.map(cancel_one, range(16)))
    assert max(took) < 2.5, took
    d.wait_metric("pgtls_cancel_requests_total", 16, result="forwarded")
    assert d.metric("pgtls_cancel_requests_total", result="unknown_key") == 0


def test_workers_stay_up(daemon_factory: Any, pki: PKIFiles) -> None:
    """Idle workers are not restarted (trio's idle spawner threads exit after 10 s)."""
    d = daemon_factory({"workers": 2})
    d.wait_log("all 2 workers ready")
    before = worker_pids(d.proc.pid)
    time.sleep(12)
    assert worker_pids(d.proc.pid) == before
    assert not [line for line in d.log if "died" in line]
