"""The PgBouncer-format passwords file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pgtls_proxy.passwords import PasswordsFile, PasswordsFileError, parse_userlist


def test_parse_userlist() -> None:
    text = '; comment\n# another\n\n"alice" "p@ss word"\n"bob"  "say ""hi"""\n"md5u" "md5abc"\n'
    assert parse_userlist(text) == {"alice": "p@ss word", "bob": 'say "hi"', "md5u": "md5abc"}


def test_rest_of_line_is_ignored_as_pgbouncer_does() -> None:
    # pg_auth-style exports carry a third column; PgBouncer skips it.
    assert parse_userlist('"alice" "secret" ""\n"bob" "x" valid-until\n') == {
        "alice": "secret",
        "bob": "x",
    }


def test_quoted_user_names_and_empty_secret() -> None:
    assert parse_userlist('"we""ird user" ""\r\n') == {'we"ird user': ""}


@pytest.mark.parametrize("line", ['alice "x"', '"alice" x', '"alice"', '"alice" "unterminated'])
def test_bad_lines_name_the_line_not_the_secret(line: str) -> None:
    with pytest.raises(PasswordsFileError) as info:
        parse_userlist('"ok" "fine"\n' + line + "\n")
    assert "line 2" in str(info.value)
    assert "fine" not in str(info.value)


def test_reread_on_change_and_keep_last_good(tmp_path: Path) -> None:
    path = tmp_path / "userlist.txt"
    path.write_text('"alice" "one"\n')
    store = PasswordsFile(path)
    assert store.lookup("alice") == "one"
    path.write_text('"alice" "two-two"\n')
    os.utime(path, ns=(1, 2_000_000_000))
    assert store.lookup("alice") == "two-two"
    path.write_text('"alice" broken\n')
    os.utime(path, ns=(1, 3_000_000_000))
    assert store.lookup("alice") == "two-two"
    assert store.lookup("nobody") is None
