"""The benchmark's throwaway world: PKI, PostgreSQL, PgBouncer and pgtls-proxy.

Everything lives in one temporary directory and listens on 127.0.0.1 on free
ports. All three targets serve the same EC P-256 server certificate and
demand the same client certificate (CN ``bench``), so the TLS work per
connection is the same everywhere:

* ``direct``: PostgreSQL itself with ``ssl = on`` and a ``hostssl … cert``
  line for the bench user.
* ``pgbouncer``: PgBouncer with ``auth_type = cert`` and
  ``client_tls_sslmode = verify-full``, session pooling, plain TCP to
  PostgreSQL.
* ``pgtls``: ``python -m pgtls_proxy run`` with strict revocation against the
  CA's CRL and one rule ``bench -> bench``, plain TCP to PostgreSQL.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from pgtls_proxy.ca import authority
from pgtls_proxy.demo.cluster import SERVER_OS_USER, PgCluster, find_pg_bin_dir

BENCH_USER = "bench"
BENCH_DB = "bench"
SERVER_NAME = "localhost"
# Characters per row of the bulk table in COPY text format, roughly: a 7-digit
# id, a tab, 128 hex characters, a newline. Only used to pick the row count;
# the real byte count is measured.
_COPY_ROW_BYTES = 137

TARGET_LABELS = {
    "direct": "PostgreSQL direct TLS",
    "pgbouncer": "PgBouncer (TLS, auth_type=cert, session pool)",
    "pgtls": "pgtls-proxy",
}


class StackError(Exception):
    """Setting up or talking to one of the services failed."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env() -> dict[str, str]:
    """The caller's environment without PG* variables, in the C locale."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    return env


def find_pgbouncer() -> str | None:
    found = shutil.which("pgbouncer")
    if found:
        return found
    for candidate in ("/usr/sbin/pgbouncer", "/usr/local/sbin/pgbouncer"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def tool_version(args: list[str]) -> str:
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "?"
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[0] if lines else "?"


@dataclass
class Target:
    """One thing pgbench can connect to."""

    name: str
    port: int
    pid: int | None = None  # the relay process (None: PostgreSQL itself)
    proc: subprocess.Popen[bytes] | None = None
    info: dict[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return TARGET_LABELS.get(self.name, self.name)


class Stack:
    """Builds, runs and tears down the three targets."""

    def __init__(
        self,
        *,
        scale: int,
        copy_mb: float,
        workers: int | None,
        pool_size: int = 20,
        idle_sessions: int = 0,
        as_shipped: bool = False,
        ref: str | None = None,
        keep: bool = False,
        log: Callable[[str], None] = print,
    ) -> None:
        self.scale = scale
        self.copy_mb = copy_mb
        self.workers = workers
        self.pool_size = pool_size
        self.idle_sessions = idle_sessions
        self.as_shipped = as_shipped
        self.ref = ref
        self.keep = keep
        self.log = log
        self.workdir = Path(tempfile.mkdtemp(prefix="pgtls-bench-", dir="/tmp"))
        # Traversable (not listable) so the postgres OS user reaches its files.
        self.workdir.chmod(0o711)
        self.pki = self.workdir / "pki"
        self.cluster: PgCluster | None = None
        self.targets: dict[str, Target] = {}
        self.copy_bytes = 0
        self.copy_rows = 0
        self.python_path: str | None = None
        self._procs: list[subprocess.Popen[bytes]] = []
        self._logs: list[Path] = []

    # ------------------------------------------------------------ clients

    def client_env(self, target: Target) -> dict[str, str]:
        """libpq settings for a verify-full, client-certificate connection."""
        env = clean_env()
        env.update(
            PGHOST=SERVER_NAME,
            PGHOSTADDR="127.0.0.1",  # no resolver, no ::1 attempt; PGHOST is still verified
            PGPORT=str(target.port),
            PGUSER=BENCH_USER,
            PGDATABASE=BENCH_DB,
            PGSSLMODE="verify-full",
            PGSSLROOTCERT=str(self.pki / "ca.crt"),
            PGSSLCERT=str(self.pki / f"{BENCH_USER}.crt"),
            PGSSLKEY=str(self.pki / f"{BENCH_USER}.key"),
            PGGSSENCMODE="disable",
            PGCONNECT_TIMEOUT="10",
        )
        return env

    def local_env(self) -> dict[str, str]:
        """libpq settings for the cluster's unix socket (setup only)."""
        assert self.cluster is not None
        env = clean_env()
        env.update(
            PGHOST=str(self.cluster.socket_dir),
            PGPORT=str(self.cluster.port),
            PGUSER=BENCH_USER,
            PGDATABASE=BENCH_DB,
        )
        return env

    def psql(self, target: Target, command: str, timeout: float = 30) -> str:
        proc = subprocess.run(
            ["psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c", command],
            env=self.client_env(target),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise StackError(f"psql via {target.name} failed: {proc.stderr.strip()}")
        return proc.stdout.strip()

    # ------------------------------------------------------------ setup

    def setup(self) -> None:
        if self.ref is not None:
            self._export_ref(self.ref)
        self._make_pki()
        self._make_cluster()
        self._load_data()
        self.targets["direct"] = Target("direct", self.cluster_port)
        self.targets["pgbouncer"] = self._start_pgbouncer()
        self.targets["pgtls"] = self.start_proxy("pgtls", self.workers)
        for target in self.targets.values():
            self.check(target)

    def _export_ref(self, ref: str) -> None:
        """Run the proxy from ``git archive REF`` rather than the working tree."""
        root = Path(__file__).resolve().parent.parent
        dest = self.workdir / "src-ref"
        dest.mkdir()
        archive = subprocess.run(
            ["git", "archive", "--format=tar", ref, "src"],
            cwd=root,
            capture_output=True,
            check=False,
        )
        if archive.returncode != 0:
            raise StackError(f"git archive {ref}: {archive.stderr.decode(errors='replace')}")
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
        self.python_path = str(dest / "src")
        self.log(f"pgtls-proxy from {ref} ({self.python_path})")

    @property
    def postmaster_pid(self) -> int:
        assert self.cluster is not None
        return int((self.cluster.data_dir / "postmaster.pid").read_text().split()[0])

    @property
    def cluster_port(self) -> int:
        assert self.cluster is not None
        return self.cluster.port

    def _make_pki(self) -> None:
        authority.init_ca(self.pki)
        authority.issue_server(self.pki, SERVER_NAME, ["IP:127.0.0.1"])
        authority.issue_client(self.pki, BENCH_USER)
        self.log(f"PKI (EC P-256) in {self.pki}")

    def _make_cluster(self) -> None:
        bin_dir = find_pg_bin_dir()
        if bin_dir is None:
            raise StackError("PostgreSQL server binaries not found (install postgresql)")
        cluster = PgCluster(self.workdir / "pg", bin_dir=bin_dir)
        self.cluster = cluster
        cluster.init(
            hba_lines=(
                "local all all trust",
                # Direct TLS: the client certificate's CN must be the user name.
                f"hostssl {BENCH_DB} {BENCH_USER} 127.0.0.1/32 cert",
                # PgBouncer's and pgtls-proxy's backend connections.
                "hostnossl all all 127.0.0.1/32 trust",
            )
        )
        cluster.install_file(self.pki / f"{SERVER_NAME}.crt", "server.crt")
        cluster.install_file(self.pki / f"{SERVER_NAME}.key", "server.key", 0o600)
        cluster.install_file(self.pki / "ca.crt", "root.crt")
        cluster.install_file(self.pki / "crl.pem", "root.crl")
        cluster.set_settings(
            {
                "ssl": True,
                "ssl_cert_file": "server.crt",
                "ssl_key_file": "server.key",
                "ssl_ca_file": "root.crt",
                "ssl_crl_file": "root.crl",
                "shared_buffers": "256MB",
                # The idle-session measurement holds that many backends open.
                "max_connections": 200 + self.idle_sessions,
            }
        )
        cluster.start()
        self.log(f"PostgreSQL {cluster.bin_dir} on 127.0.0.1:{cluster.port} (ssl=on)")

    def _load_data(self) -> None:
        assert self.cluster is not None
        cluster = self.cluster
        cluster.create_user(BENCH_USER)
        cluster.create_database(BENCH_DB, owner=BENCH_USER)
        started = time.monotonic()
        proc = subprocess.run(
            ["pgbench", "-i", "-q", "-s", str(self.scale), BENCH_DB],
            env=self.local_env(),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        if proc.returncode != 0:
            raise StackError(f"pgbench -i failed: {proc.stderr.strip()}")
        rows = max(1000, int(self.copy_mb * 1e6 / _COPY_ROW_BYTES))
        cluster.psql(
            "CREATE TABLE big (id integer, payload text);"
            f"INSERT INTO big SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, {rows}) g;"
            "VACUUM (FREEZE, ANALYZE) big;",
            dbname=BENCH_DB,
            user=BENCH_USER,
            timeout=900,
        )
        self.copy_rows = rows
        self.copy_bytes = self._count_copy_bytes()
        self.log(
            f"data: pgbench scale {self.scale}, table big {rows} rows, "
            f"{self.copy_bytes / 1e6:.0f} MB as COPY text ({time.monotonic() - started:.0f}s)"
        )

    def _count_copy_bytes(self) -> int:
        """The exact size of ``\\copy big to …`` output, read once over the unix socket."""
        proc = subprocess.Popen(
            ["psql", "-X", "-q", "-c", "\\copy big to stdout"],
            env=self.local_env(),
            stdout=subprocess.PIPE,
        )
        assert proc.stdout is not None
        total = 0
        while chunk := proc.stdout.read(1 << 20):
            total += len(chunk)
        if proc.wait() != 0:
            raise StackError("counting COPY output failed")
        return total

    # ------------------------------------------------------------ PgBouncer

    def _start_pgbouncer(self) -> Target:
        binary = find_pgbouncer()
        if binary is None:
            raise StackError(
                "pgbouncer not found; install it (Debian: apt-get install pgbouncer) "
                "or run bench/ensure-tools.sh"
            )
        port = free_port()
        directory = self.workdir / "pgbouncer"
        directory.mkdir()
        for name in ("ca.crt", f"{SERVER_NAME}.crt", f"{SERVER_NAME}.key"):
            shutil.copy(self.pki / name, directory / name)
        (directory / "userlist.txt").write_text(f'"{BENCH_USER}" ""\n')
        ini = directory / "pgbouncer.ini"
        ini.write_text(
            "\n".join(
                [
                    "[databases]",
                    f"{BENCH_DB} = host=127.0.0.1 port={self.cluster_port} dbname={BENCH_DB}",
                    "",
                    "[pgbouncer]",
                    "listen_addr = 127.0.0.1",
                    f"listen_port = {port}",
                    "unix_socket_dir =",
                    f"logfile = {directory / 'pgbouncer.log'}",
                    f"pidfile = {directory / 'pgbouncer.pid'}",
                    "auth_type = cert",
                    f"auth_file = {directory / 'userlist.txt'}",
                    "pool_mode = session",
                    f"max_client_conn = {200 + self.idle_sessions}",
                    "default_pool_size = 20",
                    "ignore_startup_parameters = extra_float_digits",
                    "client_tls_sslmode = verify-full",
                    f"client_tls_ca_file = {directory / 'ca.crt'}",
                    f"client_tls_cert_file = {directory / (SERVER_NAME + '.crt')}",
                    f"client_tls_key_file = {directory / (SERVER_NAME + '.key')}",
                    "server_tls_sslmode = disable",
                    "",
                ]
            )
        )
        args = [binary]
        if os.geteuid() == 0:
            # PgBouncer refuses to run as root; -u drops to the postgres user.
            account = pwd.getpwnam(SERVER_OS_USER)
            for path in [directory, *directory.iterdir()]:
                os.chown(path, account.pw_uid, account.pw_gid)
            args += ["-u", SERVER_OS_USER]
        args.append(str(ini))
        proc = self._spawn("pgbouncer", args)
        target = Target("pgbouncer", port, pid=proc.pid, proc=proc)
        target.info["version"] = tool_version([binary, "--version"])
        self._wait_port(target, directory / "pgbouncer.log")
        self.log(f"PgBouncer on 127.0.0.1:{port} (pid {proc.pid})")
        return target

    # ------------------------------------------------------------ pgtls-proxy

    def start_proxy(self, name: str = "pgtls", workers: int | None = None) -> Target:
        """Start a pgtls-proxy; ``workers`` None means the proxy's default (CPU count)."""
        port = free_port()
        admin = free_port()
        config: dict[str, object] = {
            "listen": [{"address": f"127.0.0.1:{port}"}],
            "tls": {
                "cert_file": str(self.pki / f"{SERVER_NAME}.crt"),
                "key_file": str(self.pki / f"{SERVER_NAME}.key"),
                "client_ca_file": str(self.pki / "ca.crt"),
                "crl_files": [str(self.pki / "crl.pem")],
                "revocation": "strict",
            },
            "identity": {"field": "cn", "on_user_mismatch": "reject"},
            "rules": [{"identity": BENCH_USER, "user": BENCH_USER, "databases": ["*"]}],
            # Kept backend sessions, as PgBouncer's session pool keeps them
            # (default_pool_size = 20); 0 opens one per client.
            "backends": {
                "main": {
                    "address": f"127.0.0.1:{self.cluster_port}",
                    "pool": {"size": self.pool_size},
                }
            },
            "metrics": {"address": f"127.0.0.1:{admin}"},
            "shutdown": {"drain_timeout": 2},
        }
        if workers is not None:
            config["workers"] = workers
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        if self.as_shipped:
            launcher = ["-m", "pgtls_proxy"]
        else:
            launcher = [str(Path(__file__).with_name("launch_proxy.py"))]
        proc = self._spawn(name, [sys.executable, *launcher, "run", "--config", str(path)])
        target = Target(name, port, pid=proc.pid, proc=proc)
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise StackError(f"{name} exited ({proc.returncode}):\n{self._tail(name)}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise StackError(f"{name} not ready after 30s:\n{self._tail(name)}")
            time.sleep(0.1)
        from pgtls_proxy import __version__

        target.info["version"] = f"pgtls-proxy {__version__}"
        target.info["source"] = self.python_path or "working tree"
        target.info["launch"] = (
            "python -m pgtls_proxy" if self.as_shipped else "bench/launch_proxy.py"
        )
        target.info["workers"] = str(workers if workers is not None else os.cpu_count())
        self.log(f"{name} on 127.0.0.1:{port} (pid {proc.pid}, workers {target.info['workers']})")
        return target

    # ------------------------------------------------------------ processes

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        logfile = self.workdir / f"{name}.out"
        self._logs.append(logfile)
        env = clean_env()
        if self.python_path is not None:
            env["PYTHONPATH"] = self.python_path
        with logfile.open("wb") as out:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
            )
        self._procs.append(proc)
        return proc

    def _tail(self, name: str, lines: int = 30) -> str:
        path = self.workdir / f"{name}.out"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def _wait_port(self, target: Target, logfile: Path, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while True:
            assert target.proc is not None
            if target.proc.poll() is not None:
                detail = logfile.read_text(errors="replace") if logfile.exists() else ""
                raise StackError(
                    f"{target.name} exited ({target.proc.returncode}):\n"
                    f"{self._tail(target.name)}\n{detail[-2000:]}"
                )
            try:
                with socket.create_connection(("127.0.0.1", target.port), timeout=1):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise StackError(f"{target.name} does not listen on {target.port}")
            time.sleep(0.1)

    def check(self, target: Target) -> None:
        """One real query through the target; records the TLS parameters it negotiated."""
        user = self.psql(target, "select current_user")
        if user != BENCH_USER:
            raise StackError(f"{target.name}: connected as {user!r}, expected {BENCH_USER!r}")
        conninfo = self.psql(target, "\\conninfo")
        for line in conninfo.splitlines():
            if line.startswith("SSL connection"):
                target.info["tls"] = line.removeprefix("SSL connection ").strip("()")
        if "tls" not in target.info:
            raise StackError(f"{target.name}: the connection is not TLS:\n{conninfo}")

    def stop(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in reversed(self._procs):
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self.cluster is not None:
            try:
                self.cluster.stop("fast", timeout=30)
            except Exception as exc:  # cleanup must go on
                self.log(f"stopping PostgreSQL: {exc}")
        if self.keep:
            self.log(f"kept {self.workdir}")
        else:
            if self.cluster is not None:
                self.cluster.cleanup()
            shutil.rmtree(self.workdir, ignore_errors=True)
