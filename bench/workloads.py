"""The workloads and the meters around them.

Each workload runs one client tool against one target and returns a flat
dict of numbers. Around every run the relay's CPU time (the process and its
children, from /proc/<pid>/stat) and the machine's busy time (/proc/stat)
are read before and after, so a run also says what it cost.
"""

from __future__ import annotations

import glob
import os
import re
import resource
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from stack import Stack, Target

CLK_TCK = os.sysconf("SC_CLK_TCK")


class WorkloadError(Exception):
    """A run failed or was disturbed; the message says how."""


# ---------------------------------------------------------------- CPU meters


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for task in tasks:
        try:
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                out.extend(int(x) for x in fh.read().split())
        except OSError:
            continue
    return out


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants (pgtls-proxy's workers)."""
    pids = [pid]
    i = 0
    while i < len(pids):
        pids.extend(_children(pids[i]))
        i += 1
    return pids


def tree_cpu_split(pid: int) -> tuple[float, float]:
    """(user, system) seconds of the tree, with what its reaped children used."""
    user = system = 0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is field 3 (state): utime=14, stime=15, cutime=16, cstime=17.
        user += int(fields[11]) + int(fields[13])
        system += int(fields[12]) + int(fields[14])
    return user / CLK_TCK, system / CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    """utime+stime of the tree, plus what its reaped children used (cutime+cstime)."""
    return sum(tree_cpu_split(pid))


def _status_number(path: str, key: str) -> int:
    """The number after ``key`` in a /proc status file; 0 when the task is gone."""
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_wakeups(pid: int) -> int:
    """Voluntary context switches of the tree: how often its processes slept and woke."""
    total = 0
    for member in process_tree(pid):
        # Per thread: /proc/<pid>/status counts the main thread only, and the
        # relay runs in a thread of its own.
        try:
            threads = os.listdir(f"/proc/{member}/task")
        except OSError:
            continue
        for tid in threads:
            total += _status_number(f"/proc/{member}/task/{tid}/status", "voluntary_ctxt_switches:")
    return total


def machine_busy_seconds() -> float:
    """CPU seconds all cores spent not idle (user, system, irq, softirq, steal)."""
    with open("/proc/stat") as fh:
        parts = fh.readline().split()
    values = [int(v) for v in parts[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    # guest time is already counted in user.
    return (sum(values[:8]) - idle) / CLK_TCK


def children_cpu_seconds() -> float:
    """CPU of this process's reaped children: the pgbench or psql that just ran."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_for_quiet(max_wait: float = 15.0, threshold: float = 0.3) -> float:
    """Wait (up to ``max_wait`` s) until the machine is nearly idle; returns the seconds waited.

    Between runs the benchmark's own processes idle, so what keeps the machine
    busy is someone else's work, which would be measured along with ours.
    """
    started = time.monotonic()
    while True:
        before = machine_busy_seconds()
        time.sleep(0.5)
        cores_busy = (machine_busy_seconds() - before) / 0.5
        waited = time.monotonic() - started
        if cores_busy < threshold or waited >= max_wait:
            return waited


class Meter:
    """CPU and wall time around one run, split by who used it.

    relay: the target's relay process tree (none for direct TLS); postgres:
    the postmaster and its backends; client: pgbench/psql; unattributed: the
    rest of the machine's busy time (interrupt and loopback softirq work, and
    any other load on the machine). A relay whose set of processes changed
    during the run (a worker restarted) makes the run invalid.
    """

    def __init__(self, stack: Stack, target: Target) -> None:
        self.stack = stack
        self.target = target

    def _sample(self) -> dict[str, float]:
        user, system = tree_cpu_split(self.target.pid) if self.target.pid else (0.0, 0.0)
        return {
            "relay": user + system,
            "relay_sys": system,
            "relay_wakeups": float(tree_wakeups(self.target.pid)) if self.target.pid else 0.0,
            "postgres": tree_cpu_seconds(self.stack.postmaster_pid),
            "client": children_cpu_seconds(),
            "machine": machine_busy_seconds(),
            "wall": time.perf_counter(),
        }

    def __enter__(self) -> Meter:
        self.pids = sorted(process_tree(self.target.pid)) if self.target.pid else []
        self.start = self._sample()
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def read(self) -> dict[str, float]:
        end = self._sample()
        d = {k: end[k] - self.start[k] for k in end}
        if self.target.pid and sorted(process_tree(self.target.pid)) != self.pids:
            raise WorkloadError(
                f"{self.target.name}: relay processes changed during the run "
                f"({self.pids} -> {sorted(process_tree(self.target.pid))}): a worker restarted"
            )
        out = {
            "wall_s": d["wall"],
            "machine_cpu_s": d["machine"],
            "postgres_cpu_s": d["postgres"],
            "client_cpu_s": d["client"],
            "unattributed_cpu_s": d["machine"] - d["postgres"] - d["client"] - d["relay"],
        }
        if self.target.pid:
            out["relay_cpu_s"] = d["relay"]
            out["relay_sys_share"] = d["relay_sys"] / d["relay"] if d["relay"] else 0.0
            out["relay_wakeups"] = d["relay_wakeups"]
        return out


# ---------------------------------------------------------------- pgbench

_TPS = re.compile(r"^tps = ([\d.]+)", re.M)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.M)
_LAT_AVG = re.compile(r"^latency average = ([\d.]+) ms", re.M)
_CONN_AVG = re.compile(r"^average connection time = ([\d.]+) ms", re.M)


def _pgbench(stack: Stack, target: Target, args: list[str], timeout: float) -> tuple[str, float]:
    started = time.perf_counter()
    proc = subprocess.run(
        ["pgbench", *args],
        env=stack.client_env(target),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0 or not _TPS.search(proc.stdout):
        detail = (proc.stderr.strip().splitlines() or ["(no output)"])[-5:]
        raise WorkloadError(f"pgbench exited {proc.returncode}: " + " | ".join(detail))
    return proc.stdout, wall


def _parse(stdout: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, pattern in (
        ("tps", _TPS),
        ("transactions", _PROCESSED),
        ("failed", _FAILED),
        ("latency_avg_ms", _LAT_AVG),
        ("connect_avg_ms", _CONN_AVG),
    ):
        found = pattern.search(stdout)
        if found:
            out[key] = float(found.group(1))
    return out


def steady(stack: Stack, target: Target, secs: int, clients: int = 8) -> dict[str, Any]:
    """Select-only transactions on long sessions: the relay's per-round-trip cost."""
    args = ["-n", "-S", "-c", str(clients), "-j", "2", "-T", str(secs)]
    with Meter(stack, target) as meter:
        stdout, _ = _pgbench(stack, target, args, secs + 60)
        cost = meter.read()
    result: dict[str, Any] = {**_parse(stdout), **cost}
    tx = result.get("transactions", 0) or 1
    _per(result, cost, tx, "us_per_tx")
    if "relay_wakeups" in cost:
        result["relay_wakeups_per_tx"] = cost["relay_wakeups"] / tx
    return result


def new_connection(stack: Stack, target: Target, secs: int, clients: int = 4) -> dict[str, Any]:
    """One TLS handshake, authentication and backend session per transaction (-C)."""
    args = ["-n", "-S", "-C", "-c", str(clients), "-j", "2", "-T", str(secs)]
    with Meter(stack, target) as meter:
        stdout, _ = _pgbench(stack, target, args, secs + 60)
        cost = meter.read()
    result: dict[str, Any] = {**_parse(stdout), **cost}
    tx = result.get("transactions", 0) or 1
    _per(result, cost, tx, "us_per_conn")
    return result


def _per(result: dict[str, Any], cost: dict[str, float], count: float, suffix: str) -> None:
    """relay_cpu_s -> relay_cpu_us_per_tx and so on for every CPU figure."""
    for key, seconds in cost.items():
        if key.endswith("_cpu_s"):
            result[key.removesuffix("_s") + "_" + suffix] = seconds / count * 1e6


def latency(stack: Stack, target: Target, secs: int, rate: int) -> dict[str, Any]:
    """One client at a fixed rate; per-transaction times from pgbench's -l log.

    With -R, pgbench's logged time counts from the scheduled start, so the
    schedule lag (7th column) is subtracted to get the round trip itself.
    """
    with tempfile.TemporaryDirectory(prefix="pgbench-log-") as tmp:
        prefix = str(Path(tmp) / "tx")
        args = ["-n", "-S", "-c", "1", "-j", "1", "-T", str(secs), "-R", str(rate)]
        args += ["-l", f"--log-prefix={prefix}"]
        with Meter(stack, target) as meter:
            stdout, _ = _pgbench(stack, target, args, secs + 60)
            cost = meter.read()
        samples: list[float] = []
        for path in glob.glob(prefix + ".*"):
            with open(path) as fh:
                for line in fh:
                    cols = line.split()
                    if len(cols) < 6 or cols[2] == "skipped":
                        continue
                    lag = int(cols[6]) if len(cols) > 6 else 0
                    samples.append(int(cols[2]) - lag)
    if not samples:
        raise WorkloadError("pgbench wrote no per-transaction log")
    samples.sort()
    result: dict[str, Any] = {**_parse(stdout), **cost}
    result["samples"] = len(samples)
    result["latency_avg_us"] = statistics.fmean(samples)
    result["latency_p50_us"] = _percentile(samples, 50)
    result["latency_p99_us"] = _percentile(samples, 99)
    return result


def _percentile(sorted_values: list[float], pct: float) -> float:
    if len(sorted_values) == 1:
        return float(sorted_values[0])
    rank = (len(sorted_values) - 1) * pct / 100
    low = int(rank)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (rank - low)


def bulk_copy(stack: Stack, target: Target) -> dict[str, Any]:
    """``\\copy big to /dev/null`` through the target: bytes per second backend -> client."""
    with Meter(stack, target) as meter:
        proc = subprocess.run(
            ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", "\\copy big to /dev/null"],
            env=stack.client_env(target),
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        cost = meter.read()
    if proc.returncode != 0:
        raise WorkloadError(f"psql \\copy exited {proc.returncode}: {proc.stderr.strip()}")
    mb = stack.copy_bytes / 1e6
    result: dict[str, Any] = {**cost, "bytes": stack.copy_bytes, "mb_per_s": mb / cost["wall_s"]}
    if "relay_cpu_s" in cost:
        result["relay_cpu_ms_per_mb"] = cost["relay_cpu_s"] / mb * 1e3
    return result


# ---------------------------------------------------------------- memory


def tree_rss_kib(pid: int) -> int:
    """Resident memory of the tree (VmRSS of every process), in KiB."""
    return sum(_status_number(f"/proc/{member}/status", "VmRSS:") for member in process_tree(pid))


def _connect_kwargs(env: dict[str, str]) -> dict[str, str]:
    """The libpq settings of ``Stack.client_env`` as connection parameters."""
    names = {
        "PGHOST": "host",
        "PGHOSTADDR": "hostaddr",
        "PGPORT": "port",
        "PGUSER": "user",
        "PGDATABASE": "dbname",
        "PGSSLMODE": "sslmode",
        "PGSSLROOTCERT": "sslrootcert",
        "PGSSLCERT": "sslcert",
        "PGSSLKEY": "sslkey",
        "PGGSSENCMODE": "gssencmode",
        "PGCONNECT_TIMEOUT": "connect_timeout",
    }
    return {param: env[var] for var, param in names.items() if var in env}


def idle_sessions(
    stack: Stack, target: Target, count: int, *, query: bool = True, warmup: int = 20
) -> dict[str, Any]:
    """RSS the relay adds per established, idle mTLS session.

    ``count`` verify-full sessions with a client certificate are opened one
    after the other and held; the relay's resident memory (all its
    processes) is read before and while they are held. With ``query`` each
    session runs a query first (not for PgBouncer in session mode, which
    would hold one of its 20 server connections per client from its first
    query on). ``warmup`` sessions are opened and closed before, so what
    runs once per process (imports, the first handshake) is not charged to
    the sessions. The reading after closing them shows what was not given
    back.
    """
    import psycopg  # the tests' client; only this workload needs it in-process

    assert target.pid is not None, "direct TLS has no relay to measure"
    pid = target.pid
    conninfo = psycopg.conninfo.make_conninfo(**_connect_kwargs(stack.client_env(target)))
    for _ in range(warmup):
        psycopg.connect(conninfo, autocommit=True).close()
    time.sleep(1.0)
    before = tree_rss_kib(pid)
    started = time.perf_counter()
    conns: list[Any] = []
    try:
        for _ in range(count):
            conn = psycopg.connect(conninfo, autocommit=True)
            conns.append(conn)
            if query:
                conn.execute("select 1").fetchone()
        opened = time.perf_counter()
        time.sleep(2.0)  # let the proxy's periodic work run once over the held sessions
        held = tree_rss_kib(pid)
    except psycopg.Error as exc:
        raise WorkloadError(f"session {len(conns) + 1} of {count}: {exc}") from exc
    finally:
        for conn in conns:
            conn.close()
    time.sleep(2.0)
    after = tree_rss_kib(pid)
    return {
        "sessions": count,
        "open_s": opened - started,
        "rss_before_kib": before,
        "rss_held_kib": held,
        "rss_after_close_kib": after,
        "rss_kib_per_session": (held - before) / count,
    }
