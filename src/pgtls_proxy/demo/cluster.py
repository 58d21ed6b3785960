"""Throwaway PostgreSQL clusters for ``pgtls-proxy demo`` and the test suite.

A cluster lives in one private temporary directory (data dir, socket dir, log
file) and listens on 127.0.0.1 on a free port, so several can run side by side
next to a system PostgreSQL. PostgreSQL refuses to run as root, so when we are
root the server tools run as the ``postgres`` OS user; the ``psql`` client stays
with the caller and reaches the server over its private unix socket.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Self

__all__ = [
    "DEFAULT_HBA",
    "SERVER_OS_USER",
    "ClusterError",
    "PgCluster",
    "SettingValue",
    "find_pg_bin_dir",
    "quote_ident",
    "quote_literal",
]

log = logging.getLogger(__name__)

#: OS account that runs the server when we are root.
SERVER_OS_USER = "postgres"

#: Trust everything local: clusters are private to one machine and one run.
DEFAULT_HBA: tuple[str, ...] = (
    "local all all trust",
    "host all all 127.0.0.1/32 trust",
    "host all all ::1/128 trust",
)

SettingValue = str | int | float | bool

_NO_SETTINGS: Mapping[str, SettingValue] = MappingProxyType({})
_SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
_PG_LIB_ROOT = Path("/usr/lib/postgresql")
_SETTINGS_FILE = "pgcluster.conf"
_SETTING_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
# sun_path holds 108 bytes including the NUL; the server appends "/.s.PGSQL.<port>".
_SOCKET_PATH_MAX = 107 - len("/.s.PGSQL.65535")
_BIND_RETRIES = 3
_BIND_FAILURE = re.compile(
    r"could not bind|could not create any TCP/IP sockets|Address already in use"
)
_RELOAD_LOGGED = "received SIGHUP, reloading configuration files"
_STOP_MODES = ("smart", "fast", "immediate")


class ClusterError(Exception):
    """A cluster operation failed; the message carries the tool's own output."""


def quote_ident(name: str) -> str:
    """Quote an SQL identifier so role and database names can be anything."""
    if "\0" in name:
        raise ClusterError("identifier contains a NUL byte")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """Quote an SQL string literal (standard_conforming_strings is on by default)."""
    if "\0" in value:
        raise ClusterError("literal contains a NUL byte")
    return "'" + value.replace("'", "''") + "'"


def _conf_value(value: SettingValue) -> str:
    """Render a postgresql.conf value; quoting every value is valid for all GUC types."""
    text = ("on" if value else "off") if isinstance(value, bool) else str(value)
    if "\n" in text or "\0" in text:
        raise ClusterError(f"setting value {text!r} contains a newline or NUL")
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def _has_server_binaries(directory: Path) -> bool:
    return all(
        (directory / name).is_file() and os.access(directory / name, os.X_OK)
        for name in _SERVER_BINARIES
    )


def _version_key(bin_dir: Path) -> tuple[int, ...]:
    """Order /usr/lib/postgresql/<version>/bin numerically (9.6 < 10 < 15)."""
    try:
        return tuple(int(part) for part in bin_dir.parent.name.split("."))
    except ValueError:
        return (-1,)


def find_pg_bin_dir() -> Path | None:
    """Locate a directory holding initdb, pg_ctl and postgres, or None.

    Order: ``$PG_BIN_DIR``, ``pg_config --bindir``, the newest
    ``/usr/lib/postgresql/*/bin`` (Debian keeps server binaries off PATH), then
    the real directory of ``initdb`` on PATH.
    """
    env_dir = os.environ.get("PG_BIN_DIR")
    if env_dir:
        candidate = Path(env_dir).expanduser()
        if _has_server_binaries(candidate):
            return candidate
        log.warning("PG_BIN_DIR=%s lacks initdb/pg_ctl/postgres; looking elsewhere", env_dir)

    pg_config = shutil.which("pg_config")
    if pg_config:
        try:
            proc = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.SubprocessError):
            proc = None
        if proc is not None and proc.returncode == 0 and proc.stdout.strip():
            candidate = Path(proc.stdout.strip())
            if _has_server_binaries(candidate):
                return candidate

    versioned = [d for d in _PG_LIB_ROOT.glob("*/bin") if _has_server_binaries(d)]
    if versioned:
        return max(versioned, key=_version_key)

    initdb = shutil.which("initdb")
    if initdb:
        candidate = Path(initdb).resolve().parent
        if _has_server_binaries(candidate):
            return candidate
    return None


