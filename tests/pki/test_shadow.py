"""Rules that can never match: what ``check`` warns about, and what it leaves alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pgtls_proxy.config import build_config
from pgtls_proxy.pki.shadow import shadowed_rules


def shadows(rules: list[dict[str, Any]], mismatch: str = "reject") -> list[tuple[int, int]]:
    config = build_config(
        {
            "tls": {"cert_file": "s.crt", "key_file": "s.key", "client_ca_file": "ca.crt"},
            "backends": {"main": {"address": "127.0.0.1:5432"}},
            "identity": {"on_user_mismatch": mismatch},
            "rules": rules,
        },
        Path("/etc"),
    )
    return shadowed_rules(config.rules, config.identity.on_user_mismatch)


ALICE = {"identity": "alice", "user": "alice"}


@pytest.mark.parametrize(
    ("rules", "mismatch", "expected"),
    [
        pytest.param([ALICE, ALICE], "reject", [(1, 0)], id="duplicate"),
        pytest.param(
            [ALICE, {**ALICE, "databases": ["app"], "sources": ["10.0.0.0/8"]}],
            "reject",
            [(1, 0)],
            id="narrower-database-and-source",
        ),
        pytest.param(
            [{"identity": "/.*/", "action": "reject"}, ALICE], "reject", [(1, 0)], id="reject-all"
        ),
        pytest.param(
            [{"identity": "/a.*/", "user": "alice"}, ALICE], "reject", [(1, 0)], id="regex-covers"
        ),
        pytest.param(
            [{"identity": "alice", "user": "bob"}, ALICE], "rewrite", [(1, 0)], id="rewrite-decides"
        ),
        pytest.param(
            [ALICE, {**ALICE, "user": "bob"}], "reject", [], id="other-user-still-reachable"
        ),
        pytest.param(
            [ALICE, {"identity": "alice", "action": "reject"}], "reject", [], id="later-reject"
        ),
        pytest.param([{**ALICE, "databases": ["app"]}, ALICE], "reject", [], id="wider-database"),
        pytest.param(
            [{**ALICE, "sources": ["10.0.0.0/8"]}, ALICE], "reject", [], id="wider-source"
        ),
        pytest.param(
            [{"identity": "/(.*)/", "user": "\\1"}, ALICE], "rewrite", [], id="group-may-be-empty"
        ),
        pytest.param(
            [{"identity": "/b.*/", "user": "alice"}, ALICE], "reject", [], id="regex-misses"
        ),
        pytest.param([ALICE, ALICE, ALICE], "reject", [(1, 0), (2, 0)], id="first-shadow-named"),
    ],
)
def test_shadowed_rules(
    rules: list[dict[str, Any]], mismatch: str, expected: list[tuple[int, int]]
) -> None:
    assert shadows(rules, mismatch) == expected
