"""The Dockerfile's promises, checked without a Docker engine."""

from __future__ import annotations

from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[1] / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with backslash continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
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


def test_multi_stage_slim() -> None:
    all_stages = stages()
    assert len(all_stages) >= 2
    for stage in all_stages:
        assert "slim" in stage[0][1]


def test_final_stage_runs_unprivileged_from_the_wheel() -> None:
    final = stages()[-1]
    users = [args for word, args in final if word == "USER"]
    assert users and users[-1] not in ("root", "0")
    runs = " ".join(args for word, args in final if word == "RUN")
    assert ".whl" in runs
    assert not any(word == "COPY" and args.split()[0] == "src" for word, args in final)


def test_operational_promises() -> None:
    final = dict((word, args) for word, args in stages()[-1])
    assert "/healthz" in final["HEALTHCHECK"]
    assert final["STOPSIGNAL"] == "SIGTERM"
    exposed = set(final["EXPOSE"].split())
    assert {"6432", "9187"} <= exposed
    assert "/etc/pgtls-proxy" in final["VOLUME"]
    assert "PGTLS_PROXY_CONFIG" in final["ENV"]