def _pick_free_port() -> int:
    """Ask the kernel for a free port; start() retries if another process races us to it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _traversable_by(path: Path, account: pwd.struct_passwd) -> bool:
    """Whether ``account`` can reach ``path`` (mode bits only; ACLs are ignored)."""
    groups = set(os.getgrouplist(account.pw_name, account.pw_gid))
    for part in (path, *path.parents):
        try:
            st = part.stat()
        except OSError:
            return False
        if st.st_uid == account.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _find_runuser() -> str | None:
    found = shutil.which("runuser")
    if found:
        return found
    for candidate in ("/usr/sbin/runuser", "/sbin/runuser"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _child_env() -> dict[str, str]:
    """Environment for server tools and psql.

    Inherited PG* variables (PGHOST, PGOPTIONS, PGDATA, ...) would silently
    redirect or reconfigure our tools, so they are dropped; a C locale keeps
    messages in English for the checks that read them.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env["LANG"] = "C"
    return env


class PgCluster:
    """A private PostgreSQL cluster: ``init()``, ``start()``, use, ``cleanup()``.

    As a context manager it only guarantees ``cleanup()`` on exit; call
    ``init()`` and ``start()`` yourself.
    """

    def __init__(
        self,
        base_dir: Path | None = None,
        *,
        port: int | None = None,
        bin_dir: Path | None = None,
        superuser: str = "postgres",
    ) -> None:
        found = Path(bin_dir) if bin_dir is not None else find_pg_bin_dir()
        if found is None:
            raise ClusterError(
                "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; "
                "install PostgreSQL or set PG_BIN_DIR"
            )
        if not _has_server_binaries(found):
            raise ClusterError(f"{found} does not hold initdb, pg_ctl and postgres")
        self._bin_dir = found
        self._superuser = superuser
        self._server_account = self._lookup_server_account()
        self._auto_port = port is None
        self._port = _pick_free_port() if port is None else port
        self._user_settings: dict[str, str] = {}
        self._extra_dirs: list[Path] = []

        if base_dir is None:
            self._base_dir = self._make_temp_base()
            self._owns_base = True
        else:
            self._base_dir = Path(base_dir).absolute()
            self._owns_base = not self._base_dir.exists()
            self._base_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._prepare_base()
        except BaseException:
            self._remove_dirs()
            raise
        self._data_dir = self._base_dir / "data"
        self._log_file = self._base_dir / "postgres.log"

    # -- properties ---------------------------------------------------------

    @property
    def port(self) -> int:
        return self._port

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def socket_dir(self) -> Path:
        return self._socket_dir

    @property
    def data_dir(self) -> Path:
        return self._data_dir

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    @property
    def log_file(self) -> Path:
        return self._log_file

    @property
    def bin_dir(self) -> Path:
        return self._bin_dir

    @property
    def superuser(self) -> str:
        return self._superuser

    @property
    def running(self) -> bool:
        """Ask pg_ctl rather than trusting our own bookkeeping (the server may have died)."""
        if not self._is_initialised():
            return False
        proc = self._run_server_tool(["pg_ctl", "status", "-D", str(self._data_dir)], check=False)
        return proc.returncode == 0

    def conninfo(self, *, user: str | None = None, dbname: str = "postgres") -> str:
        """A libpq TCP connection string for this cluster (no TLS: the server has none)."""
        parts = {
            "host": self.host,
            "port": str(self._port),
            "user": user or self._superuser,
            "dbname": dbname,
        }
        return " ".join(f"{k}={_conninfo_quote(v)}" for k, v in parts.items())

    def __repr__(self) -> str:
        return f"PgCluster(base_dir={self._base_dir!s}, port={self._port})"

    # -- lifecycle ----------------------------------------------------------

    def init(
        self,
        *,
        hba_lines: Sequence[str] = DEFAULT_HBA,
        settings: Mapping[str, SettingValue] = _NO_SETTINGS,
    ) -> None:
        """Run initdb, then install our pg_hba.conf and settings."""
        if self._is_initialised():
            raise ClusterError(f"{self._data_dir} is already initialised")
        self._run_server_tool(
            [
                "initdb",
                "-D",
                str(self._data_dir),
                "-U",
                self._superuser,
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                # Only to silence initdb's warning: pg_hba.conf is replaced below.
                "--auth=trust",
            ],
            timeout=120,
        )
        self.write_hba(hba_lines)
        with (self._data_dir / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(
                f"\n# Cluster settings, rewritten by set_settings().\ninclude '{_SETTINGS_FILE}'\n"
            )
        self.set_settings(settings)

    def start(self, timeout: float = 30) -> None:
        """Start and wait until the server accepts connections.

        With an automatically chosen port, a lost race for it ("could not bind")
        is retried on a fresh port up to three times.
        """
        self._require_init()
        retries = 0
        while True:
            offset = self._log_size()
            proc = self._run_server_tool(
                [
                    "pg_ctl",
                    "start",
                    "-w",
                    "-t",
                    str(max(1, round(timeout))),
                    "-D",
                    str(self._data_dir),
                    "-l",
                    str(self._log_file),
                ],
                timeout=timeout + 30,
                check=False,
            )
            if proc.returncode == 0:
                return
            new_log = self._read_log(offset)
            if self._auto_port and retries < _BIND_RETRIES and _BIND_FAILURE.search(new_log):
                retries += 1
                old = self._port
                self._port = _pick_free_port()
                log.info("port %d was taken; retrying on %d", old, self._port)
                self._write_settings()
                continue
            # pg_ctl may give up while the server is still coming up; do not leak it.
            self._run_server_tool(
                ["pg_ctl", "stop", "-D", str(self._data_dir), "-m", "immediate", "-w"],
                check=False,
            )
            raise ClusterError(
                f"pg_ctl start failed (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()}\n--- server log ---\n{new_log[-4000:]}"
            )

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        """Stop the server if it runs; ``mode`` is pg_ctl's smart, fast or immediate."""
        if mode not in _STOP_MODES:
            raise ClusterError(f"stop mode must be one of {', '.join(_STOP_MODES)}")
        if not self.running:
            return
        self._run_server_tool(
            [
                "pg_ctl",
                "stop",
                "-D",
                str(self._data_dir),
                "-m",
                mode,
                "-w",
                "-t",
                str(max(1, round(timeout))),
            ],
            timeout=timeout + 30,
        )

    def kill(self) -> None:
        """Crash-stop (immediate mode): the next start runs crash recovery."""
        self.stop("immediate")

    def restart(self, timeout: float = 30) -> None:
        self.stop()
        self.start(timeout)

    def reload(self, timeout: float = 10) -> None:
        """Reload configuration and wait until new connections see it.

        pg_ctl reload only sends SIGHUP; waiting avoids tests racing the
        postmaster. Raises if the pg_hba.conf on disk has errors (PostgreSQL
        would keep the old one and only log it).
        """
        self._require_init()
        if not self.running:
            raise ClusterError("cannot reload: the server is not running")
        before = self._conf_load_time()
        offset = self._log_size()
        self._run_server_tool(["pg_ctl", "reload", "-D", str(self._data_dir)])
        deadline = time.monotonic() + timeout
        while True:
            # The postmaster handles SIGHUP before it accepts the next connection,
            # so once the log shows it, new sessions get the new files.
            if _RELOAD_LOGGED in self._read_log(offset):
                break
            now = self._conf_load_time()
            if before is not None and now is not None and now != before:
                break
            if time.monotonic() > deadline:
                raise ClusterError(f"server did not reload within {timeout}s\n{self.log_tail(20)}")
            time.sleep(0.05)
        try:
            errors = self.psql(
                "SELECT line_number || ': ' || error FROM pg_hba_file_rules"
                " WHERE error IS NOT NULL ORDER BY line_number"
            )
        except ClusterError:
            return  # the new rules may lock the superuser out; nothing left to check
        if errors:
            raise ClusterError(f"pg_hba.conf has errors and was not reloaded:\n{errors}")

    def cleanup(self) -> None:
        """Stop the server if running and remove the directories we created."""
        try:
            if self._is_initialised():
                try:
                    self.stop("fast", timeout=30)
                except ClusterError:
                    self.stop("immediate", timeout=30)
        finally:
            self._remove_dirs()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    # -- configuration ------------------------------------------------------

    def write_hba(self, lines: Sequence[str]) -> None:
        """Replace pg_hba.conf; takes effect after reload() or restart()."""
        self._require_init()
        self._write_data_file("pg_hba.conf", _config_text(lines), 0o600)

    def write_ident(self, lines: Sequence[str]) -> None:
        """Replace pg_ident.conf; takes effect after reload() or restart()."""
        self._require_init()
        self._write_data_file("pg_ident.conf", _config_text(lines), 0o600)

    def set_settings(self, settings: Mapping[str, SettingValue]) -> None:
        """Merge server settings into our include file; reload() or restart() applies them.

        Later calls override earlier values. ``port`` is honoured and updates
        :attr:`port`; ALTER SYSTEM still wins, as postgresql.auto.conf is read last.
        """
        self._require_init()
        for name, value in settings.items():
            if not _SETTING_NAME.fullmatch(name):
                raise ClusterError(f"invalid setting name {name!r}")
            if name == "port":
                self._port = int(value)
                self._auto_port = False
                continue
            self._user_settings[name] = _conf_value(value)
        self._write_settings()

    def install_file(self, src: Path, name: str, mode: int = 0o644) -> Path:
        """Copy ``src`` into the data dir as ``name``, owned by the server's OS user.

        The server refuses a private key that is not 0600 (or root-owned 0640),
        so pass ``mode=0o600`` for keys.
        """
        self._require_init()
        if not name or Path(name).name != name or name in (".", ".."):
            raise ClusterError(f"install_file name must be a plain file name, not {name!r}")
        return self._write_data_file(name, Path(src).read_bytes(), mode)

    # -- SQL ----------------------------------------------------------------

    def psql(
        self,
        sql: str,
        *,
        dbname: str = "postgres",
        user: str | None = None,
        timeout: float = 60,
    ) -> str:
        """Run SQL with psql over the unix socket; return its unaligned, tuples-only output.

        The SQL goes in on stdin, so statements like CREATE DATABASE run outside a
        transaction and passwords never appear on a command line.
        """
        args = [
            self._psql_path(),
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(self._socket_dir),
            "-p",
            str(self._port),
            "-U",
            user or self._superuser,
            "-d",
            dbname,
            "-f",
            "-",
        ]
        proc = _run(args, input_text=sql, timeout=timeout, cwd=self._base_dir)
        if proc.returncode != 0:
            raise ClusterError(f"psql failed (exit {proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout.strip()

    def create_user(self, name: str, password: str | None = None, superuser: bool = False) -> None:
        parts = ["CREATE ROLE", quote_ident(name), "LOGIN"]
        if superuser:
            parts.append("SUPERUSER")
        if password is not None:
            parts += ["PASSWORD", quote_literal(password)]
        self.psql(" ".join(parts) + ";")

    def create_database(self, name: str, owner: str | None = None) -> None:
        sql = f"CREATE DATABASE {quote_ident(name)}"
        if owner is not None:
            sql += f" OWNER {quote_ident(owner)}"
        self.psql(sql + ";")

    def log_tail(self, n: int = 50) -> str:
        try:
            text = self._log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-n:])

    # -- internals ----------------------------------------------------------

    def _lookup_server_account(self) -> pwd.struct_passwd | None:
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(SERVER_OS_USER)
        except KeyError:
            raise ClusterError(
                f"running as root, but OS user {SERVER_OS_USER!r} does not exist "
                "(PostgreSQL refuses to run as root)"
            ) from None

    def _make_temp_base(self) -> Path:
        """mkdtemp under TMPDIR, or /tmp if the server's OS user cannot reach TMPDIR."""
        candidates = [Path(tempfile.gettempdir())]
        if self._server_account is not None:
            candidates += [Path("/tmp"), Path("/var/tmp")]
            account = self._server_account
            candidates = [c for c in candidates if _traversable_by(c, account)]
            if not candidates:
                raise ClusterError(
                    f"no temporary directory reachable by OS user {SERVER_OS_USER!r}"
                )
        return Path(tempfile.mkdtemp(prefix="pgcluster-", dir=candidates[0]))

    def _prepare_base(self) -> None:
        account = self._server_account
        if account is not None and not _traversable_by(self._base_dir.parent, account):
            raise ClusterError(
                f"OS user {SERVER_OS_USER!r} cannot reach {self._base_dir}; "
                "choose a base_dir under a world-traversable directory"
            )
        # 0755: the server's OS user owns it, and other local users may reach the socket.
        self._base_dir.chmod(0o755)
        self._chown(self._base_dir)
        socket_dir = self._base_dir / "sock"
        if len(str(socket_dir)) > _SOCKET_PATH_MAX:
            socket_dir = Path(tempfile.mkdtemp(prefix="pgsock-", dir="/tmp"))
            self._extra_dirs.append(socket_dir)
        else:
            socket_dir.mkdir(exist_ok=True)
        socket_dir.chmod(0o755)
        self._chown(socket_dir)
        self._socket_dir = socket_dir

    def _remove_dirs(self) -> None:
        targets = list(self._extra_dirs)
        if self._owns_base:
            targets.append(self._base_dir)
        for target in targets:
            if target.exists():
                shutil.rmtree(target)

    def _chown(self, path: Path) -> None:
        if self._server_account is not None:
            os.chown(path, self._server_account.pw_uid, self._server_account.pw_gid)

    def _is_initialised(self) -> bool:
        return (self._data_dir / "PG_VERSION").exists()

    def _require_init(self) -> None:
        if not self._is_initialised():
            raise ClusterError("cluster is not initialised; call init() first")

    def _write_data_file(self, name: str, data: bytes | str, mode: int) -> Path:
        """Write atomically (the postmaster may read mid-write) with the server's ownership."""
        dest = self._data_dir / name
        tmp = dest.with_name(f".{name}.tmp")
        payload = data.encode("utf-8") if isinstance(data, str) else data
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(payload)
            os.chmod(tmp, mode)
            self._chown(tmp)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return dest

    def _write_settings(self) -> None:
        base: dict[str, str] = {
            "listen_addresses": _conf_value(self.host),
            "port": _conf_value(self._port),
            "unix_socket_directories": _conf_value(str(self._socket_dir)),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "'32MB'",
            "max_connections": "200",
            "logging_collector": "off",
            "log_line_prefix": _conf_value("%m [%p] %q%u@%d "),
            # The default from PostgreSQL 14 on; 10 to 13 would store md5 hashes,
            # with which a scram-sha-256 pg_hba.conf line cannot log in.
            "password_encryption": _conf_value("scram-sha-256"),
        }
        merged = base | self._user_settings
        lines = [f"{name} = {value}" for name, value in merged.items()]
        self._write_data_file(_SETTINGS_FILE, _config_text(lines), 0o600)

    def _psql_path(self) -> str:
        own = self._bin_dir / "psql"
        if own.is_file() and os.access(own, os.X_OK):
            return str(own)
        found = shutil.which("psql")
        if found is None:
            raise ClusterError("psql not found next to the server binaries or on PATH")
        return found

    def _run_server_tool(
        self, args: list[str], *, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run a server binary from bin_dir, as the server's OS user when we are root."""
        command = [str(self._bin_dir / args[0]), *args[1:]]
        if self._server_account is not None:
            runuser = _find_runuser()
            if runuser is not None:
                command = [runuser, "-u", SERVER_OS_USER, "--", *command]
            else:
                su = shutil.which("su") or "/bin/su"
                command = [su, SERVER_OS_USER, "-s", "/bin/sh", "-c", shlex.join(command)]
        proc = _run(command, timeout=timeout, cwd=self._base_dir)
        if check and proc.returncode != 0:
            raise ClusterError(
                f"{args[0]} {args[1] if len(args) > 1 else ''} failed (exit {proc.returncode}): "
                f"{(proc.stderr or proc.stdout).strip()}"
            )
        return proc

    def _conf_load_time(self) -> str | None:
        try:
            return self.psql("SELECT pg_conf_load_time()", timeout=10)
        except ClusterError:
            return None

    def _log_size(self) -> int:
        try:
            return self._log_file.stat().st_size
        except FileNotFoundError:
            return 0

    def _read_log(self, offset: int) -> str:
        try:
            with self._log_file.open("rb") as fh:
                fh.seek(offset)
                return fh.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""


def _run(
    args: list[str], *, timeout: float, cwd: Path, input_text: str | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            args,
            input=input_text if input_text is not None else "",
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            env=_child_env(),
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"{shlex.join(args)} timed out after {timeout}s") from exc
    except OSError as exc:
        raise ClusterError(f"cannot run {args[0]}: {exc}") from exc


def _config_text(lines: Sequence[str]) -> str:
    return "# Written by pgtls_proxy.demo.cluster.\n" + "".join(f"{line}\n" for line in lines)


def _conninfo_quote(value: str) -> str:
    if value and not any(c in value for c in " '\\"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
