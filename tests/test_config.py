"""Table tests for the config parser: every error must name its key path."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pgtls_proxy.config import (
    DEFAULT_CONFIG_PATH,
    ConfigError,
    HostPort,
    build_config,
    default_config_path,
    load_config,
)

BASE = Path("/etc/pgtls-proxy")

MINIMAL: dict[str, Any] = {
    "tls": {"cert_file": "server.crt", "key_file": "server.key", "client_ca_file": "ca.crt"},
    "backends": {"main": {"address": "127.0.0.1:5432"}},
    "rules": [{"identity": "alice", "user": "alice"}],
}

Mutation = Callable[[dict[str, Any]], None]


def mutated(mutate: Mutation) -> dict[str, Any]:
    data = copy.deepcopy(MINIMAL)
    mutate(data)
    return data


def error_key(mutate: Mutation) -> str:
    with pytest.raises(ConfigError) as info:
        build_config(mutated(mutate), BASE)
    assert str(info.value).startswith(info.value.key) or not info.value.key
    return info.value.key


def set_in(path: str, value: Any) -> Mutation:
    """Set a dotted path (``backends.main.tls.mode``; ``rules.0.user``) in the document."""

    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def delete(path: str) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        del node[last]

    return mutate


def chain(*mutations: Mutation) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        for m in mutations:
            m(data)

    return mutate


def test_minimal_config() -> None:
    cfg = build_config(copy.deepcopy(MINIMAL), BASE)
    assert cfg.tls.cert_file == BASE / "server.crt"
    assert cfg.tls.key_file == BASE / "server.key"
    assert cfg.tls.client_ca_file == BASE / "ca.crt"
    assert cfg.tls.revocation == "strict"
    assert cfg.tls.min_version == "1.2"
    assert cfg.tls.handshake_timeout == 10.0
    assert cfg.tls.direct_ssl is True
    assert [str(x.address) for x in cfg.listen] == ["0.0.0.0:6432"]
    assert cfg.identity.field == "cn"
    assert cfg.identity.on_user_mismatch == "reject"
    assert list(cfg.backends) == ["main"]
    main = cfg.backends["main"]
    assert main.address == HostPort("127.0.0.1", 5432)
    assert main.databases == ("*",)
    assert main.tls.mode == "disable"
    assert main.connect_timeout == 5.0
    assert (main.pool.size, main.pool.idle_timeout, main.pool.max_lifetime) == (0, 60.0, 3600.0)
    (rule,) = cfg.rules
    assert (rule.index, rule.identity, rule.identity_regex, rule.user) == (
        0,
        "alice",
        None,
        "alice",
    )
    assert rule.databases == ("*",)
    assert [str(n) for n in rule.sources] == ["0.0.0.0/0", "::/0"]
    assert (rule.action, rule.backend) == ("allow", None)
    assert cfg.metrics.address == HostPort("127.0.0.1", 9187)
    assert (cfg.logging.level, cfg.logging.format, cfg.logging.audit) == ("info", "text", True)
    assert cfg.limits.max_connections == 10000
    assert cfg.limits.plaintext_cancel is True
    assert cfg.shutdown.drain_timeout == 30.0


def test_full_config() -> None:
    data = {
        "listen": [
            {"address": "0.0.0.0:6432", "proxy_protocol": False},
            {"address": "[::]:6433", "proxy_protocol": True},
        ],
        "tls": {
            "cert_file": "server.crt",
            "key_file": "server.key",
            "key_passphrase_file": "pass.txt",
            "client_ca_file": "/abs/ca.crt",
            "crl_files": ["a.crl", "/abs/b.crl"],
            "crl_dir": "crls",
            "revocation": "lenient",
            "min_version": "1.3",
            "ciphers": "HIGH",
            "handshake_timeout": 2.5,
            "direct_ssl": False,
        },
        "identity": {"field": "san_email", "on_user_mismatch": "rewrite"},
        "rules": [
            {
                "identity": r"/(\w+)@example\.com/",
                "user": r"\1",
                "databases": ["app", "reports"],
                "sources": ["10.0.0.0/8", "2001:db8::/32", "192.168.1.7"],
                "action": "allow",
                "backend": "replica",
            },
            {"identity": "mallory", "action": "reject"},
        ],
        "backends": {
            "main": {"address": "db1:5432"},
            "replica": {
                "address": "[2001:db8::1]:5433",
                "databases": ["reports"],
                "tls": {
                    "mode": "verify-full",
                    "ca_file": "backend-ca.crt",
                    "cert_file": "proxy.crt",
                    "key_file": "proxy.key",
                    "server_name": "db2.example.com",
                },
                "auth": {"passwords_file": "userlist.txt"},
                "connect_timeout": 1,
            },
        },
        "metrics": {"address": None},
        "logging": {"level": "debug", "format": "json", "audit": False},
        "limits": {"max_connections": 5, "startup_timeout": 3, "plaintext_cancel": False},
        "shutdown": {"drain_timeout": 0},
    }
    cfg = build_config(data, BASE)
    assert [(str(x.address), x.proxy_protocol) for x in cfg.listen] == [
        ("0.0.0.0:6432", False),
        ("[::]:6433", True),
    ]
    assert cfg.tls.key_passphrase_file == BASE / "pass.txt"
    assert cfg.tls.client_ca_file == Path("/abs/ca.crt")
    assert cfg.tls.crl_files == (BASE / "a.crl", Path("/abs/b.crl"))
    assert cfg.tls.crl_dir == BASE / "crls"
    assert (cfg.tls.revocation, cfg.tls.min_version, cfg.tls.ciphers) == ("lenient", "1.3", "HIGH")
    assert cfg.tls.handshake_timeout == 2.5
    assert cfg.tls.direct_ssl is False
    assert (cfg.identity.field, cfg.identity.on_user_mismatch) == ("san_email", "rewrite")
    first, second = cfg.rules
    assert first.identity_regex is not None
    assert first.identity_regex.pattern == r"(\w+)@example\.com"
    assert first.backend == "replica"
    assert [str(n) for n in first.sources] == ["10.0.0.0/8", "2001:db8::/32", "192.168.1.7/32"]
    assert (second.index, second.action, second.user) == (1, "reject", None)
    replica = cfg.backends["replica"]
    assert replica.address == HostPort("2001:db8::1", 5433)
    assert str(replica.address) == "[2001:db8::1]:5433"
    assert replica.tls.mode == "verify-full"
    assert replica.tls.ca_file == BASE / "backend-ca.crt"
    assert replica.tls.server_name == "db2.example.com"
    assert replica.auth.passwords_file == BASE / "userlist.txt"
    assert replica.connect_timeout == 1.0
    assert cfg.metrics.address is None
    assert (cfg.logging.level, cfg.logging.format, cfg.logging.audit) == ("debug", "json", False)
    assert (cfg.limits.max_connections, cfg.limits.startup_timeout) == (5, 3.0)
    assert cfg.shutdown.drain_timeout == 0.0


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        pytest.param(set_in("bogus", 1), "bogus", id="top"),
        pytest.param(set_in("tls.bogus", 1), "tls.bogus", id="tls"),
        pytest.param(set_in("identity.bogus", 1), "identity.bogus", id="identity"),
        pytest.param(set_in("backends.main.bogus", 1), "backends.main.bogus", id="backend"),
        pytest.param(set_in("backends.main.tls.bogus", 1), "backends.main.tls.bogus", id="be-tls"),
        pytest.param(
            set_in("backends.main.auth.bogus", 1), "backends.main.auth.bogus", id="be-auth"
        ),
        pytest.param(
            set_in("rules", [{"identity": "a", "user": "a"}, {"identity": "b", "bogus": 1}]),
            "rules[1].bogus",
            id="rule",
        ),
        pytest.param(
            set_in("listen", [{"address": "0.0.0.0:6432", "bogus": 1}]),
            "listen[0].bogus",
            id="listen",
        ),
        pytest.param(
            set_in("listen", [{"address": "0.0.0.0:6432"}, {"address": "[::]:1", "bogus": 1}]),
            "listen[1].bogus",
            id="listen-second",
        ),
        pytest.param(set_in("metrics.bogus", 1), "metrics.bogus", id="metrics"),
        pytest.param(set_in("logging.bogus", 1), "logging.bogus", id="logging"),
        pytest.param(set_in("limits.bogus", 1), "limits.bogus", id="limits"),
        pytest.param(set_in("shutdown.bogus", 1), "shutdown.bogus", id="shutdown"),
    ],
)
def test_unknown_key_names_its_path(mutate: Mutation, key: str) -> None:
    assert error_key(mutate) == key


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        # tls
        pytest.param(delete("tls.cert_file"), "tls.cert_file", id="missing-cert-file"),
        pytest.param(delete("tls.key_file"), "tls.key_file", id="missing-key-file"),
        pytest.param(delete("tls.client_ca_file"), "tls.client_ca_file", id="missing-client-ca"),
        pytest.param(delete("tls"), "tls.cert_file", id="missing-tls-section"),
        pytest.param(set_in("tls.cert_file", ""), "tls.cert_file", id="empty-cert-file"),
        pytest.param(set_in("tls", ["x"]), "tls", id="tls-not-mapping"),
        pytest.param(set_in("tls.revocation", "maybe"), "tls.revocation", id="revocation"),
        pytest.param(set_in("tls.revocation", True), "tls.revocation", id="revocation-true"),
        pytest.param(set_in("tls.min_version", "1.1"), "tls.min_version", id="min-version-str"),
        pytest.param(set_in("tls.min_version", 1.1), "tls.min_version", id="min-version-float"),
        pytest.param(set_in("tls.min_version", 1.25), "tls.min_version", id="min-version-1.25"),
        pytest.param(set_in("tls.min_version", 1), "tls.min_version", id="min-version-int"),
        pytest.param(
            set_in("tls.handshake_timeout", -1), "tls.handshake_timeout", id="handshake-negative"
        ),
        pytest.param(set_in("tls.handshake_timeout", 0), "tls.handshake_timeout", id="hs-zero"),
        pytest.param(
            set_in("tls.handshake_timeout", math.nan), "tls.handshake_timeout", id="hs-nan"
        ),
        pytest.param(set_in("tls.handshake_timeout", "10"), "tls.handshake_timeout", id="hs-str"),
        pytest.param(set_in("tls.handshake_timeout", True), "tls.handshake_timeout", id="hs-bool"),
        pytest.param(set_in("tls.direct_ssl", "yes"), "tls.direct_ssl", id="direct-ssl-str"),
        pytest.param(set_in("tls.crl_files", "a.crl"), "tls.crl_files", id="crl-files-str"),
        pytest.param(set_in("tls.crl_files", ["a", 3]), "tls.crl_files[1]", id="crl-files-item"),
        # identity
        pytest.param(set_in("identity.field", "email"), "identity.field", id="identity-field"),
        pytest.param(
            set_in("identity.on_user_mismatch", "ignore"),
            "identity.on_user_mismatch",
            id="on-user-mismatch",
        ),
        # listen
        pytest.param(set_in("listen", []), "listen", id="listen-empty"),
        pytest.param(
            set_in("listen", [{"address": "nohost"}]), "listen[0].address", id="addr-no-port"
        ),
        pytest.param(
            set_in("listen", [{"address": "[::1]6432"}]), "listen[0].address", id="addr-v6-no-colon"
        ),
        pytest.param(
            set_in("listen", [{"address": "[::1:6432"}]), "listen[0].address", id="addr-v6-no-close"
        ),
        pytest.param(
            set_in("listen", [{"address": "::1:6432"}]), "listen[0].address", id="addr-v6-bare"
        ),
        pytest.param(set_in("listen", [{"address": ":6432"}]), "listen[0].address", id="no-host"),
        pytest.param(
            set_in("listen", [{"address": "[]:6432"}]), "listen[0].address", id="empty-v6-host"
        ),
        pytest.param(set_in("listen", [{"address": "h:"}]), "listen[0].address", id="no-port"),
        pytest.param(set_in("listen", [{"address": "h:-1"}]), "listen[0].address", id="neg-port"),
        pytest.param(
            set_in("listen", [{"address": "h:²"}]), "listen[0].address", id="unicode-digit-port"
        ),
        pytest.param(set_in("listen", [{"address": 6432}]), "listen[0].address", id="addr-int"),
        pytest.param(set_in("listen", [{}]), "listen[0].address", id="addr-missing"),
        pytest.param(
            set_in("listen", [{"address": "h:1", "proxy_protocol": "no"}]),
            "listen[0].proxy_protocol",
            id="proxy-protocol-str",
        ),
        # backends
        pytest.param(
            set_in("backends.main.address", "127.0.0.1:70000"),
            "backends.main.address",
            id="port-70000",
        ),
        pytest.param(delete("backends.main.address"), "backends.main.address", id="be-no-address"),
        pytest.param(delete("backends"), "backends", id="no-backends"),
        pytest.param(set_in("backends", {}), "backends", id="empty-backends"),
        pytest.param(
            set_in("backends.main.connect_timeout", -5),
            "backends.main.connect_timeout",
            id="connect-timeout-negative",
        ),
        pytest.param(
            set_in("backends.main.pool", {"size": -1}),
            "backends.main.pool.size",
            id="pool-size-negative",
        ),
        pytest.param(
            set_in("backends.main.pool", {"size": "20"}),
            "backends.main.pool.size",
            id="pool-size-string",
        ),
        pytest.param(
            set_in("backends.main.pool", {"size": 2, "idle_timeout": 0}),
            "backends.main.pool.idle_timeout",
            id="pool-idle-timeout-zero",
        ),
        pytest.param(
            set_in("backends.main.pool", {"size": 2, "max_lifetime": -1}),
            "backends.main.pool.max_lifetime",
            id="pool-max-lifetime-negative",
        ),
        pytest.param(
            set_in("backends.main.pool", {"max": 2}),
            "backends.main.pool.max",
            id="pool-unknown-key",
        ),
        pytest.param(
            set_in("backends.main.tls", {"mode": "verify-full"}),
            "backends.main.tls.ca_file",
            id="verify-full-no-ca",
        ),
        pytest.param(
            set_in("backends.main.tls", {"mode": "verify-ca"}),
            "backends.main.tls.ca_file",
            id="verify-ca-no-ca",
        ),
        pytest.param(
            set_in("backends.main.tls", {"mode": "prefer"}),
            "backends.main.tls.mode",
            id="be-tls-mode",
        ),
        pytest.param(
            set_in("backends.main.tls", {"mode": "require", "cert_file": "c.crt"}),
            "backends.main.tls.key_file",
            id="be-cert-without-key",
        ),
        pytest.param(
            set_in("backends.main.databases", "app"),
            "backends.main.databases",
            id="be-databases-str",
        ),
        # rules
        pytest.param(set_in("rules", {"identity": "a"}), "rules", id="rules-not-list"),
        pytest.param(set_in("rules.0", "alice"), "rules[0]", id="rule-not-mapping"),
        pytest.param(delete("rules.0.identity"), "rules[0].identity", id="rule-no-identity"),
        pytest.param(delete("rules.0.user"), "rules[0].user", id="allow-without-user"),
        pytest.param(set_in("rules.0.identity", "/(/"), "rules[0].identity", id="bad-regex"),
        pytest.param(
            chain(set_in("rules.0.identity", "/(a)/"), set_in("rules.0.user", r"\2")),
            "rules[0].user",
            id="group-ref-beyond-groups",
        ),
        pytest.param(set_in("rules.0.user", r"\1"), "rules[0].user", id="group-ref-exact-rule"),
        pytest.param(set_in("rules.0.action", "deny"), "rules[0].action", id="bad-action"),
        pytest.param(set_in("rules.0.backend", "nope"), "rules[0].backend", id="unknown-backend"),
        pytest.param(
            set_in("rules.0.sources", ["10.0.0.0/8", "10.0.0.0/33"]),
            "rules[0].sources[1]",
            id="bad-cidr-prefix",
        ),
        pytest.param(
            set_in("rules.0.sources", ["not-an-ip"]), "rules[0].sources[0]", id="bad-cidr-text"
        ),
        pytest.param(set_in("rules.0.sources", "0.0.0.0/0"), "rules[0].sources", id="sources-str"),
        pytest.param(set_in("rules.0.databases", "app"), "rules[0].databases", id="dbs-str"),
        pytest.param(
            set_in("rules.0.databases", ["app", ""]), "rules[0].databases[1]", id="db-empty"
        ),
        pytest.param(
            set_in("rules", [{"identity": "a", "user": "a"}, {"identity": "/[/", "user": "b"}]),
            "rules[1].identity",
            id="second-rule-bad-regex",
        ),
        # other sections
        pytest.param(set_in("metrics.address", "nohost"), "metrics.address", id="metrics-addr"),
        pytest.param(set_in("logging.level", "trace"), "logging.level", id="log-level"),
        pytest.param(set_in("logging.format", "xml"), "logging.format", id="log-format"),
        pytest.param(set_in("logging.audit", "yes"), "logging.audit", id="log-audit"),
        pytest.param(
            set_in("limits.max_connections", 0), "limits.max_connections", id="max-conn-zero"
        ),
        pytest.param(
            set_in("limits.max_connections", 1.5), "limits.max_connections", id="max-conn-float"
        ),
        pytest.param(
            set_in("limits.startup_timeout", -1), "limits.startup_timeout", id="startup-negative"
        ),
        pytest.param(
            set_in("shutdown.drain_timeout", -1), "shutdown.drain_timeout", id="drain-negative"
        ),
        pytest.param(set_in("workers", 0), "workers", id="workers-zero"),
    ],
)
def test_bad_value_names_its_path(mutate: Mutation, key: str) -> None:
    assert error_key(mutate) == key


def test_top_level_must_be_mapping() -> None:
    with pytest.raises(ConfigError) as info:
        build_config(["not", "a", "mapping"], BASE)
    assert info.value.key == "(top level)"


@pytest.mark.parametrize(
    ("mutate", "attr", "expected"),
    [
        pytest.param(set_in("tls.min_version", 1.2), "tls.min_version", "1.2", id="float-1.2"),
        pytest.param(set_in("tls.min_version", 1.3), "tls.min_version", "1.3", id="float-1.3"),
        pytest.param(set_in("tls.revocation", False), "tls.revocation", "off", id="yaml-off"),
        pytest.param(set_in("shutdown.drain_timeout", 0), "shutdown.drain_timeout", 0.0, id="d0"),
        pytest.param(
            set_in("rules.0.action", "reject"), "rules.0.action", "reject", id="reject-with-user"
        ),
        pytest.param(
            set_in("rules", [{"identity": "mallory", "action": "reject"}]),
            "rules.0.user",
            None,
            id="reject-without-user",
        ),
        pytest.param(
            chain(set_in("rules.0.identity", r"/(\w+)\.(\w+)/"), set_in("rules.0.user", r"\2\1")),
            "rules.0.user",
            r"\2\1",
            id="two-group-refs",
        ),
        pytest.param(set_in("rules.0.identity", "/"), "rules.0.identity_regex", None, id="slash"),
        pytest.param(
            set_in("rules.0.sources", ["10.1.2.3/8"]), "rules.0.sources.0", "10.0.0.0/8", id="host"
        ),
        pytest.param(set_in("rules", None), "rules", (), id="no-rules"),
        pytest.param(set_in("listen", None), "listen.0.address", "0.0.0.0:6432", id="listen-null"),
        pytest.param(set_in("workers", 4), "workers", 4, id="workers"),
        pytest.param(
            set_in("metrics.address", "[::1]:9000"), "metrics.address", "[::1]:9000", id="m"
        ),
    ],
)
def test_accepted_values(mutate: Mutation, attr: str, expected: Any) -> None:
    node: Any = build_config(mutated(mutate), BASE)
    for part in attr.split("."):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    if isinstance(expected, str):
        node = str(node)
    assert node == expected


def write_config(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


YAML = """\
tls:
  cert_file: certs/server.crt
  key_file: /abs/server.key
  client_ca_file: ~/ca.crt
  crl_files: [crl/a.pem]
  crl_dir: crl.d
  min_version: {min_version}
  revocation: {revocation}
