"""docs/reference.md lists exactly what the code has: commands, keys, metrics, audit fields.

No sockets, no processes: each side is read in-process in well under a second.

How docs/reference.md is read. A table belongs to a kind by the text of its
header's first cell, and its rows name their item in backticks in the first
cell:

- ``command``: ``pgtls-proxy pki server DIR NAME [--san SAN ...]``: the words
  after ``pgtls-proxy`` up to the first option or upper-case argument are the
  command, ``--options`` its options, upper-case words its arguments.
- ``key``: a dotted key path, ``rules[]`` for a list item and ``<name>`` for a
  key of your choice; the second cell is the default: a backticked YAML value,
  or prose (``required …``) when there is none.
- ``metric``: the exposed name; the second cell its type; the third its
  labels: ``none``, or ``;``-separated label names in backticks, each
  followed by ``:`` and its values in backticks when the code pre-creates
  them (then exactly those values).
- ``field``: an audit record field.

How the code side is found, so that a refactoring that keeps behaviour keeps
this test green:

- commands: the argparse tree :func:`pgtls_proxy.cli.build_parser` builds;
- metrics: what a fresh :class:`pgtls_proxy.metrics.Metrics` registry
  collects (prometheus_client's public ``collect()``), after
  ``declare_backends`` so per-backend children exist;
- config keys: the loader decides. Candidates are the fields of the config
  dataclasses (walked recursively from ``Config``), the keys of
  config/pgtls-proxy.example.yaml and the keys of the reference; each is
  added to a config that sets every documented key, and the loader either
  names it as an unknown key or accepts it. Dataclass fields that are no keys
  (``Rule.index``, ``BackendSettings.name``, ``Config.source``) fall out that
  way, whatever the loader looks like inside;
- audit fields: :meth:`pgtls_proxy.audit.AuditRecord.fields` with every
  optional field present.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import itertools
import re
import sys
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgtls_proxy import cli
from pgtls_proxy import config as config_mod
from pgtls_proxy.audit import AuditRecord
from pgtls_proxy.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "reference.md"
EXAMPLE = ROOT / "config" / "pgtls-proxy.example.yaml"
# What a ``<name>`` in a key path becomes in a probe: the example's backend.
BACKEND = "main"

# ---------------------------------------------------------------- the reference


def _cells(line: str) -> list[str]:
    """The cells of a Markdown table row; ``\\|`` is a literal bar inside a cell."""
    inner = line.strip().strip("|")
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", inner)]


def tables(text: str) -> dict[str, list[list[str]]]:
    """Rows of every table, by the first cell of its header (lower case)."""
    out: dict[str, list[list[str]]] = {}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if (
            lines[i].lstrip().startswith("|")
            and i + 1 < len(lines)
            and re.fullmatch(r"\s*\|[\s:|-]+\|\s*", lines[i + 1])
        ):
            kind = _cells(lines[i])[0].lower()
            rows = out.setdefault(kind, [])
            i += 2
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            continue
        i += 1
    return out


def _ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]*)`", cell)


def _first_ticked(cell: str, kind: str) -> str:
    found = _ticked(cell)
    assert found, f"a row of the {kind!r} table lacks its backticked name: {cell!r}"
    return found[0]


@pytest.fixture(scope="module")
def reference() -> dict[str, list[list[str]]]:
    return tables(REFERENCE.read_text(encoding="utf-8"))


# ---------------------------------------------------------------- commands


Command = tuple[str, ...]


def parse_synopsis(synopsis: str) -> tuple[Command, set[str], list[str]]:
    """``pgtls-proxy pki revoke DIR CERTFILE [--crl-days N]`` -> command, options, arguments."""
    words = synopsis.replace("[", " ").replace("]", " ").split()
    assert words and words[0] == "pgtls-proxy", f"not a pgtls-proxy synopsis: {synopsis!r}"
    command: list[str] = []
    options: set[str] = set()
    arguments: list[str] = []
    after_option = False
    for word in words[1:]:
        if word.startswith("--"):
            options.add(word)
            after_option = True
        elif word.isupper() or word == "...":
            # An option's value (--days N) is no argument of the command.
            if not after_option and word != "...":
                arguments.append(word)
            after_option = False
        elif not options and not arguments:
            command.append(word)
        else:
            after_option = False  # a choice list such as ec|rsa
    return tuple(command), options, arguments


def code_commands() -> dict[Command, tuple[set[str], list[str]]]:
    """Every command of the argparse tree with its options and positional arguments."""
    out: dict[Command, tuple[set[str], list[str]]] = {}

    def walk(parser: argparse.ArgumentParser, path: Command) -> None:
        options: set[str] = set()
        arguments: list[str] = []
        children: dict[str, argparse.ArgumentParser] = {}
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                children.update(action.choices)
            elif isinstance(action, argparse._HelpAction):
                continue
            elif action.option_strings:
                options.update(s for s in action.option_strings if s.startswith("--"))
            else:
                metavar = action.metavar if isinstance(action.metavar, str) else action.dest
                arguments.append(metavar.upper())
        if not children or options or arguments:
            out[path] = (options, arguments)
        for name, child in children.items():
            walk(child, (*path, name))

    walk(cli.build_parser(), ())
    return out


def test_every_command_is_in_the_reference_and_only_those(
    reference: dict[str, list[list[str]]],
) -> None:
    documented: dict[Command, tuple[set[str], list[str]]] = {}
    for row in reference["command"]:
        command, options, arguments = parse_synopsis(_first_ticked(row[0], "command"))
        assert command not in documented, f"command documented twice: {command}"
        documented[command] = (options, arguments)
    code = code_commands()
    names = {" ".join(("pgtls-proxy", *c)) for c in code}
    doc_names = {" ".join(("pgtls-proxy", *c)) for c in documented}
    assert names - doc_names == set(), "commands missing from docs/reference.md"
    assert doc_names - names == set(), "docs/reference.md lists commands the code lacks"
    for command, (options, arguments) in code.items():
        doc_options, doc_arguments = documented[command]
        where = " ".join(("pgtls-proxy", *command))
        assert options == doc_options, f"{where}: options in code vs reference"
        assert arguments == doc_arguments, f"{where}: arguments in code vs reference"


# ---------------------------------------------------------------- metrics


def _exposed_name(family: Any) -> str:
    """The name a scraper sees: prometheus_client keeps ``_total`` off counter families."""
    return f"{family.name}_total" if family.type == "counter" else str(family.name)


_SAMPLE_SUFFIX_LABELS = {"le", "quantile"}  # histogram buckets, summaries


def code_metrics() -> dict[str, tuple[str, dict[str, set[str]]]]:
    """pgtls_* metric -> (type, {label: pre-created values})."""
    metrics = Metrics()
    metrics.declare_backends([BACKEND])
    out: dict[str, tuple[str, dict[str, set[str]]]] = {}
    for family in metrics.registry.collect():
        name = _exposed_name(family)
        if not name.startswith("pgtls_"):
            continue  # process_* and python_info: prometheus_client's own
        labels: dict[str, set[str]] = {}
        for sample in family.samples:
            for label, value in sample.labels.items():
                if label not in _SAMPLE_SUFFIX_LABELS:
                    labels.setdefault(label, set()).add(value)
        out[name] = (family.type, labels)
    return out


def parse_labels(cell: str) -> dict[str, set[str] | None]:
    """Label name -> its listed values, or None for a label with open values (``backend``)."""
    if cell.strip().lower().startswith("none"):
        return {}
    out: dict[str, set[str] | None] = {}
    for part in cell.split(";"):
        ticked = _ticked(part)
        if not ticked:
            continue
        name, values = ticked[0], ticked[1:]
        out[name] = set(values) if ":" in part.split(f"`{name}`", 1)[1][:2] else None
    return out


def test_every_metric_is_in_the_reference_and_only_those(
    reference: dict[str, list[list[str]]],
) -> None:
    documented = {_first_ticked(row[0], "metric"): row for row in reference["metric"]}
    code = code_metrics()
    assert set(code) - set(documented) == set(), "metrics missing from docs/reference.md"
    assert set(documented) - set(code) == set(), "docs/reference.md lists metrics the code lacks"
    for name, (kind, labels) in code.items():
        row = documented[name]
        assert row[1].strip().lower() == kind, f"{name}: type in code is {kind}, not {row[1]}"
        doc_labels = parse_labels(row[2])
        if labels or not doc_labels:  # no children yet (issuer): names unknowable
            assert set(labels) == set(doc_labels), f"{name}: label names"
        for label, values in doc_labels.items():
            if values is not None:
                assert labels.get(label) == values, f"{name}: values of label {label!r}"


# ---------------------------------------------------------------- config keys


def _unwrap(hint: Any) -> Any:
    """``X | None`` -> X."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


