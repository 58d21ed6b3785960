"""The backend passwords file, in PgBouncer's ``userlist.txt`` format.

One ``"user" "secret"`` pair per line; a double quote inside a value is
written twice; lines starting with ``;`` (PgBouncer's comment) or ``#`` are
comments; as in PgBouncer, the rest of a line after the secret is ignored (old
``pg_auth`` exports carry a third column). A secret is a plaintext password
(answers SCRAM-SHA-256, MD5 and cleartext) or an ``md5…`` hash (answers MD5
only). The file is re-read when it changes, checked cheaply (one ``stat``) at
each login.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from pgtls_proxy.logsetup import LOGGER_NAME

_log = logging.getLogger(f"{LOGGER_NAME}.passwords")


class PasswordsFileError(ValueError):
    """A line of the file cannot be parsed (the message never shows a secret)."""


def _quoted(line: str, pos: int, lineno: int) -> tuple[str, int]:
    if pos >= len(line) or line[pos] != '"':
        raise PasswordsFileError(f"line {lineno}: expected a double-quoted value")
    out = []
    pos += 1
    while pos < len(line):
        ch = line[pos]
        if ch == '"':
            if pos + 1 < len(line) and line[pos + 1] == '"':
                out.append('"')
                pos += 2
                continue
            return "".join(out), pos + 1
        out.append(ch)
        pos += 1
    raise PasswordsFileError(f"line {lineno}: unterminated quoted value")


def parse_userlist(text: str) -> dict[str, str]:
    """Parse the whole file; a bad line raises with its number only."""
    users: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line[0] in ";#":
            continue
        user, pos = _quoted(line, 0, lineno)
        while pos < len(line) and line[pos] in " \t":
            pos += 1
        secret, _pos = _quoted(line, pos, lineno)
        users[user] = secret
    return users


@dataclass(slots=True)
class PasswordsFile:
    """A passwords file, re-read when its size, mtime or inode change."""

    path: Path
    _stamp: tuple[int, int, int] | None = None
    _users: dict[str, str] | None = None

    def lookup(self, user: str) -> str | None:
        """The secret for ``user``; a file that fails to load keeps the last good one."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            if self._users is None:
                _log.error("P: cannot read passwords file %s: %s", self.path, exc.strerror)
            return (self._users or {}).get(user)
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp:
            try:
                self._users = parse_userlist(self.path.read_text(encoding="utf-8"))
                self._stamp = stamp
            except (OSError, UnicodeDecodeError, PasswordsFileError) as exc:
                _log.error("P: passwords file %s not loaded: %s", self.path, exc)
                self._stamp = stamp
        return (self._users or {}).get(user)
