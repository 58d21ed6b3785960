"""YAML configuration -> frozen, typed settings.

Every error carries the dotted key path it concerns (``tls.key_file``,
``rules[2].identity``) so an operator can go straight to the line. The schema
is written out by hand: a handful of sections with simple value types does not
justify a schema library, and explicit checks give exact messages.
"""

from __future__ import annotations

import ipaddress
import math
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import yaml

from pgtls_proxy.errors import KeyPathError
from pgtls_proxy.pki.rules import IdentityPattern, PatternError, check_template, compile_identity

DEFAULT_CONFIG_PATH = "/etc/pgtls-proxy/pgtls-proxy.yaml"
IDENTITY_FIELDS = ("cn", "san_dns", "san_email", "san_uri", "subject")
REVOCATION_MODES = ("strict", "lenient", "off")
BACKEND_TLS_MODES = ("disable", "require", "verify-ca", "verify-full")
LOG_LEVELS = ("debug", "info", "warning", "error")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
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
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


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
    revocation: str = "strict"
    min_version: str = "1.2"
    ciphers: str | None = None
    handshake_timeout: float = 10.0
    direct_ssl: bool = True


@dataclass(frozen=True, slots=True)
class IdentitySettings:
    field: str = "cn"
    on_user_mismatch: str = "reject"


@dataclass(frozen=True, slots=True)
class Rule:
    """One line of policy; ``identity`` is the literal text from the file.

    ``identity_regex`` is set when the identity was written ``/regex/``.
    """

    index: int
    identity: str
    identity_regex: IdentityPattern | None
    user: str | None
    databases: tuple[str, ...]
    sources: tuple[IPNetwork, ...]
    action: str
    backend: str | None


@dataclass(frozen=True, slots=True)
class BackendTLSSettings:
    mode: str = "disable"
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
    level: str = "info"
    format: str = "text"
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
    workers: int = 1
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


