"""The Dockerfile's promises, checked without a Docker engine."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


def instructions(text: str | None = None) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with backslash continuations joined.

    As Docker does, comment lines are dropped even inside a continuation.
    """
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (DOCKERFILE.read_text() if text is None else text).splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        line = pending + line
        pending = ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for item in instructions():
        if item[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(item)
    return result


def args(stage: list[tuple[str, str]], word: str) -> list[str]:
    return [rest for name, rest in stage if name == word]


def test_parser_joins_continuations_and_skips_comments() -> None:
    text = "FROM a AS b\nRUN one \\\n    # a comment\n    two\n\nUSER x\n"
    assert instructions(text) == [("FROM", "a AS b"), ("RUN", "one two"), ("USER", "x")]


def test_multi_stage_slim() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2
    for stage in all_stages:
        assert "slim" in stage[0][1]


def test_every_stage_is_debian_bookworm_with_debians_python() -> None:
    """The base scripts/base-image.sh can make without a registry, by the name it tags."""
    script = (ROOT / "scripts" / "base-image.sh").read_text()
    for stage in stages():
        base = stage[0][1].split()[0]
        assert base == "docker.io/library/debian:bookworm-slim"
        installs = " ".join(args(stage, "RUN"))
        assert "apt-get install" in installs and " python3" in installs
    assert "--variant=minbase bookworm" in script


def test_final_stage_runs_unprivileged_from_the_build_venv() -> None:
    final = stages()[-1]
    users = args(final, "USER")
    assert users
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert user.isdigit(), "a numeric USER lets Kubernetes' runAsNonRoot verify it"
    assert users[-1] == "10001:10001"
    copies = args(final, "COPY")
    assert any(c.startswith("--from=build ") and "/opt/pgtls-proxy" in c for c in copies)
    assert not any(a.split()[0] in ("src", "src/", ".") for a in copies)
    runs = " ".join(args(final, "RUN"))
    for forbidden in ("pip ", "gcc", "build-essential", "python3-dev", "python3-venv"):
        assert forbidden not in runs, forbidden
    assert "apt-get clean" in runs and "/var/lib/apt/lists" in runs
    env = " ".join(args(final, "ENV"))
    assert "/opt/pgtls-proxy/bin" in env


def test_build_stage_fills_the_venv_from_binary_wheels_and_removes_pip() -> None:
    build = stages()[0]
    runs = " ".join(args(build, "RUN"))
    assert "--only-binary=:all:" in runs, "no compiler: a dependency without a wheel must fail"
    assert "pip uninstall -y pip setuptools" in runs
    assert any("PIP_NO_CACHE_DIR=1" in line for line in args(build, "ENV"))
    assert "type=secret,id=pip-ca" in runs  # a proxy's CA, never written to a layer


def test_operational_promises() -> None:
    final = stages()[-1]
    (healthcheck,) = args(final, "HEALTHCHECK")
    assert "/healthz" in healthcheck
    assert "curl" not in healthcheck and "wget" not in healthcheck  # not in slim images
    assert "127.0.0.1:9187" in healthcheck
    assert args(final, "STOPSIGNAL") == ["SIGTERM"]
    exposed = {port for line in args(final, "EXPOSE") for port in line.split()}
    assert {"6432", "9187"} <= exposed
    assert any("/etc/pgtls-proxy" in line for line in args(final, "VOLUME"))
    assert any("PGTLS_PROXY_CONFIG=" in line for line in args(final, "ENV"))
    assert json.loads(args(final, "ENTRYPOINT")[-1]) == ["pgtls-proxy"]
    assert json.loads(args(final, "CMD")[-1]) == ["run"]


def test_build_context_has_no_secrets() -> None:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    assert "*" in lines or {".git", ".venv"} <= set(lines)
    for pattern in ("**/*.key", "**/*.pem"):
        assert pattern in lines
