"""Private keys and passwords files must be private: one rule for ``run`` and ``check``.

The rule is PostgreSQL's for ``ssl_key_file``: mode 0600 or stricter, or
0640 or stricter when the file is owned by root (so a service group can read
a key that root owns). Only the mode bits are judged, never who the owner is
beyond "root or not": a container that runs as uid 10001 and reads a file
mounted with another owner is fine as long as the mode keeps group and
others out. ``run`` refuses to start (and a reload fails) on a file that
breaks the rule; ``check`` reports it as an error.
"""

from __future__ import annotations

import stat
from pathlib import Path

from pgtls_proxy.config import Config, ConfigError


class InsecureFileError(ConfigError):
    """A secret file readable (or writable) by group or others; ``key`` names the setting."""


def secret_files(config: Config) -> list[tuple[str, Path]]:
    """(key path, file) of every private key, passphrase and passwords file the config names."""
    tls = config.tls
    out: list[tuple[str, Path]] = [("tls.key_file", tls.key_file)]
    if tls.key_passphrase_file is not None:
        out.append(("tls.key_passphrase_file", tls.key_passphrase_file))
    for name, backend in config.backends.items():
        if backend.tls.key_file is not None:
            out.append((f"backends.{name}.tls.key_file", backend.tls.key_file))
        if backend.auth.passwords_file is not None:
            out.append((f"backends.{name}.auth.passwords_file", backend.auth.passwords_file))
    metrics_tls = config.metrics.tls
    if metrics_tls is not None:
        out.append(("metrics.tls.key_file", metrics_tls.key_file))
    return out


def mode_problem(path: Path) -> str | None:
    """What is wrong with the mode of ``path``, or None (also when it cannot be stat'ed).

    A missing or unreadable file is reported by whatever loads it, with its
    own words; this function judges the mode only.
    """
    try:
        st = path.stat()
    except OSError:
        return None
    mode = stat.S_IMODE(st.st_mode)
    allowed = 0o640 if st.st_uid == 0 else 0o600
    excess = mode & ~allowed & 0o077
    if not excess:
        return None
    if excess & 0o044:
        access = "readable"
    elif excess & 0o022:
        access = "writable"
    else:
        access = "accessible"
    return (
        f"{path} is {access} by group or others (mode {mode:04o});"
        " make it 0600 (or 0640 owned by root)"
    )


def require_private(config: Config) -> None:
    """Raise InsecureFileError for the first secret file that others may read."""
    for key, path in secret_files(config):
        problem = mode_problem(path)
        if problem is not None:
            raise InsecureFileError(key, problem)