def _as_yaml(value: Any) -> Any:
    """A dataclass default as it would be written in the file."""
    if isinstance(value, tuple):
        return [_as_yaml(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)  # Path, HostPort


def _hints(cls: type) -> dict[str, Any]:
    """Field types; one that does not evaluate (a library's generic alias) counts as a leaf."""
    try:
        return typing.get_type_hints(cls)
    except (NameError, TypeError):
        namespace = vars(sys.modules[cls.__module__])
        out: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            try:
                out[f.name] = eval(f.type, namespace) if isinstance(f.type, str) else f.type
            except (NameError, TypeError):
                out[f.name] = Any
        return out


def dataclass_keys(cls: type, prefix: str = "") -> Iterator[tuple[str, list[Any]]]:
    """(key path, values to try) the config dataclasses suggest; not every field is a key."""
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        hint = _unwrap(hints[f.name])
        path = f"{prefix}.{f.name}" if prefix else f.name
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        values: list[Any] = []
        if f.default is not dataclasses.MISSING:
            values.append(_as_yaml(f.default))
        if dataclasses.is_dataclass(hint):
            yield path, values
            yield from dataclass_keys(typing.cast(type, hint), path)
        elif origin is tuple and args and dataclasses.is_dataclass(args[0]):
            yield from dataclass_keys(typing.cast(type, args[0]), f"{path}[]")
        elif isinstance(origin, type) and issubclass(origin, Mapping):
            if dataclasses.is_dataclass(args[1]):
                yield from dataclass_keys(typing.cast(type, args[1]), f"{path}.<name>")
        else:
            yield path, values


def yaml_keys(data: Any, prefix: str = "") -> Iterator[str]:
    """Key paths of a parsed config file, in the reference's notation."""
    if isinstance(data, dict):
        for key, value in data.items():
            name = "<name>" if prefix == "backends" else str(key)
            path = f"{prefix}.{name}" if prefix else name
            yield path
            yield from yaml_keys(value, path)
    elif isinstance(data, list):
        for item in data:
            yield from yaml_keys(item, f"{prefix}[]")


_STEP = re.compile(r"([^.\[\]]+)(\[\])?")


def _steps(path: str) -> list[str | int]:
    """``rules[].user`` -> ["rules", 0, "user"]; ``<name>`` -> the example's backend."""
    out: list[str | int] = []
    for part in path.split("."):
        m = _STEP.fullmatch(part)
        assert m is not None, f"not a key path: {path!r}"
        out.append(BACKEND if m.group(1) == "<name>" else m.group(1))
        if m.group(2):
            out.append(0)
    return out


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    steps = _steps(path)
    node: Any = data
    for step, following in itertools.pairwise(steps):
        empty: Any = [] if isinstance(following, int) else {}
        if isinstance(step, int):
            while len(node) <= step:
                node.append(empty)
            if not isinstance(node[step], dict | list):
                node[step] = empty
            node = node[step]
        else:
            if not isinstance(node.get(step), dict | list):
                node[step] = empty
            node = node[step]
    node[steps[-1]] = value


def _delete(data: dict[str, Any], path: str) -> None:
    steps = _steps(path)
    node: Any = data
    for step in steps[:-1]:
        node = node[step]
    node.pop(steps[-1], None)


def _default(cell: str) -> tuple[bool, Any]:
    """(True, value) for a backticked YAML default; (False, None) for prose such as 'required'."""
    if not cell.startswith("`"):
        return False, None
    return True, yaml.safe_load(_first_ticked(cell, "key"))


def _load(data: dict[str, Any], directory: Path) -> config_mod.Config:
    path = directory / "pgtls-proxy.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return config_mod.load_config(path)


def _unknown(exc: config_mod.ConfigError) -> bool:
    return "unknown key" in exc.message


def _concrete(path: str) -> str:
    """The ConfigError key the loader uses for a path: ``rules[0].user``, ``backends.main``."""
    return path.replace("[]", "[0]").replace("<name>", BACKEND)


@pytest.fixture(scope="module")
def documented_keys(reference: dict[str, list[list[str]]]) -> dict[str, str]:
    """Key path -> its default cell."""
    rows = reference["key"]
    out = {_first_ticked(row[0], "key"): row[1] for row in rows}
    assert len(out) == len(rows), "a key documented twice"
    return out


def _leaves(keys: set[str]) -> set[str]:
    return {k for k in keys if not any(o.startswith((k + ".", k + "[")) for o in keys)}


@pytest.fixture(scope="module")
def maximal(documented_keys: dict[str, str]) -> dict[str, Any]:
    """The example config with every documented leaf key set (its default, or the example's)."""
    data = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    present = set(yaml_keys(data))
    for key in sorted(_leaves(set(documented_keys))):
        if key in present:
            continue
        has_default, value = _default(documented_keys[key])
        _set(data, key, value if has_default else "placeholder")
    assert isinstance(data, dict)
    return data


def test_a_config_with_every_documented_key_loads(maximal: dict[str, Any], tmp_path: Path) -> None:
    """Each key of the reference is one the loader accepts (an unknown one would be named)."""
    _load(maximal, tmp_path)


def test_every_config_key_is_in_the_reference_and_only_those(
    documented_keys: dict[str, str], maximal: dict[str, Any], tmp_path: Path
) -> None:
    # The probe depends on the loader naming unknown keys; make sure it still does.
    bogus = copy.deepcopy(maximal)
    _set(bogus, "tls.no_such_key", 1)
    with pytest.raises(config_mod.ConfigError) as caught:
        _load(bogus, tmp_path)
    assert _unknown(caught.value) and caught.value.key == "tls.no_such_key", caught.value

    example_keys = set(yaml_keys(yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))))
    candidates: dict[str, list[Any]] = {key: [] for key in example_keys | set(documented_keys)}
    for key, values in dataclass_keys(config_mod.Config):
        candidates.setdefault(key, []).extend(values)
    present = set(yaml_keys(maximal))
    accepted = {key for key in candidates if key in present}
    for key in sorted(set(candidates) - present):
        # A key is accepted when some value loads, or is refused for that key
        # itself; a field that is no key is named unknown (or, below a scalar
        # such as an address, makes its parent wrong).
        for value in [*candidates[key], "probe", 1, True]:
            data = copy.deepcopy(maximal)
            _set(data, key, value)
            try:
                _load(data, tmp_path)
            except config_mod.ConfigError as exc:
                if exc.key != _concrete(key) or _unknown(exc):
                    continue
            accepted.add(key)
            break
    code = _leaves(accepted)
    doc = _leaves(set(documented_keys))
    assert code - doc == set(), "config keys missing from docs/reference.md"
    assert doc - code == set(), "docs/reference.md lists config keys the loader refuses"