backends:
  main:
    address: "127.0.0.1:5432"
    tls: {{mode: verify-ca, ca_file: backend-ca.crt}}
    auth: {{passwords_file: userlist.txt}}
rules:
  - identity: alice
    user: alice
    databases: ["*"]
"""


def test_load_config_resolves_relative_paths(tmp_path: Path) -> None:
    cfg_path = write_config(
        tmp_path / "etc" / "pgtls.yaml", YAML.format(min_version='"1.2"', revocation="strict")
    )
    cfg = load_config(cfg_path)
    etc = (tmp_path / "etc").resolve()
    assert cfg.source == cfg_path.resolve()
    assert cfg.tls.cert_file == etc / "certs" / "server.crt"
    assert cfg.tls.key_file == Path("/abs/server.key")
    assert cfg.tls.client_ca_file == Path("~/ca.crt").expanduser()
    assert cfg.tls.crl_files == (etc / "crl" / "a.pem",)
    assert cfg.tls.crl_dir == etc / "crl.d"
    assert cfg.backends["main"].tls.ca_file == etc / "backend-ca.crt"
    assert cfg.backends["main"].auth.passwords_file == etc / "userlist.txt"


def test_load_config_relative_to_file_not_cwd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_config(
        tmp_path / "conf" / "p.yaml", YAML.format(min_version='"1.3"', revocation="lenient")
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(Path("..") / "conf" / "p.yaml")
    assert cfg.tls.cert_file == (tmp_path / "conf").resolve() / "certs" / "server.crt"


@pytest.mark.parametrize(
    ("min_version", "expected"),
    [
        pytest.param("1.2", "1.2", id="yaml-float-1.2"),
        pytest.param("1.3", "1.3", id="yaml-float-1.3"),
        pytest.param("1.20", "1.2", id="yaml-float-1.20"),
        pytest.param('"1.3"', "1.3", id="yaml-string"),
    ],
)
def test_load_config_min_version_forms(tmp_path: Path, min_version: str, expected: str) -> None:
    cfg_path = write_config(
        tmp_path / "c.yaml", YAML.format(min_version=min_version, revocation="strict")
    )
    assert load_config(cfg_path).tls.min_version == expected


@pytest.mark.parametrize("min_version", ["1.1", "1.25", "1", "tls1.2"])
def test_load_config_min_version_rejected(tmp_path: Path, min_version: str) -> None:
    cfg_path = write_config(
        tmp_path / "c.yaml", YAML.format(min_version=min_version, revocation="strict")
    )
    with pytest.raises(ConfigError) as info:
        load_config(cfg_path)
    assert info.value.key == "tls.min_version"


@pytest.mark.parametrize(
    ("revocation", "expected"),
    [("strict", "strict"), ("lenient", "lenient"), ("off", "off"), ('"off"', "off")],
)
def test_load_config_revocation_off_unquoted(
    tmp_path: Path, revocation: str, expected: str
) -> None:
    cfg_path = write_config(
        tmp_path / "c.yaml", YAML.format(min_version="1.2", revocation=revocation)
    )
    assert load_config(cfg_path).tls.revocation == expected


def test_load_config_unknown_key_from_yaml(tmp_path: Path) -> None:
    text = YAML.format(min_version="1.2", revocation="strict") + "  - identity: bob\n    usr: b\n"
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path / "c.yaml", text))
    assert info.value.key == "rules[1].usr"
    assert "rules[1].usr" in str(info.value)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        pytest.param(b"tls: [unclosed\n", "invalid YAML at line", id="bad-yaml"),
        pytest.param(b"tls: \xff\xfe\n", "UTF-8", id="not-utf8"),
    ],
)
def test_load_config_unreadable_content(tmp_path: Path, content: bytes, fragment: str) -> None:
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == ""
    assert fragment in str(info.value)


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "absent.yaml")
    assert info.value.key == ""
    assert "cannot read config file" in str(info.value)


def test_load_config_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write_config(tmp_path / "c.yaml", ""))
    assert info.value.key == "backends"


def test_default_config_path_uses_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGTLS_PROXY_CONFIG", "/srv/proxy.yaml")
    assert default_config_path() == "/srv/proxy.yaml"


def test_default_config_path_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGTLS_PROXY_CONFIG", raising=False)
    assert default_config_path() == DEFAULT_CONFIG_PATH == "/etc/pgtls-proxy/pgtls-proxy.yaml"


def test_default_config_path_empty_env_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGTLS_PROXY_CONFIG", "")
    assert default_config_path() == DEFAULT_CONFIG_PATH
