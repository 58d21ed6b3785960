"""YAML configuration -> frozen, typed settings.

Every error carries the dotted key path it concerns (``tls.key_file``,
``rules[2].identity``) so an operator can go straight to the line.

The dataclasses below are the schema, stated once: a section's keys are the
fields of its dataclass (:func:`_keys`), a key left out takes the field's
default (:func:`_value`), a key without a default is required, and a value
from a fixed set is a ``Literal`` type whose members are the accepted
spellings. The parser adds what a type cannot say (ranges, ``/regex/``
identities, cross-key rules) with explicit checks and exact messages. No
schema library: a handful of sections with simple value types does not
justify one, and none gives these key-path messages as they are.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import MISSING, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any, Literal, ParamSpec, TypeVar, cast, get_args

import yaml

from pgtls_proxy.addresses import host_port
from pgtls_proxy.errors import KeyPathError
from pgtls_proxy.pki.rules import IPNetwork, PatternError, check_template, compile_identity
from pgtls_proxy.pki.rules import Rule as Rule  # the rules' schema lives with their evaluation
from pgtls_proxy.pki.rules import RuleAction as RuleAction

DEFAULT_CONFIG_PATH = "/etc/pgtls-proxy/pgtls-proxy.yaml"

# The values a setting may take, in the order error messages list them.
IdentityField = Literal["cn", "san_dns", "san_email", "san_uri", "subject"]
OnUserMismatch = Literal["reject", "rewrite"]
RevocationMode = Literal["strict", "lenient", "off"]
TLSVersion = Literal["1.2", "1.3"]
BackendTLSMode = Literal["disable", "require", "verify-ca", "verify-full"]
LogLevel = Literal["debug", "info", "warning", "error"]
LogFormat = Literal["text", "json"]
IDENTITY_FIELDS: tuple[IdentityField, ...] = get_args(IdentityField)
REVOCATION_MODES: tuple[RevocationMode, ...] = get_args(RevocationMode)
BACKEND_TLS_MODES: tuple[BackendTLSMode, ...] = get_args(BackendTLSMode)
LOG_LEVELS: tuple[LogLevel, ...] = get_args(LogLevel)

T = TypeVar("T")
P = ParamSpec("P")


class ConfigError(KeyPathError):
    """A problem in the config file itself, tied to the key path it concerns."""


class _Problems:
    """Where the parser puts a problem: raised at once (``run``), or collected (``check``).

    Collecting, an unknown key is noted and parsing goes on; a bad value
    stops only its section (or its rule, backend or listener), which is then
    marked broken so ``check`` skips the file checks that would read it.
    """

    def __init__(self, *, collect: bool) -> None:
        self.collect = collect
        self.errors: list[ConfigError] = []
        self.broken: set[str] = set()

    def unknown_key(self, key: str) -> None:
        error = ConfigError(key, "unknown key")
        if not self.collect:
            raise error
        self.errors.append(error)

    def section(
        self, name: str, fallback: T, parse: Callable[P, T], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """``parse(...)``; when collecting and it fails, ``fallback``, with ``name`` broken."""
        if not self.collect:
            return parse(*args, **kwargs)
        try:
            return parse(*args, **kwargs)
        except ConfigError as exc:
            self.errors.append(exc)
            self.broken.add(name)
            return fallback


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return host_port(self.host, self.port)


@dataclass(frozen=True, slots=True)
class ListenSettings:
    address: HostPort
    proxy_protocol: bool = False


@dataclass(frozen=True, slots=True)
class TLSSettings:
    cert_file: Path
    key_file: Path
    client_ca_file: Path
    key_passphrase_file: Path | None = None
    crl_files: tuple[Path, ...] = ()
    crl_dir: Path | None = None
    revocation: RevocationMode = "strict"
    min_version: TLSVersion = "1.2"
    ciphers: str | None = None
    handshake_timeout: float = 10.0
    direct_ssl: bool = True


@dataclass(frozen=True, slots=True)
class IdentitySettings:
    field: IdentityField = "cn"
    on_user_mismatch: OnUserMismatch = "reject"


@dataclass(frozen=True, slots=True)
class BackendTLSSettings:
    mode: BackendTLSMode = "disable"
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    server_name: str | None = None


@dataclass(frozen=True, slots=True)
class BackendAuthSettings:
    passwords_file: Path | None = None
    allow_cleartext_over_plaintext: bool = False


@dataclass(frozen=True, slots=True)
class BackendPoolSettings:
    """Backend sessions kept for reuse (per worker); size 0 turns reuse off."""

    size: int = 0
    idle_timeout: float = 60.0
    # Sessions older than this are closed rather than kept again, so changes
    # to a role (NOLOGIN, ALTER ROLE ... SET) reach every client in time.
    max_lifetime: float = 3600.0


@dataclass(frozen=True, slots=True)
class BackendSettings:
    name: str
    address: HostPort
    databases: tuple[str, ...] = ("*",)
    tls: BackendTLSSettings = field(default_factory=BackendTLSSettings)
    auth: BackendAuthSettings = field(default_factory=BackendAuthSettings)
    connect_timeout: float = 5.0
    pool: BackendPoolSettings = field(default_factory=BackendPoolSettings)


@dataclass(frozen=True, slots=True)
class MetricsTLSSettings:
    """TLS for the metrics endpoint, with client certificates from ``client_ca_file``."""

    cert_file: Path
    key_file: Path
    client_ca_file: Path


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    address: HostPort | None = HostPort("127.0.0.1", 9187)
    tls: MetricsTLSSettings | None = None


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    level: LogLevel = "info"
    format: LogFormat = "text"
    audit: bool = True


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    max_connections: int = 10000
    startup_timeout: float = 10.0
    plaintext_cancel: bool = True
    # Connections not yet sessions (TLS and startup not done), per worker.
    max_pending: int = 1024
    per_source_pending: int = 128


@dataclass(frozen=True, slots=True)
class ShutdownSettings:
    drain_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class Config:
    listen: tuple[ListenSettings, ...]
    tls: TLSSettings
    identity: IdentitySettings
    rules: tuple[Rule, ...]
    backends: Mapping[str, BackendSettings]
    metrics: MetricsSettings
    logging: LoggingSettings
    limits: LimitsSettings
    shutdown: ShutdownSettings
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    # The file this came from (not a key).
    source: Path | None = None


# ---------------------------------------------------------------- parsing helpers


def _mapping(value: Any, key: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(key or "(top level)", "must be a mapping")
    for k in value:
        if not isinstance(k, str):
            raise ConfigError(_join(key, str(k)), "keys must be strings")
    return value


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _keys(cls: type[Any]) -> tuple[str, ...]:
    """The keys of the section ``cls`` describes: its fields, less those derived."""
    return tuple(f.name for f in fields(cls) if f.name not in _NOT_KEYS)


# Fields the parser fills in itself, never read from the file.
_NOT_KEYS = frozenset({"index", "identity_regex", "name", "source"})


def _default(cls: type[Any], name: str) -> Any:
    """The default of the field ``name`` of ``cls`` (a required field has none)."""
    (found,) = (f for f in fields(cls) if f.name == name)
    if found.default_factory is not MISSING:
        return found.default_factory()
    assert found.default is not MISSING, f"{cls.__name__}.{name} is required"
    return found.default


def _value(
    data: Mapping[str, Any], cls: type[Any], prefix: str, name: str, conv: Callable[[Any, str], T]
) -> T:
    """``conv`` of the value at ``prefix.name``; when absent, the default of ``cls.name``.

    A key present with an empty value (``null``) is converted, not defaulted:
    whether that means "none" is for ``conv`` to say.
    """
    if name in data:
        return conv(data[name], _join(prefix, name))
    return cast(T, _default(cls, name))


def _check_keys(
    data: Mapping[str, Any], allowed: tuple[str, ...], key: str, problems: _Problems
) -> None:
    for k in data:
        if k not in allowed:
            problems.unknown_key(_join(key, k))


def _bool(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(key, f"must be true or false, not {value!r}")
    return value


def _number(value: Any, key: str, *, minimum: float = 0.0, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise ConfigError(key, f"must be a number of seconds, not {value!r}")
    if positive and value <= 0:
        raise ConfigError(key, f"must be greater than 0, not {value!r}")
    if value < minimum:
        raise ConfigError(key, f"must be at least {minimum:g}, not {value!r}")
    return float(value)


def _int(value: Any, key: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(key, f"must be an integer, not {value!r}")
    if value < minimum:
        raise ConfigError(key, f"must be at least {minimum}, not {value!r}")
    return value


def _str(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(key, f"must be a non-empty string, not {value!r}")
    return value


S = TypeVar("S", bound=str)


def _choice(value: Any, key: str, choices: tuple[S, ...]) -> S:
    for choice in choices:
        if value == choice:
            return choice
    raise ConfigError(key, f"must be one of {', '.join(choices)}, not {value!r}")


def _one_of(choices: tuple[S, ...]) -> Callable[[Any, str], S]:
    return partial(_choice, choices=choices)


def _str_list(value: Any, key: str) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ConfigError(key, "must be a list")
    return tuple(_str(v, f"{key}[{i}]") for i, v in enumerate(value))


def _path(value: Any, key: str, base: Path) -> Path:
    p = Path(os.path.expanduser(_str(value, key)))
    return p if p.is_absolute() else base / p


def _optional(value: Any, key: str, conv: Callable[[Any, str], T]) -> T | None:
    return None if value is None else conv(value, key)


def parse_host_port(value: Any, key: str) -> HostPort:
    """Parse ``host:port`` or ``[v6]:port``."""
    text = _str(value, key)
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not host or not rest.startswith(":"):
            raise ConfigError(key, f"must be host:port or [ipv6]:port, not {text!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or not host or ":" in host:
            raise ConfigError(key, f"must be host:port or [ipv6]:port, not {text!r}")
    if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) <= 65535:
        raise ConfigError(key, f"has an invalid port in {text!r}")
    return HostPort(host, int(port_text))


# ---------------------------------------------------------------- sections


def _require(data: Mapping[str, Any], cls: type[Any], prefix: str, *, null: bool = False) -> None:
    """The keys of ``cls`` without a default must be there (and, with ``null``, not null)."""
    for f in fields(cls):
        if f.name in _NOT_KEYS or f.default is not MISSING or f.default_factory is not MISSING:
            continue
        if f.name not in data or (null and data[f.name] is None):
            raise ConfigError(_join(prefix, f.name), "is required")


def _optional_of(conv: Callable[[Any, str], T]) -> Callable[[Any, str], T | None]:
    """``conv``, letting an empty value (``null``) through as None."""
    return lambda value, key: _optional(value, key, conv)


def _paths(value: Any, key: str, base: Path) -> tuple[Path, ...]:
    """A list of paths; an empty value is an empty list."""
    value = value or []
    if not isinstance(value, list):
        raise ConfigError(key, "must be a list")
    return tuple(_path(v, f"{key}[{i}]", base) for i, v in enumerate(value))


def _revocation(value: Any, key: str) -> RevocationMode:
    if value is False:
        # YAML 1.1 reads an unquoted `off` as false.
        value = "off"
    return _choice(value, key, REVOCATION_MODES)


def _min_version(value: Any, key: str) -> TLSVersion:
    if isinstance(value, float):
        # Unquoted `1.2` in YAML is a float; repr keeps 1.25 from passing as "1.2".
        value = repr(value)
    return _choice(value, key, get_args(TLSVersion))


def _networks(value: Any, key: str) -> tuple[IPNetwork, ...]:
    if not isinstance(value, list):
        raise ConfigError(key, "must be a list")
    return tuple(_network(v, f"{key}[{j}]") for j, v in enumerate(value))


def _listen(value: Any, problems: _Problems) -> tuple[ListenSettings, ...]:
    if value is None:
        return (ListenSettings(HostPort("0.0.0.0", 6432)),)
    if not isinstance(value, list) or not value:
        raise ConfigError("listen", "must be a non-empty list")
    out = (
        problems.section("listen", None, _listener, i, item, problems)
        for i, item in enumerate(value)
    )
    return tuple(item for item in out if item is not None)


def _listener(i: int, item: Any, problems: _Problems) -> ListenSettings:
    key = f"listen[{i}]"
    data = _mapping(item, key)
    _check_keys(data, _keys(ListenSettings), key, problems)
    _require(data, ListenSettings, key)
    return ListenSettings(
        address=parse_host_port(data["address"], f"{key}.address"),
        proxy_protocol=_value(data, ListenSettings, key, "proxy_protocol", _bool),
    )


def _tls(value: Any, base: Path, problems: _Problems) -> TLSSettings:
    data = _mapping(value, "tls")
    _check_keys(data, _keys(TLSSettings), "tls", problems)
    _require(data, TLSSettings, "tls", null=True)
    path = partial(_path, base=base)

    def get(name: str, conv: Callable[[Any, str], T]) -> T:
        return _value(data, TLSSettings, "tls", name, conv)

    return TLSSettings(
        cert_file=get("cert_file", path),
        key_file=get("key_file", path),
        client_ca_file=get("client_ca_file", path),
        key_passphrase_file=get("key_passphrase_file", _optional_of(path)),
        crl_files=get("crl_files", partial(_paths, base=base)),
        crl_dir=get("crl_dir", _optional_of(path)),
        revocation=get("revocation", _revocation),
        min_version=get("min_version", _min_version),
        ciphers=get("ciphers", _optional_of(_str)),
        handshake_timeout=get("handshake_timeout", _number),
        direct_ssl=get("direct_ssl", _bool),
    )


def _identity(value: Any, problems: _Problems) -> IdentitySettings:
    data = _mapping(value, "identity")
    _check_keys(data, _keys(IdentitySettings), "identity", problems)
    return IdentitySettings(
        field=_value(data, IdentitySettings, "identity", "field", _one_of(IDENTITY_FIELDS)),
        on_user_mismatch=_value(
            data,
            IdentitySettings,
            "identity",
            "on_user_mismatch",
            _one_of(get_args(OnUserMismatch)),
        ),
    )


def _network(value: Any, key: str) -> IPNetwork:
    text = _str(value, key)
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ConfigError(key, f"is not an address or CIDR: {text!r}") from None


def _rules(value: Any, backends: Collection[str], problems: _Problems) -> tuple[Rule, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError("rules", "must be a list")
    out = (
        problems.section("rules", None, _rule, i, item, backends, problems)
        for i, item in enumerate(value)
    )
    return tuple(rule for rule in out if rule is not None)


def _rule(i: int, item: Any, backends: Collection[str], problems: _Problems) -> Rule:
    key = f"rules[{i}]"
    data = _mapping(item, key)
    _check_keys(data, _keys(Rule), key, problems)
    _require(data, Rule, key)

    def get(name: str, conv: Callable[[Any, str], T]) -> T:
        return _value(data, Rule, key, name, conv)

    identity = _str(data["identity"], f"{key}.identity")
    try:
        regex = compile_identity(identity)
    except PatternError as exc:
        raise ConfigError(f"{key}.identity", str(exc)) from None
    action = get("action", _one_of(get_args(RuleAction)))
    user = get("user", _optional_of(_str))
    if action == "allow" and user is None:
        raise ConfigError(f"{key}.user", "is required for an allow rule")
    if user is not None:
        try:
            check_template(user, regex.groups if regex is not None else 0)
        except PatternError as exc:
            raise ConfigError(f"{key}.user", str(exc)) from None
    backend = get("backend", _optional_of(_str))
    if backend is not None and backend not in backends:
        raise ConfigError(f"{key}.backend", f"names an unknown backend {backend!r}")
    return Rule(
        index=i,
        identity=identity,
        identity_regex=regex,
        user=user,
        sources=get("sources", _networks),
        databases=get("databases", _str_list),
        action=action,
        backend=backend,
    )


def _backend(name: str, value: Any, base: Path, problems: _Problems) -> BackendSettings:
    key = f"backends.{name}"
    data = _mapping(value, key)
    _check_keys(data, _keys(BackendSettings), key, problems)
    _require(data, BackendSettings, key)
    parts = {}
    for part, cls in (
        ("tls", BackendTLSSettings),
        ("auth", BackendAuthSettings),
        ("pool", BackendPoolSettings),
    ):
        parts[part] = _mapping(data.get(part), f"{key}.{part}")
        _check_keys(parts[part], _keys(cls), f"{key}.{part}", problems)
    path = _optional_of(partial(_path, base=base))

    tls_data = parts["tls"]
    tls = BackendTLSSettings(
        mode=_value(tls_data, BackendTLSSettings, f"{key}.tls", "mode", _one_of(BACKEND_TLS_MODES)),
        ca_file=_value(tls_data, BackendTLSSettings, f"{key}.tls", "ca_file", path),
        cert_file=_value(tls_data, BackendTLSSettings, f"{key}.tls", "cert_file", path),
        key_file=_value(tls_data, BackendTLSSettings, f"{key}.tls", "key_file", path),
        server_name=_value(
            tls_data, BackendTLSSettings, f"{key}.tls", "server_name", _optional_of(_str)
        ),
    )
    if tls.mode in ("verify-ca", "verify-full") and tls.ca_file is None:
        raise ConfigError(f"{key}.tls.ca_file", f"is required with mode {tls.mode}")
    if (tls.cert_file is None) != (tls.key_file is None):
        raise ConfigError(f"{key}.tls.key_file", "cert_file and key_file go together")
    auth = BackendAuthSettings(
        passwords_file=_value(
            parts["auth"], BackendAuthSettings, f"{key}.auth", "passwords_file", path
        ),
        allow_cleartext_over_plaintext=_value(
            parts["auth"],
            BackendAuthSettings,
            f"{key}.auth",
            "allow_cleartext_over_plaintext",
            _bool,
        ),
    )

    def pool(name: str, conv: Callable[[Any, str], T]) -> T:
        return _value(parts["pool"], BackendPoolSettings, f"{key}.pool", name, conv)

    return BackendSettings(
        name=name,
        address=parse_host_port(data["address"], f"{key}.address"),
        databases=_value(data, BackendSettings, key, "databases", _str_list),
        tls=tls,
        auth=auth,
        connect_timeout=_value(data, BackendSettings, key, "connect_timeout", _number),
        pool=BackendPoolSettings(
            size=pool("size", partial(_int, minimum=0)),
            idle_timeout=pool("idle_timeout", _number),
            max_lifetime=pool("max_lifetime", _number),
        ),
    )


def _metrics_tls(value: Any, base: Path, problems: _Problems) -> MetricsTLSSettings | None:
    if value is None:
        return None
    data = _mapping(value, "metrics.tls")
    keys = _keys(MetricsTLSSettings)
    _check_keys(data, keys, "metrics.tls", problems)
    _require(data, MetricsTLSSettings, "metrics.tls", null=True)
    return MetricsTLSSettings(
        *(_path(data[k], f"metrics.tls.{k}", base) for k in keys)  # order of the fields
    )


def _section(
    data: Mapping[str, Any], name: str, cls: type[Any], problems: _Problems
) -> dict[str, Any]:
    section = _mapping(data.get(name), name)
    _check_keys(section, _keys(cls), name, problems)
    return section


def _backends_data(top: Mapping[str, Any]) -> dict[str, Any]:
    backends = _mapping(top.get("backends"), "backends")
    if not backends:
        raise ConfigError("backends", "at least one backend is required")
    return backends


def _metrics(data: Mapping[str, Any], base: Path, problems: _Problems) -> MetricsSettings:
    return MetricsSettings(
        address=_value(data, MetricsSettings, "metrics", "address", _optional_of(parse_host_port)),
        tls=_metrics_tls(data.get("tls"), base, problems),
    )


def _logging(data: Mapping[str, Any]) -> LoggingSettings:
    return LoggingSettings(
        level=_value(data, LoggingSettings, "logging", "level", _one_of(LOG_LEVELS)),
        format=_value(data, LoggingSettings, "logging", "format", _one_of(get_args(LogFormat))),
        audit=_value(data, LoggingSettings, "logging", "audit", _bool),
    )


def _limits(data: Mapping[str, Any]) -> LimitsSettings:
    def get(name: str, conv: Callable[[Any, str], T]) -> T:
        return _value(data, LimitsSettings, "limits", name, conv)

    return LimitsSettings(
        max_connections=get("max_connections", _int),
        startup_timeout=get("startup_timeout", _number),
        plaintext_cancel=get("plaintext_cancel", _bool),
        max_pending=get("max_pending", _int),
        per_source_pending=get("per_source_pending", _int),
    )


def _shutdown(data: Mapping[str, Any]) -> ShutdownSettings:
    return ShutdownSettings(
        drain_timeout=_value(
            data, ShutdownSettings, "shutdown", "drain_timeout", partial(_number, positive=False)
        )
    )


def _workers(top: Mapping[str, Any]) -> int:
    """``workers``; left out or null, one per CPU (the field's default)."""
    workers = _optional(top.get("workers"), "workers", _int)
    return workers if workers is not None else int(_default(Config, "workers"))


# Stands in for a ``tls`` section too broken to read, so ``check`` can go on
# with the other sections; ``tls`` is then marked broken and never used.
_UNUSABLE_TLS = TLSSettings(Path(), Path(), Path())


def build_config(data: Any, base: Path, source: Path | None = None) -> Config:
    """Validate a parsed YAML document; relative paths resolve against ``base``.

    Raises the first problem as :class:`ConfigError`.
    """
    return _build(data, base, source, _Problems(collect=False))


def _build(data: Any, base: Path, source: Path | None, problems: _Problems) -> Config:
    top = _mapping(data, "")
    _check_keys(top, _keys(Config), "", problems)
    backends_data = problems.section("backends", {}, _backends_data, top)
    backends: dict[str, BackendSettings] = {}
    for name, value in backends_data.items():
        backend = problems.section("backends", None, _backend, name, value, base, problems)
        if backend is not None:
            backends[name] = backend
    sections = {
        name: problems.section(name, {}, _section, top, name, cls, problems)
        for name, cls in (
            ("metrics", MetricsSettings),
            ("logging", LoggingSettings),
            ("limits", LimitsSettings),
            ("shutdown", ShutdownSettings),
        )
    }
    return Config(
        listen=problems.section("listen", (), _listen, top.get("listen"), problems),
        tls=problems.section("tls", _UNUSABLE_TLS, _tls, top.get("tls"), base, problems),
        identity=problems.section(
            "identity", IdentitySettings(), _identity, top.get("identity"), problems
        ),
        # The names in the file: a backend too broken to parse is not "unknown".
        rules=problems.section("rules", (), _rules, top.get("rules"), backends_data, problems),
        backends=backends,
        metrics=problems.section(
            "metrics", MetricsSettings(), _metrics, sections["metrics"], base, problems
        ),
        logging=problems.section("logging", LoggingSettings(), _logging, sections["logging"]),
        limits=problems.section("limits", LimitsSettings(), _limits, sections["limits"]),
        shutdown=problems.section("shutdown", ShutdownSettings(), _shutdown, sections["shutdown"]),
        workers=problems.section("workers", 1, _workers, top),
        source=source,
    )


@dataclass(frozen=True, slots=True)
class ConfigReview:
    """Every problem of a config file at once, for ``check``.

    ``config`` is None when the file cannot be read as a mapping at all;
    otherwise a value in a section named in ``broken`` is a stand-in.
    """

    config: Config | None
    errors: tuple[ConfigError, ...]
    broken: frozenset[str]


def review_config(path: str | os.PathLike[str]) -> ConfigReview:
    """Like :func:`load_config`, but collect the problems instead of stopping at the first."""
    p = Path(path)
    problems = _Problems(collect=True)
    try:
        data = _document(_read(p), p)
        config: Config | None = _build(data, p.resolve().parent, p.resolve(), problems)
    except ConfigError as exc:
        problems.errors.append(exc)
        config = None
    return ConfigReview(config, tuple(problems.errors), frozenset(problems.broken))


def _read(p: Path) -> bytes:
    try:
        return p.read_bytes()
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {p}: {exc.strerror}") from None


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file; raise ConfigError with the key path."""
    p = Path(path)
    return config_from_bytes(_read(p), p)


def config_from_bytes(raw: bytes, p: Path) -> Config:
    """Validate the content of the config file ``p`` (read earlier, or kept in memory)."""
    return build_config(_document(raw, p), p.resolve().parent, source=p.resolve())


def _document(raw: bytes, p: Path) -> Any:
    """The YAML document in ``raw``, the content of ``p``."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("", f"{p}: not UTF-8 text") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError("", f"{p}: invalid YAML{where}") from None


def default_config_path() -> str:
    return os.environ.get("PGTLS_PROXY_CONFIG") or DEFAULT_CONFIG_PATH