def _value_at(config: Any, path: str) -> Any:
    node = config
    for step in _steps(path):
        node = (
            node[step]
            if isinstance(step, int) or isinstance(node, Mapping)
            else getattr(node, step)
        )
    return node


def test_documented_defaults_are_what_the_loader_gives(
    documented_keys: dict[str, str], maximal: dict[str, Any], tmp_path: Path
) -> None:
    """Leaving a key out and writing its documented default give the same setting."""
    checked = 0
    for key, cell in sorted(documented_keys.items()):
        has_default, value = _default(cell)
        if not has_default or key not in _leaves(set(documented_keys)):
            continue
        if key.startswith("metrics.tls."):
            continue  # no default inside: the section is all or nothing
        written = copy.deepcopy(maximal)
        _set(written, key, value)
        left_out = copy.deepcopy(maximal)
        _delete(left_out, key)
        loader_default = _value_at(_load(left_out, tmp_path), key)
        documented = _value_at(_load(written, tmp_path), key)
        assert loader_default == documented, f"{key}: the documented default is not the loader's"
        checked += 1
    assert checked >= 30


# ---------------------------------------------------------------- audit record


def test_every_audit_field_is_in_the_reference_and_only_those(
    reference: dict[str, list[list[str]]],
) -> None:
    record = AuditRecord(session="0", client_addr="127.0.0.1:1", error="e", backend_reused=True)
    code = set(record.fields())
    documented = {_first_ticked(row[0], "field") for row in reference["field"]}
    assert code - documented == set(), "audit fields missing from docs/reference.md"
    assert documented - code == set(), "docs/reference.md lists audit fields the code lacks"
