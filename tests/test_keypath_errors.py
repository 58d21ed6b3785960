"""Config and TLS-file problems share one base, so callers catch one type."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgtls_proxy.config import ConfigError, build_config
from pgtls_proxy.errors import KeyPathError
from pgtls_proxy.pki.contexts import TLSConfigError, load_client_cas
from pgtls_proxy.secretfiles import InsecureFileError

TLS = {"cert_file": "s.crt", "key_file": "s.key", "client_ca_file": "absent-ca.crt"}


def test_every_config_problem_is_a_key_path_error() -> None:
    assert issubclass(ConfigError, KeyPathError)
    assert issubclass(TLSConfigError, KeyPathError)
    assert issubclass(InsecureFileError, KeyPathError)


def test_one_except_catches_the_parser_and_the_file_loaders(tmp_path: Path) -> None:
    caught: list[KeyPathError] = []
    with pytest.raises(KeyPathError) as info:
        build_config({"tls": TLS, "backends": {"main": {"address": "h:1", "x": 1}}}, tmp_path)
    caught.append(info.value)
    config = build_config({"tls": TLS, "backends": {"main": {"address": "h:1"}}}, tmp_path)
    with pytest.raises(KeyPathError) as info:
        load_client_cas(config.tls)
    caught.append(info.value)
    assert [(type(e), e.key) for e in caught] == [
        (ConfigError, "backends.main.x"),
        (TLSConfigError, "tls.client_ca_file"),
    ]
    assert str(caught[1]) == f"tls.client_ca_file: {caught[1].message}"
    assert "cannot read" in caught[1].message


def test_a_problem_of_the_whole_file_has_no_key_path() -> None:
    error = ConfigError("", "cannot read config file /x: No such file or directory")
    assert str(error) == "cannot read config file /x: No such file or directory"
