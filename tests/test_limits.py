"""limits.max_pending / per_source_pending, and the descriptors the limits need."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgtls_proxy import descriptors
from pgtls_proxy.config import build_config
from tests.fixtures.pki import PKIFiles
from tests.fixtures.proxy import base_config, deep_merge
from tests.test_config import BASE, MINIMAL, Mutation, error_key, set_in


def test_defaults() -> None:
    cfg = build_config(MINIMAL, BASE)
    assert (cfg.limits.max_pending, cfg.limits.per_source_pending) == (1024, 128)


def test_values_are_read() -> None:
    data = deep_merge(MINIMAL, {"limits": {"max_pending": 50, "per_source_pending": 5}})
    cfg = build_config(data, BASE)
    assert (cfg.limits.max_pending, cfg.limits.per_source_pending) == (50, 5)


@pytest.mark.parametrize(
    ("mutate", "key"),
    [
        pytest.param(set_in("limits.max_pending", 0), "limits.max_pending", id="pending-zero"),
        pytest.param(set_in("limits.max_pending", 2.5), "limits.max_pending", id="pending-float"),
        pytest.param(set_in("limits.max_pending", "10"), "limits.max_pending", id="pending-str"),
        pytest.param(set_in("limits.max_pending", True), "limits.max_pending", id="pending-bool"),
        pytest.param(
            set_in("limits.per_source_pending", 0),
            "limits.per_source_pending",
            id="per-source-zero",
        ),
        pytest.param(
            set_in("limits.per_source_pending", -3),
            "limits.per_source_pending",
            id="per-source-negative",
        ),
        pytest.param(
            set_in("limits.per_source_pending", None),
            "limits.per_source_pending",
            id="per-source-null",
        ),
        pytest.param(set_in("limits.max_pendings", 5), "limits.max_pendings", id="typo"),
    ],
)
def test_bad_value_names_its_path(mutate: Mutation, key: str) -> None:
    assert error_key(mutate) == key


def test_descriptor_count() -> None:
    data = deep_merge(
        MINIMAL,
        {
            "limits": {"max_connections": 100, "max_pending": 50},
            "backends": {"main": {"pool": {"size": 7}}},
        },
    )
    cfg = build_config(data, BASE)
    # 2 per session, 1 per pending, 1 listener, 7 pooled, slack.
    assert descriptors.needed(cfg) == 200 + 50 + 1 + 7 + descriptors.SLACK
    assert descriptors.shortfall(cfg, 10_000) is None
    assert descriptors.pending_ceiling(cfg, 10_000) is None
    problem = descriptors.shortfall(cfg, 200)
    assert problem is not None and "322 file descriptors" in problem and "200" in problem
    # Half of what is left after the fixed needs, so sessions keep the rest.
    assert descriptors.pending_ceiling(cfg, 200) == (200 - 72) // 2
    assert descriptors.pending_ceiling(cfg, 80) == descriptors.MIN_PENDING


def _check(config: Path, nofile: int | None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pgtls_proxy", "check", "--config", str(config)]
    if nofile is not None:
        cmd = ["prlimit", f"--nofile={nofile}", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def test_check_warns_when_the_limits_need_more_descriptors(tmp_path: Path, pki: PKIFiles) -> None:
    data: dict[str, Any] = base_config(pki, 5432)
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(data))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < descriptors.needed(build_config(data, tmp_path)):
        pytest.skip("this machine's RLIMIT_NOFILE is below the test config's needs")
    assert _check(path, None).stdout == ""
    low = _check(path, 1000)
    assert low.stdout.splitlines() == [
        "warning: limits.max_connections: the limits need 3089 file descriptors per worker"
        " process (2 per session x 1000 + 1024 pending + 65 for listeners, pooled backend"
        " sessions and slack), more than the 1000 this process may open (RLIMIT_NOFILE);"
        " raise LimitNOFILE= (systemd) or ulimit -n, or lower limits.max_connections"
    ]
    assert low.returncode == 0  # a warning, not an error


def test_run_raises_the_soft_limit_and_warns(tmp_path: Path, pki: PKIFiles) -> None:
    """``run`` takes the hard limit; when even that is short it says so and serves anyway."""
    code = (
        "import resource, sys; from pgtls_proxy.cli import _raise_descriptor_limit;"
        "from pgtls_proxy.config import load_config; from pgtls_proxy.logsetup import"
        " setup_logging; setup_logging('info', 'text');"
        "_raise_descriptor_limit(load_config(sys.argv[1]));"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE))"
    )
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(base_config(pki, 5432)))
    out = subprocess.run(
        ["prlimit", "--nofile=256:1500", sys.executable, "-c", code, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "(1500, 1500)"
    assert "limits.max_connections: the limits need 3089 file descriptors" in out.stderr
    assert "limits.max_pending is lowered to 717" in out.stderr


def test_example_config_documents_the_defaults() -> None:
    from pgtls_proxy.config import LimitsSettings, load_config

    example = Path(__file__).resolve().parents[1] / "config" / "pgtls-proxy.example.yaml"
    assert load_config(example).limits == LimitsSettings()
