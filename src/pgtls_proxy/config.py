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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pgtls_proxy.addresses import host_port
from pgtls_proxy.pki.rules import IdentityPattern, PatternError, check_template, compile_identity

DEFAULT_CONFIG_PATH = "/etc/pgtls-proxy/pgtls-proxy.yaml"
IDENTITY_FIELDS = ("cn", "san_dns", "san_email", "san_uri", "subject")
REVOCATION_MODES = ("strict", "lenient", "off")
BACKEND_TLS_MODES = ("disable", "require", "verify-ca", "verify-full")
LOG_LEVELS = ("debug", "info", "warning", "error")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """A configuration problem, tied to the key path it concerns."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


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

T = TypeVar("T")


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


def _check_keys(data: Mapping[str, Any], allowed: tuple[str, ...], key: str) -> None:
    for k in data:
        if k not in allowed:
            raise ConfigError(_join(key, k), "unknown key")


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


def _listen(value: Any) -> tuple[ListenSettings, ...]:
    if value is None:
        value = [{"address": "0.0.0.0:6432"}]
    if not isinstance(value, list) or not value:
        raise ConfigError("listen", "must be a non-empty list")
    out = []
    for i, item in enumerate(value):
        key = f"listen[{i}]"
        data = _mapping(item, key)
        _check_keys(data, _LISTEN_KEYS, key)
        if "address" not in data:
            raise ConfigError(f"{key}.address", "is required")
        out.append(
            ListenSettings(
                address=parse_host_port(data["address"], f"{key}.address"),
                proxy_protocol=_bool(data.get("proxy_protocol", False), f"{key}.proxy_protocol"),
            )
        )
    return tuple(out)


def _tls(value: Any, base: Path) -> TLSSettings:
    data = _mapping(value, "tls")
    _check_keys(data, _TLS_KEYS, "tls")
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


def _identity(value: Any) -> IdentitySettings:
    data = _mapping(value, "identity")
    _check_keys(data, _IDENTITY_KEYS, "identity")
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


def _rules(value: Any, backends: Mapping[str, BackendSettings]) -> tuple[Rule, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ConfigError("rules", "must be a list")
    out = []
    for i, item in enumerate(value):
        key = f"rules[{i}]"
        data = _mapping(item, key)
        _check_keys(data, _RULE_KEYS, key)
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
        out.append(
            Rule(
                index=i,
                identity=identity,
                identity_regex=regex,
                user=user,
                databases=_str_list(data.get("databases", ["*"]), f"{key}.databases"),
                sources=tuple(_network(v, f"{key}.sources[{j}]") for j, v in enumerate(sources)),
                action=action,
                backend=backend,
            )
        )
    return tuple(out)


def _backend(name: str, value: Any, base: Path) -> BackendSettings:
    key = f"backends.{name}"
    data = _mapping(value, key)
    _check_keys(data, _BACKEND_KEYS, key)
    if "address" not in data:
        raise ConfigError(f"{key}.address", "is required")
    tls_data = _mapping(data.get("tls"), f"{key}.tls")
    _check_keys(tls_data, _BACKEND_TLS_KEYS, f"{key}.tls")
    auth_data = _mapping(data.get("auth"), f"{key}.auth")
    _check_keys(auth_data, _BACKEND_AUTH_KEYS, f"{key}.auth")
    pool_data = _mapping(data.get("pool"), f"{key}.pool")
    _check_keys(pool_data, _BACKEND_POOL_KEYS, f"{key}.pool")

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


def _metrics_tls(value: Any, base: Path) -> MetricsTLSSettings | None:
    if value is None:
        return None
    data = _mapping(value, "metrics.tls")
    keys = ("cert_file", "key_file", "client_ca_file")
    _check_keys(data, keys, "metrics.tls")
    for required in keys:
        if data.get(required) is None:
            raise ConfigError(f"metrics.tls.{required}", "is required")
    return MetricsTLSSettings(
        *(_path(data[k], f"metrics.tls.{k}", base) for k in keys)  # order of the fields
    )


def _section(data: Mapping[str, Any], name: str, keys: tuple[str, ...]) -> dict[str, Any]:
    section = _mapping(data.get(name), name)
    _check_keys(section, keys, name)
    return section


def build_config(data: Any, base: Path, source: Path | None = None) -> Config:
    """Validate a parsed YAML document; relative paths resolve against ``base``."""
    top = _mapping(data, "")
    _check_keys(top, _TOP_KEYS, "")
    backends_data = _mapping(top.get("backends"), "backends")
    if not backends_data:
        raise ConfigError("backends", "at least one backend is required")
    backends = {name: _backend(name, v, base) for name, v in backends_data.items()}

    metrics = _section(top, "metrics", ("address", "tls"))
    logging_ = _section(top, "logging", ("level", "format", "audit"))
    limits = _section(
        top,
        "limits",
        (
            "max_connections",
            "startup_timeout",
            "plaintext_cancel",
            "max_pending",
            "per_source_pending",
        ),
    )
    shutdown = _section(top, "shutdown", ("drain_timeout",))
    metrics_address: HostPort | None = HostPort("127.0.0.1", 9187)
    if "address" in metrics:
        metrics_address = _optional(metrics["address"], "metrics.address", parse_host_port)
    workers = top.get("workers")
    return Config(
        listen=_listen(top.get("listen")),
        tls=_tls(top.get("tls"), base),
        identity=_identity(top.get("identity")),
        rules=_rules(top.get("rules"), backends),
        backends=backends,
        metrics=MetricsSettings(
            address=metrics_address, tls=_metrics_tls(metrics.get("tls"), base)
        ),
        logging=LoggingSettings(
            level=_choice(logging_.get("level", "info"), "logging.level", LOG_LEVELS),
            format=_choice(logging_.get("format", "text"), "logging.format", ("text", "json")),
            audit=_bool(logging_.get("audit", True), "logging.audit"),
        ),
        limits=LimitsSettings(
            max_connections=_int(limits.get("max_connections", 10000), "limits.max_connections"),
            startup_timeout=_number(limits.get("startup_timeout", 10), "limits.startup_timeout"),
            plaintext_cancel=_bool(limits.get("plaintext_cancel", True), "limits.plaintext_cancel"),
            max_pending=_int(limits.get("max_pending", 1024), "limits.max_pending"),
            per_source_pending=_int(
                limits.get("per_source_pending", 128), "limits.per_source_pending"
            ),
        ),
        shutdown=ShutdownSettings(
            drain_timeout=_number(
                shutdown.get("drain_timeout", 30), "shutdown.drain_timeout", positive=False
            )
        ),
        workers=_int(workers, "workers") if workers is not None else (os.cpu_count() or 1),
        source=source,
    )


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a config file; raise ConfigError with the key path."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {p}: {exc.strerror}") from None
    return config_from_bytes(data, p)


def config_from_bytes(raw: bytes, p: Path) -> Config:
    """Validate the content of the config file ``p`` (read earlier, or kept in memory)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("", f"{p}: not UTF-8 text") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError("", f"{p}: invalid YAML{where}") from None
    return build_config(data, p.resolve().parent, source=p.resolve())


def default_config_path() -> str:
    return os.environ.get("PGTLS_PROXY_CONFIG") or DEFAULT_CONFIG_PATH
