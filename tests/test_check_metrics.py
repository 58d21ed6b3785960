"""``check`` on the metrics endpoint: exposure beyond loopback, and ``metrics.tls``'s files."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgtls_proxy import cli
from tests.fixtures.pki import PKIFiles
from tests.fixtures.proxy import base_config

Setup = Callable[[dict[str, Any], Path, PKIFiles], list[str]]


def _tls(data: dict[str, Any], tmp: Path, pki: PKIFiles, **files: str) -> dict[str, str]:
    key = tmp / "metrics.key"
    shutil.copy(pki.server_key, key)
    key.chmod(0o600)
    tls = {
        "cert_file": str(pki.server_cert),
        "key_file": str(key),
        "client_ca_file": str(pki.other_ca / "ca.crt"),
        **files,
    }
    data["metrics"] = {"address": "0.0.0.0:9187", "tls": tls}
    return tls


def loopback_without_tls(data: dict[str, Any], tmp: Path, pki: PKIFiles) -> list[str]:
    data["metrics"] = {"address": "127.0.0.1:9187"}
    return []


def localhost_v6_without_tls(data: dict[str, Any], tmp: Path, pki: PKIFiles) -> list[str]:
    data["metrics"] = {"address": "[::1]:9187"}
    return []


def disabled(data: dict[str, Any], tmp: Path, pki: PKIFiles) -> list[str]:
    data["metrics"] = {"address": None}
    return []


def wildcard_without_tls(data: dict[str, Any], tmp: Path, pki: PKIFiles) -> list[str]:
    data["metrics"] = {"address": "0.0.0.0:9187"}
    return [
        "warning: metrics.address: 0.0.0.0:9187 listens beyond loopback without metrics.tls:"
        " anyone who reaches it reads the metrics; set metrics.tls (client certificates)"
        " or firewall it"
    ]


def wildcard_with_tls(data: dict[str, Any], tmp: Path, pki: PKIFiles) -> list[str]:
    _tls(data, tmp, pki)
    return []


def tls_key_readable(data: dict[str, Any], tmp: Path, pki: PKIFiles) -> list[str]:
    key = Path(_tls(data, tmp, pki)["key_file"])
    key.chmod(0o644)
    return [
        f"error: metrics.tls.key_file: {key} is readable by group or others (mode 0644);"
        " make it 0600 (or 0640 owned by root)"
    ]


def tls_key_of_another_cert(data: dict[str, Any], tmp: Path, pki: PKIFiles) -> list[str]:
    key = tmp / "alice.key"
    shutil.copy(pki.client("alice")[1], key)
    key.chmod(0o600)
    _tls(data, tmp, pki, key_file=str(key))
    return [
        f"error: metrics.tls.key_file: {key} does not hold a private key matching {pki.server_cert}"
    ]


def tls_ca_not_pem(data: dict[str, Any], tmp: Path, pki: PKIFiles) -> list[str]:
    junk = tmp / "junk.crt"
    junk.write_text("not a certificate\n")
    _tls(data, tmp, pki, client_ca_file=str(junk))
    return [f"error: metrics.tls.client_ca_file: {junk} holds no PEM certificate"]


def tls_cert_missing(data: dict[str, Any], tmp: Path, pki: PKIFiles) -> list[str]:
    missing = tmp / "nope.crt"
    _tls(data, tmp, pki, cert_file=str(missing))
    return [f"error: metrics.tls.cert_file: cannot read {missing}: No such file or directory"]


CASES: list[Setup] = [
    loopback_without_tls,
    localhost_v6_without_tls,
    disabled,
    wildcard_without_tls,
    wildcard_with_tls,
    tls_key_readable,
    tls_key_of_another_cert,
    tls_ca_not_pem,
    tls_cert_missing,
]


@pytest.mark.parametrize("setup", CASES, ids=[c.__name__ for c in CASES])
def test_check_metrics(
    setup: Setup, tmp_path: Path, pki: PKIFiles, capsys: pytest.CaptureFixture[str]
) -> None:
    data = base_config(pki, 5432)
    expected = setup(data, tmp_path, pki)
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(data))
    status = cli.main(["check", "--config", str(path)])
    out = capsys.readouterr()
    assert out.out.splitlines() == expected
    assert status == (1 if any(line.startswith("error:") for line in expected) else 0)


def test_metrics_tls_files_are_relative_to_the_config(tmp_path: Path, pki: PKIFiles) -> None:
    from pgtls_proxy.config import load_config

    data = base_config(pki, 5432)
    data["metrics"] = {
        "address": "127.0.0.1:0",
        "tls": {"cert_file": "m.crt", "key_file": "m.key", "client_ca_file": "cas/s.crt"},
    }
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(data))
    tls = load_config(path).metrics.tls
    assert tls is not None
    assert (tls.cert_file, tls.key_file, tls.client_ca_file) == (
        tmp_path / "m.crt",
        tmp_path / "m.key",
        tmp_path / "cas" / "s.crt",
    )


@pytest.mark.parametrize(
    ("tls", "key"),
    [
        ({"cert_file": "a", "key_file": "b"}, "metrics.tls.client_ca_file"),
        ({"cert_file": "a", "key_file": "b", "client_ca_file": "c", "x": 1}, "metrics.tls.x"),
        ("yes", "metrics.tls"),
    ],
)
def test_metrics_tls_config_errors_name_the_key(
    tmp_path: Path, pki: PKIFiles, tls: Any, key: str
) -> None:
    from pgtls_proxy.config import ConfigError, load_config

    data = base_config(pki, 5432)
    data["metrics"] = {"address": "127.0.0.1:0", "tls": tls}
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key