def _choice(value: Any, key: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(key, f"must be one of {', '.join(choices)}, not {value!r}")
    return str(value)


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

_LISTEN_KEYS = ("address", "proxy_protocol")
_TLS_KEYS = (
    "cert_file",
    "key_file",
    "key_passphrase_file",
    "client_ca_file",
    "crl_files",
    "crl_dir",
    "revocation",
    "min_version",
    "ciphers",
    "handshake_timeout",
    "direct_ssl",
)
_IDENTITY_KEYS = ("field", "on_user_mismatch")
_RULE_KEYS = ("identity", "user", "databases", "sources", "action", "backend")
_BACKEND_KEYS = ("address", "databases", "tls", "auth", "connect_timeout", "pool")
_BACKEND_POOL_KEYS = ("size", "idle_timeout", "max_lifetime")
_BACKEND_TLS_KEYS = ("mode", "ca_file", "cert_file", "key_file", "server_name")
_BACKEND_AUTH_KEYS = ("passwords_file", "allow_cleartext_over_plaintext")
_TOP_KEYS = (
    "listen",
    "tls",
    "identity",
    "rules",
    "backends",
    "metrics",
    "logging",
    "limits",
    "shutdown",
    "workers",
)


_DEFAULT_LISTEN = (ListenSettings(HostPort("0.0.0.0", 6432)),)


def _listen(value: Any, problems: _Problems) -> tuple[ListenSettings, ...]:
    if value is None:
        return _DEFAULT_LISTEN
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
    _check_keys(data, _LISTEN_KEYS, key, problems)
    if "address" not in data:
        raise ConfigError(f"{key}.address", "is required")
    return ListenSettings(
        address=parse_host_port(data["address"], f"{key}.address"),
        proxy_protocol=_bool(data.get("proxy_protocol", False), f"{key}.proxy_protocol"),
    )


def _tls(value: Any, base: Path, problems: _Problems) -> TLSSettings:
    data = _mapping(value, "tls")
    _check_keys(data, _TLS_KEYS, "tls", problems)
    for required in ("cert_file", "key_file", "client_ca_file"):
        if data.get(required) is None:
            raise ConfigError(f"tls.{required}", "is required")
    crl_files = data.get("crl_files") or []
    if not isinstance(crl_files, list):
        raise ConfigError("tls.crl_files", "must be a list")
    min_version = data.get("min_version", "1.2")
    if isinstance(min_version, float):
        # Unquoted `1.2` in YAML is a float; repr keeps 1.25 from passing as "1.2".
        min_version = repr(min_version)
    revocation = data.get("revocation", "strict")
    if revocation is False:
        # YAML 1.1 reads an unquoted `off` as false.
        revocation = "off"
    return TLSSettings(
        cert_file=_path(data["cert_file"], "tls.cert_file", base),
        key_file=_path(data["key_file"], "tls.key_file", base),
        client_ca_file=_path(data["client_ca_file"], "tls.client_ca_file", base),
        key_passphrase_file=_optional(
            data.get("key_passphrase_file"),
            "tls.key_passphrase_file",
            lambda v, k: _path(v, k, base),
        ),
        crl_files=tuple(_path(v, f"tls.crl_files[{i}]", base) for i, v in enumerate(crl_files)),
        crl_dir=_optional(data.get("crl_dir"), "tls.crl_dir", lambda v, k: _path(v, k, base)),
        revocation=_choice(revocation, "tls.revocation", REVOCATION_MODES),
        min_version=_choice(min_version, "tls.min_version", ("1.2", "1.3")),
        ciphers=_optional(data.get("ciphers"), "tls.ciphers", _str),
        handshake_timeout=_number(data.get("handshake_timeout", 10), "tls.handshake_timeout"),
        direct_ssl=_bool(data.get("direct_ssl", True), "tls.direct_ssl"),
    )


def _identity(value: Any, problems: _Problems) -> IdentitySettings:
    data = _mapping(value, "identity")
    _check_keys(data, _IDENTITY_KEYS, "identity", problems)
    return IdentitySettings(
        field=_choice(data.get("field", "cn"), "identity.field", IDENTITY_FIELDS),
        on_user_mismatch=_choice(
            data.get("on_user_mismatch", "reject"),
            "identity.on_user_mismatch",
            ("reject", "rewrite"),
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
    _check_keys(data, _RULE_KEYS, key, problems)
    if "identity" not in data:
        raise ConfigError(f"{key}.identity", "is required")
    identity = _str(data["identity"], f"{key}.identity")
    try:
        regex = compile_identity(identity)
    except PatternError as exc:
        raise ConfigError(f"{key}.identity", str(exc)) from None
    action = _choice(data.get("action", "allow"), f"{key}.action", ("allow", "reject"))
    user = _optional(data.get("user"), f"{key}.user", _str)
    if action == "allow" and user is None:
        raise ConfigError(f"{key}.user", "is required for an allow rule")
    if user is not None:
        try:
            check_template(user, regex.groups if regex is not None else 0)
        except PatternError as exc:
            raise ConfigError(f"{key}.user", str(exc)) from None
    backend = _optional(data.get("backend"), f"{key}.backend", _str)
    if backend is not None and backend not in backends:
        raise ConfigError(f"{key}.backend", f"names an unknown backend {backend!r}")
    sources = data.get("sources", ["0.0.0.0/0", "::/0"])
    if not isinstance(sources, list):
        raise ConfigError(f"{key}.sources", "must be a list")
    return Rule(
        index=i,
        identity=identity,
        identity_regex=regex,
        user=user,
        databases=_str_list(data.get("databases", ["*"]), f"{key}.databases"),
        sources=tuple(_network(v, f"{key}.sources[{j}]") for j, v in enumerate(sources)),
        action=action,
        backend=backend,
    )


def _backend(name: str, value: Any, base: Path, problems: _Problems) -> BackendSettings:
    key = f"backends.{name}"
    data = _mapping(value, key)
    _check_keys(data, _BACKEND_KEYS, key, problems)
    if "address" not in data:
        raise ConfigError(f"{key}.address", "is required")
    tls_data = _mapping(data.get("tls"), f"{key}.tls")
    _check_keys(tls_data, _BACKEND_TLS_KEYS, f"{key}.tls", problems)
    auth_data = _mapping(data.get("auth"), f"{key}.auth")
    _check_keys(auth_data, _BACKEND_AUTH_KEYS, f"{key}.auth", problems)
    pool_data = _mapping(data.get("pool"), f"{key}.pool")
    _check_keys(pool_data, _BACKEND_POOL_KEYS, f"{key}.pool", problems)

    def opt_path(d: Mapping[str, Any], k: str, prefix: str) -> Path | None:
        return _optional(d.get(k), f"{prefix}.{k}", lambda v, kk: _path(v, kk, base))

    tls = BackendTLSSettings(
        mode=_choice(tls_data.get("mode", "disable"), f"{key}.tls.mode", BACKEND_TLS_MODES),
        ca_file=opt_path(tls_data, "ca_file", f"{key}.tls"),
        cert_file=opt_path(tls_data, "cert_file", f"{key}.tls"),
        key_file=opt_path(tls_data, "key_file", f"{key}.tls"),
        server_name=_optional(tls_data.get("server_name"), f"{key}.tls.server_name", _str),
    )
    if tls.mode in ("verify-ca", "verify-full") and tls.ca_file is None:
        raise ConfigError(f"{key}.tls.ca_file", f"is required with mode {tls.mode}")
    if (tls.cert_file is None) != (tls.key_file is None):
        raise ConfigError(f"{key}.tls.key_file", "cert_file and key_file go together")
    auth = BackendAuthSettings(
        passwords_file=opt_path(auth_data, "passwords_file", f"{key}.auth"),
        allow_cleartext_over_plaintext=_bool(
            auth_data.get("allow_cleartext_over_plaintext", False),
            f"{key}.auth.allow_cleartext_over_plaintext",
        ),
    )
    return BackendSettings(
        name=name,
        address=parse_host_port(data["address"], f"{key}.address"),
        databases=_str_list(data.get("databases", ["*"]), f"{key}.databases"),
        tls=tls,
        auth=auth,
        connect_timeout=_number(data.get("connect_timeout", 5), f"{key}.connect_timeout"),
        pool=BackendPoolSettings(
            size=_int(pool_data.get("size", 0), f"{key}.pool.size", minimum=0),
            idle_timeout=_number(pool_data.get("idle_timeout", 60), f"{key}.pool.idle_timeout"),
            max_lifetime=_number(pool_data.get("max_lifetime", 3600), f"{key}.pool.max_lifetime"),
        ),
    )


def _metrics_tls(value: Any, base: Path, problems: _Problems) -> MetricsTLSSettings | None:
    if value is None:
        return None
    data = _mapping(value, "metrics.tls")
    keys = ("cert_file", "key_file", "client_ca_file")
    _check_keys(data, keys, "metrics.tls", problems)
    for required in keys:
        if data.get(required) is None:
            raise ConfigError(f"metrics.tls.{required}", "is required")
    return MetricsTLSSettings(
        *(_path(data[k], f"metrics.tls.{k}", base) for k in keys)  # order of the fields
    )


def _section(
    data: Mapping[str, Any], name: str, keys: tuple[str, ...], problems: _Problems
) -> dict[str, Any]:
    section = _mapping(data.get(name), name)
    _check_keys(section, keys, name, problems)
    return section


def _backends_data(top: Mapping[str, Any]) -> dict[str, Any]:
    backends = _mapping(top.get("backends"), "backends")
    if not backends:
        raise ConfigError("backends", "at least one backend is required")
    return backends


def _metrics(data: Mapping[str, Any], base: Path, problems: _Problems) -> MetricsSettings:
    address: HostPort | None = HostPort("127.0.0.1", 9187)
    if "address" in data:
        address = _optional(data["address"], "metrics.address", parse_host_port)
    return MetricsSettings(address=address, tls=_metrics_tls(data.get("tls"), base, problems))


def _logging(data: Mapping[str, Any]) -> LoggingSettings:
    return LoggingSettings(
        level=_choice(data.get("level", "info"), "logging.level", LOG_LEVELS),
        format=_choice(data.get("format", "text"), "logging.format", ("text", "json")),
        audit=_bool(data.get("audit", True), "logging.audit"),
    )


def _limits(data: Mapping[str, Any]) -> LimitsSettings:
    return LimitsSettings(
        max_connections=_int(data.get("max_connections", 10000), "limits.max_connections"),
        startup_timeout=_number(data.get("startup_timeout", 10), "limits.startup_timeout"),
        plaintext_cancel=_bool(data.get("plaintext_cancel", True), "limits.plaintext_cancel"),
        max_pending=_int(data.get("max_pending", 1024), "limits.max_pending"),
        per_source_pending=_int(data.get("per_source_pending", 128), "limits.per_source_pending"),
    )


def _shutdown(data: Mapping[str, Any]) -> ShutdownSettings:
    return ShutdownSettings(
        drain_timeout=_number(
            data.get("drain_timeout", 30), "shutdown.drain_timeout", positive=False
        )
    )


def _workers(value: Any) -> int:
    return _int(value, "workers") if value is not None else (os.cpu_count() or 1)


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
    _check_keys(top, _TOP_KEYS, "", problems)
    backends_data = problems.section("backends", {}, _backends_data, top)
    backends: dict[str, BackendSettings] = {}
    for name, value in backends_data.items():
        backend = problems.section("backends", None, _backend, name, value, base, problems)
        if backend is not None:
            backends[name] = backend
    metrics = problems.section(
        "metrics", {}, _section, top, "metrics", ("address", "tls"), problems
    )
    logging_ = problems.section(
        "logging", {}, _section, top, "logging", ("level", "format", "audit"), problems
    )
    limits = problems.section(
        "limits",
        {},
        _section,
        top,
        "limits",
        (
            "max_connections",
            "startup_timeout",
            "plaintext_cancel",
            "max_pending",
            "per_source_pending",
        ),
        problems,
    )
    shutdown = problems.section(
        "shutdown", {}, _section, top, "shutdown", ("drain_timeout",), problems
    )
    return Config(
        listen=problems.section("listen", _DEFAULT_LISTEN, _listen, top.get("listen"), problems),
        tls=problems.section("tls", _UNUSABLE_TLS, _tls, top.get("tls"), base, problems),
        identity=problems.section(
            "identity", IdentitySettings(), _identity, top.get("identity"), problems
        ),
        # The names in the file: a backend too broken to parse is not "unknown".
        rules=problems.section("rules", (), _rules, top.get("rules"), backends_data, problems),
        backends=backends,
        metrics=problems.section("metrics", MetricsSettings(), _metrics, metrics, base, problems),
        logging=problems.section("logging", LoggingSettings(), _logging, logging_),
        limits=problems.section("limits", LimitsSettings(), _limits, limits),
        shutdown=problems.section("shutdown", ShutdownSettings(), _shutdown, shutdown),
        workers=problems.section("workers", 1, _workers, top.get("workers")),
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
