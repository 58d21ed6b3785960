"""config/pgtls-proxy.example.yaml shows every key, with its default.

The keys come from the settings dataclasses (the one statement of the
schema), so a key added to the code but not to the example fails here.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path
from typing import Any

import yaml

from pgtls_proxy.config import Config, HostPort, LimitsSettings, load_config

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "pgtls-proxy.example.yaml"
# Filled in by the parser, not keys (the rule's place, its compiled regex, ...).
DERIVED = {"index", "identity_regex", "name", "source"}


def _dataclass_in(hint: Any) -> type[Any] | None:
    """The section type inside ``hint`` (``X | None``, ``tuple[X, ...]``, ``Mapping[str, X]``)."""
    if hint is HostPort:
        return None  # a value ("host:port"), not a section
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint
    for arg in typing.get_args(hint):
        found = _dataclass_in(arg)
        if found is not None:
            return found
    return None


def key_paths(cls: type[Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every leaf key of the section ``cls``, as a path of names."""
    hints = typing.get_type_hints(cls)
    out: list[tuple[str, ...]] = []
    for f in dataclasses.fields(cls):
        if f.name in DERIVED:
            continue
        path = (*prefix, f.name)
        nested = _dataclass_in(hints[f.name])
        out.extend(key_paths(nested, path) if nested is not None else [path])
    return out


def _lookup(node: Any, path: tuple[str, ...]) -> bool:
    """Whether the document has ``path`` (in the first list item, the first backend)."""
    for name in path:
        if isinstance(node, list):
            node = node[0]
        if not isinstance(node, dict) or name not in node:
            return False
        node = node[name]
        if name == "backends":
            node = next(iter(node.values()))
    return True


def test_every_key_is_in_the_example() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    data = yaml.safe_load(text)
    # metrics.tls is off by default; its keys are shown commented out under it.
    commented = set(re.findall(r"^\s*#\s+(\w+):", text, re.MULTILINE))
    missing = []
    for path in key_paths(Config):
        if path[:2] == ("metrics", "tls") and len(path) == 3:
            if path[2] not in commented:
                missing.append(".".join(path))
        elif not _lookup(data, path):
            missing.append(".".join(path))
    assert missing == []


def test_the_schema_walk_sees_the_nested_keys() -> None:
    paths = {".".join(p) for p in key_paths(Config)}
    assert {
        "workers",
        "limits.max_pending",
        "limits.per_source_pending",
        "metrics.tls.client_ca_file",
        "backends.pool.max_lifetime",
        "rules.identity",
        "listen.proxy_protocol",
    } <= paths


def test_the_example_parses_with_the_defaults() -> None:
    config = load_config(EXAMPLE)
    assert config.limits == LimitsSettings()
    assert config.metrics.tls is None
    assert config.workers >= 1
