"""The config schema is stated once, in the settings dataclasses.

A key left out takes the dataclass default, and every field (less the ones
the parser derives) is a key the parser accepts; a parse-time default that
drifted from its dataclass, or a field the parser forgot, fails here.
"""

from __future__ import annotations

import copy
import os
from dataclasses import fields
from typing import Any, get_args

import pytest

from pgtls_proxy.config import (
    BackendAuthSettings,
    BackendPoolSettings,
    BackendTLSSettings,
    ConfigError,
    IdentitySettings,
    LimitsSettings,
    LoggingSettings,
    LogLevel,
    MetricsSettings,
    RevocationMode,
    Rule,
    RuleAction,
    ShutdownSettings,
    TLSSettings,
    build_config,
)
from tests.test_config import BASE, MINIMAL


def test_left_out_keys_take_the_dataclass_defaults() -> None:
    cfg = build_config(copy.deepcopy(MINIMAL), BASE)
    assert cfg.identity == IdentitySettings()
    assert cfg.metrics == MetricsSettings()
    assert cfg.logging == LoggingSettings()
    assert cfg.limits == LimitsSettings()
    assert cfg.shutdown == ShutdownSettings()
    assert cfg.workers == (os.cpu_count() or 1)
    main = cfg.backends["main"]
    assert (main.tls, main.auth, main.pool) == (
        BackendTLSSettings(),
        BackendAuthSettings(),
        BackendPoolSettings(),
    )
    assert cfg.rules == (Rule(index=0, identity="alice", identity_regex=None, user="alice"),)
    tls = TLSSettings(BASE / "server.crt", BASE / "server.key", BASE / "ca.crt")
    assert cfg.tls == tls


def _section_keys(cls: type[Any]) -> list[str]:
    return [f.name for f in fields(cls)]


@pytest.mark.parametrize(
    ("section", "cls"),
    [
        ("identity", IdentitySettings),
        ("logging", LoggingSettings),
        ("limits", LimitsSettings),
        ("shutdown", ShutdownSettings),
    ],
)
def test_every_field_is_a_key(section: str, cls: type[Any]) -> None:
    """Each field, set to its own default, is accepted and gives the default back."""
    data = copy.deepcopy(MINIMAL)
    data[section] = {name: getattr(cls(), name) for name in _section_keys(cls)}
    assert getattr(build_config(data, BASE), section) == cls()


@pytest.mark.parametrize(
    ("path", "choices"),
    [
        (("tls", "revocation"), get_args(RevocationMode)),
        (("logging", "level"), get_args(LogLevel)),
    ],
)
def test_literal_types_are_the_accepted_values(path: tuple[str, str], choices: tuple[str]) -> None:
    section, key = path
    for choice in choices:
        data = copy.deepcopy(MINIMAL)
        data.setdefault(section, {})[key] = choice
        assert getattr(getattr(build_config(data, BASE), section), key) == choice
    data = copy.deepcopy(MINIMAL)
    data.setdefault(section, {})[key] = "other"
    with pytest.raises(ConfigError) as info:
        build_config(data, BASE)
    assert info.value.message == f"must be one of {', '.join(choices)}, not 'other'"


def test_rule_actions() -> None:
    for action in get_args(RuleAction):
        data = copy.deepcopy(MINIMAL)
        data["rules"][0]["action"] = action
        assert build_config(data, BASE).rules[0].action == action
