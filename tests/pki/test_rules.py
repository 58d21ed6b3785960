"""Table tests for the identity -> user policy and backend routing.

Rules are built through ``build_config`` so the cases also exercise the parser
that turns the YAML into ``Rule`` objects.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgtls_proxy.config import BackendSettings, Rule, build_config
from pgtls_proxy.pki.rules import Allow, Deny, evaluate, route, substitute

TLS = {"cert_file": "s.crt", "key_file": "s.key", "client_ca_file": "ca.crt"}
BACKENDS: dict[str, Any] = {
    "main": {"address": "127.0.0.1:5432"},
    "replica": {"address": "127.0.0.1:5433"},
}

V4 = "10.1.2.3"


def make_rules(*rules: dict[str, Any]) -> tuple[Rule, ...]:
    cfg = build_config({"tls": TLS, "backends": BACKENDS, "rules": list(rules)}, Path("/cfg"))
    return cfg.rules


def make_backends(backends: dict[str, list[str]]) -> dict[str, BackendSettings]:
    data = {
        name: {"address": f"127.0.0.1:{5432 + i}", "databases": dbs}
        for i, (name, dbs) in enumerate(backends.items())
    }
    return dict(build_config({"tls": TLS, "backends": data}, Path("/cfg")).backends)


def allow(user: str, index: int, identity: str, *, rewritten: bool = False) -> Allow:
    return Allow(user, index, None, identity, rewritten)


def deny(reason: str, index: int | None = None) -> tuple[str, int | None]:
    return (reason, index)


# Each case: rules, identities, requested user, database, source, mode, expected.
# Expected is an Allow, or a (reason, rule_index) pair for a Deny.
CASES = [
    # --- identity: exact string equality
    pytest.param(
        [{"identity": "alice", "user": "alice"}],
        ("alice",),
        "alice",
        "app",
        V4,
        "reject",
        allow("alice", 0, "alice"),
        id="exact-match-allows",
    ),
    pytest.param(
        [{"identity": "alice", "user": "alice"}],
        ("Alice",),
        "alice",
        "app",
        V4,
        "reject",
        deny("no_rule"),
        id="exact-is-case-sensitive",
    ),
    pytest.param(
        [{"identity": "alice", "user": "alice"}],
        ("alice2",),
        "alice",
        "app",
        V4,
        "reject",
        deny("no_rule"),
        id="exact-no-prefix-match",
    ),
    pytest.param(
        [{"identity": "a.b", "user": "u"}],
        ("axb",),
        "u",
        "app",
        V4,
        "reject",
        deny("no_rule"),
        id="exact-identity-is-not-a-regex",
    ),
    # --- identity: /regex/ with fullmatch
    pytest.param(
        [{"identity": r"/(\w+)@example\.com/", "user": r"\1"}],
        ("bob@example.com",),
        "bob",
        "app",
        V4,
        "reject",
        allow("bob", 0, "bob@example.com"),
        id="regex-fullmatch-and-group",
    ),
    pytest.param(
        [{"identity": "/alice/", "user": "alice"}],
        ("alice.admin",),
        "alice",
        "app",
        V4,
        "reject",
        deny("no_rule"),
        id="regex-partial-prefix-does-not-match",
    ),
    pytest.param(
        [{"identity": "/lic/", "user": "alice"}],
        ("alice",),
        "alice",
        "app",
        V4,
        "reject",
        deny("no_rule"),
        id="regex-partial-infix-does-not-match",
    ),
    pytest.param(
        [{"identity": "/a|alice/", "user": "alice"}],
        ("alice",),
        "alice",
        "app",
        V4,
        "reject",
        allow("alice", 0, "alice"),
        id="regex-alternation-is-fully-anchored",
    ),
    pytest.param(
        [{"identity": r"/(\w+)\.(\w+)/", "user": r"\2_\1"}],
        ("app.reader",),
        "reader_app",
        "app",
        V4,
        "reject",
        allow("reader_app", 0, "app.reader"),
        id="regex-two-groups-swapped",
    ),
    pytest.param(
        [{"identity": r"/(a)?b/", "user": r"x\1y"}],
        ("b",),
        "xy",
        "app",
        V4,
        "reject",
        allow("xy", 0, "b"),
        id="regex-unmatched-group-is-empty",
    ),
    # --- databases
    pytest.param(
        [{"identity": "alice", "user": "alice", "databases": ["app", "other"]}],
        ("alice",),
        "alice",
        "other",
        V4,
        "reject",
        allow("alice", 0, "alice"),
        id="database-listed",
    ),
    pytest.param(
        [{"identity": "alice", "user": "alice", "databases": ["app", "other"]}],
        ("alice",),
        "alice",
        "postgres",
        V4,
        "reject",
        deny("no_rule"),
        id="database-not-listed",
    ),
    pytest.param(
        [{"identity": "alice", "user": "alice", "databases": ["*"]}],
        ("alice",),
        "alice",
        "anything",
        V4,
        "reject",
        allow("alice", 0, "alice"),
        id="database-star",
    ),
    pytest.param(
        [{"identity": "alice", "user": "alice", "databases": ["app", "*"]}],
        ("alice",),
        "alice",
        "anything",
        V4,
        "reject",
        allow("alice", 0, "alice"),
        id="database-star-among-names",
    ),
    # --- sources
    pytest.param(
        [{"identity": "alice", "user": "alice", "sources": ["10.0.0.0/8"]}],
        ("alice",),
        "alice",
        "app",
        "10.200.0.1",
        "reject",
        allow("alice", 0, "alice"),
        id="source-v4-inside-cidr",
    ),
    pytest.param(
        [{"identity": "alice", "user": "alice", "sources": ["10.0.0.0/8"]}],
        ("alice",),
        "alice",
        "app",
        "11.0.0.1",
        "reject",
        deny("no_rule"),
        id="source-v4-outside-cidr",
    ),
    pytest.param(
        [{"identity": "alice", "user": "alice", "sources": ["192.168.0.0/16", "10.1.2.3"]}],
        ("alice",),
        "alice",
        "app",
        "10.1.2.3",
        "reject",
        allow("alice", 0, "alice"),
        id="source-any-of-several-single-host",
    ),
    pytest.param(
        [{"identity": "alice", "user": "alice", "sources": ["2001:db8::/32"]}],
        ("alice",),
        "alice",
        "app",
        "2001:db8::5",
        "reject",
        allow("alice", 0, "alice"),
        id="source-v6-inside-cidr",
    ),
    pytest.param(
        [{"identity": "alice", "user": "alice", "sources": ["2001:db8::/32"]}],
        ("alice",),
        "alice",
        "app",
        "2001:db9::5",
        "reject",
        deny("no_rule"),
        id="source-v6-outside-cidr",
    ),
    pytest.param(
        [{"identity": "alice", "user": "alice", "sources": ["10.0.0.0/8"]}],
        ("alice",),
        "alice",
        "app",
        "::ffff:10.1.2.3",
        "reject",
        allow("alice", 0, "alice"),
        id="source-v4-mapped-matches-v4-cidr",
    ),
    pytest.param(
        [{"identity": "alice", "user": "alice", "sources": ["10.0.0.0/8"]}],
        ("alice",),
        "alice",
        "app",
        "::ffff:11.1.2.3",
        "reject",
        deny("no_rule"),
        id="source-v4-mapped-outside-v4-cidr",
    ),
    pytest.param(
        [{"identity": "alice", "user": "alice", "sources": ["::/0"]}],
        ("alice",),
        "alice",
        "app",
        V4,
        "reject",
        deny("no_rule"),
        id="source-v4-does-not-match-v6-cidr",
    ),
    pytest.param(
        [{"identity": "alice", "user": "alice", "sources": ["0.0.0.0/0"]}],
        ("alice",),
        "alice",
        "app",
        "2001:db8::5",
        "reject",
        deny("no_rule"),
        id="source-v6-does-not-match-v4-cidr",
    ),
    pytest.param(
        [{"identity": "alice", "user": "alice", "sources": ["::1/128"]}],
        ("alice",),
        "alice",
        "app",
        "127.0.0.1",
        "reject",
        deny("no_rule"),
        id="source-loopback-families-are-distinct",
    ),
    pytest.param(
        [{"identity": "alice", "user": "alice", "sources": []}],
        ("alice",),
        "alice",
        "app",
        V4,
        "reject",
        deny("no_rule"),
        id="source-empty-list-matches-nothing",
    ),
    # --- action: reject
    pytest.param(
        [{"identity": "mallory", "action": "reject"}, {"identity": "/.*/", "user": "mallory"}],
        ("mallory",),
        "mallory",
        "app",
        V4,
        "reject",
        deny("reject_rule", 0),
        id="reject-rule-without-user",
    ),
    pytest.param(
        [{"identity": "mallory", "user": "other", "action": "reject"}],
        ("mallory",),
        "mallory",
        "app",
        V4,
        "reject",
        deny("reject_rule", 0),
        id="reject-rule-applies-whatever-the-user",
    ),
    pytest.param(
        [
            {"identity": "alice", "action": "reject", "databases": ["secret"]},
            {"identity": "alice", "user": "alice"},
        ],
        ("alice",),
        "alice",
        "app",
        V4,
        "reject",
        allow("alice", 1, "alice"),
        id="reject-rule-for-other-database-skipped",
    ),
    pytest.param(
        [
            {"identity": "alice", "action": "reject", "sources": ["192.168.0.0/16"]},
            {"identity": "alice", "user": "alice"},
        ],
        ("alice",),
        "alice",
        "app",
        V4,
        "reject",
        allow("alice", 1, "alice"),
        id="reject-rule-for-other-source-skipped",
    ),
    pytest.param(
        [{"identity": "alice", "user": "alice"}, {"identity": "alice", "action": "reject"}],
        ("alice",),
        "alice",
        "app",
        V4,
        "reject",
        allow("alice", 0, "alice"),
        id="earlier-allow-wins-over-later-reject",
    ),
    pytest.param(
        [{"identity": "alice", "user": "alice"}, {"identity": "alice", "action": "reject"}],
        ("alice",),
        "bob",
        "app",
        V4,
        "reject",
        deny("reject_rule", 1),
        id="reject-rule-after-earlier-mismatch",
    ),
    pytest.param(
        [{"identity": "alice", "user": "alice"}, {"identity": "alice", "action": "reject"}],
        ("alice",),
        "bob",
        "app",
        V4,
        "rewrite",
        allow("alice", 0, "alice", rewritten=True),
        id="rewrite-stops-before-later-reject",
    ),
    # --- user mapping, mode reject (pg_ident style)
    pytest.param(
        [{"identity": "alice", "user": "alice"}, {"identity": "alice", "user": "alice_admin"}],
        ("alice",),
        "alice_admin",
        "app",
        V4,
        "reject",
        allow("alice_admin", 1, "alice"),
        id="mismatch-continues-to-later-allow",
    ),
    pytest.param(
        [
            {"identity": r"/(\w+)/", "user": r"\1"},
            {"identity": "alice", "user": "reporting"},
            {"identity": "alice", "user": "alice_admin"},
        ],
        ("alice",),
        "alice_admin",
        "app",
        V4,
        "reject",
        allow("alice_admin", 2, "alice"),
        id="several-mismatches-then-allow",
    ),
    pytest.param(
        [{"identity": "alice", "user": "alice"}, {"identity": "alice", "user": "alice_admin"}],
        ("alice",),
        "bob",
        "app",
        V4,
        "reject",
        deny("user_mismatch"),
        id="mismatch-without-later-allow",
    ),
    pytest.param(
        [{"identity": "alice", "user": "alice"}, {"identity": "bob", "user": "bob"}],
        ("alice",),
        "bob",
        "app",
        V4,
        "reject",
        deny("user_mismatch"),
        id="mismatch-later-rule-other-identity",
    ),
    pytest.param(
        [
            {"identity": "alice", "user": "alice"},
            {"identity": "alice", "user": "bob", "databases": ["other"]},
        ],
        ("alice",),
        "bob",
        "app",
        V4,
        "reject",
        deny("user_mismatch"),
        id="mismatch-later-rule-other-database",
    ),
    pytest.param(
        [
            {"identity": "alice", "user": "alice", "databases": ["other"]},
            {"identity": "bob", "user": "bob"},
        ],
        ("alice",),
        "bob",
        "app",
        V4,
        "reject",
        deny("no_rule"),
        id="user-differs-but-database-never-matched",
    ),
    pytest.param(
        [{"identity": "alice", "user": "alice"}],
        ("alice",),
        "alice",
        "app",
        V4,
        "bogus-mode",
        allow("alice", 0, "alice"),
        id="unknown-mode-still-allows-equal-user",
    ),
    pytest.param(
        [{"identity": "alice", "user": "alice"}],
        ("alice",),
        "bob",
        "app",
        V4,
        "bogus-mode",
        deny("user_mismatch"),
        id="unknown-mode-fails-closed",
    ),
    # --- user mapping, mode rewrite
    pytest.param(
        [{"identity": "alice", "user": "alice"}],
        ("alice",),
        "bob",
        "app",
        V4,
        "rewrite",
        allow("alice", 0, "alice", rewritten=True),
        id="rewrite-mismatch-connects-as-mapped",
    ),
    pytest.param(
        [{"identity": "alice", "user": "alice"}],
        ("alice",),
        "alice",
        "app",
        V4,
        "rewrite",
        allow("alice", 0, "alice"),
        id="rewrite-equal-user-not-rewritten",
    ),
    pytest.param(
        [{"identity": "alice", "user": "alice"}, {"identity": "alice", "user": "admin"}],
        ("alice",),
        "admin",
        "app",
        V4,
        "rewrite",
        allow("alice", 0, "alice", rewritten=True),
        id="rewrite-first-match-wins-over-later-exact",
    ),
    pytest.param(
        [{"identity": r"/(\w+)\.svc/", "user": r"svc_\1"}],
        ("billing.svc",),
        "postgres",
        "app",
        V4,
        "rewrite",
        allow("svc_billing", 0, "billing.svc", rewritten=True),
        id="rewrite-with-substitution",
    ),
    pytest.param(
        [{"identity": r"/(a)?b/", "user": r"\1"}],
        ("b",),
        "bob",
        "app",
        V4,
        "rewrite",
        deny("user_mismatch"),
        id="rewrite-never-to-empty-user",
    ),
    # --- no rule
    pytest.param(
        [],
        ("alice",),
        "alice",
        "app",
        V4,
        "reject",
        deny("no_rule"),
        id="no-rules-at-all",
    ),
    pytest.param(
        [{"identity": "bob", "user": "bob"}],
        ("alice",),
        "alice",
        "app",
        V4,
        "reject",
        deny("no_rule"),
        id="no-matching-rule",
    ),
    pytest.param(
        [{"identity": "/.*/", "user": "anyone"}],
        (),
        "anyone",
        "app",
        V4,
        "reject",
        deny("no_rule"),
        id="empty-identities-match-no-rule",
    ),
    pytest.param(
        [{"identity": "/.*/", "user": "anyone"}],
        (),
        "anyone",
        "app",
        V4,
        "rewrite",
        deny("no_rule"),
        id="empty-identities-match-no-rule-rewrite",
    ),
    # --- several certificate entries (san_*): rules outer, entries inner
    pytest.param(
        [
            {"identity": "/(alice)\\.example/", "user": r"\1"},
            {"identity": "/(x)\\.example/", "user": r"\1"},
        ],
        ("x.example", "alice.example"),
        "nobody",
        "app",
        V4,
        "rewrite",
        allow("alice", 0, "alice.example", rewritten=True),
        id="san-second-entry-first-rule-beats-first-entry-second-rule",
    ),
    pytest.param(
        [
            {"identity": "/(alice)\\.example/", "user": r"\1"},
            {"identity": "/(x)\\.example/", "user": r"\1"},
        ],
        ("x.example", "alice.example"),
        "x",
        "app",
        V4,
        "reject",
        allow("x", 1, "x.example"),
        id="san-mismatch-on-first-rule-then-second-rule",
    ),
    pytest.param(
        [{"identity": r"/(\w+)\.example/", "user": r"\1"}],
        ("a.example", "b.example"),
        "b",
        "app",
        V4,
        "reject",
        allow("b", 0, "b.example"),
        id="san-groups-come-from-the-matching-entry",
    ),
    pytest.param(
        [{"identity": r"/(\w+)\.example/", "user": r"\1"}],
        ("a.example", "b.example"),
        "b",
        "app",
        V4,
        "rewrite",
        allow("a", 0, "a.example", rewritten=True),
        id="san-entries-in-certificate-order",
    ),
    pytest.param(
        [{"identity": r"/(\w+)\.example/", "user": r"\1"}],
        ("a.example", "b.example"),
        "c",
        "app",
        V4,
        "reject",
        deny("user_mismatch"),
        id="san-every-entry-mismatches",
    ),
    pytest.param(
        [{"identity": "banned", "action": "reject"}, {"identity": "ok", "user": "ok"}],
        ("ok", "banned"),
        "ok",
        "app",
        V4,
        "reject",
        deny("reject_rule", 0),
        id="san-reject-on-any-entry-of-earlier-rule",
    ),
    pytest.param(
        [{"identity": "other", "user": "u"}, {"identity": "b", "user": "u"}],
        ("a", "b", "c"),
        "u",
        "app",
        V4,
        "reject",
        allow("u", 1, "b"),
        id="san-middle-entry-matches",
    ),
    # --- what an Allow carries
    pytest.param(
        [{"identity": "alice", "user": "alice", "backend": "replica"}],
        ("alice",),
        "alice",
        "app",
        V4,
        "reject",
        Allow("alice", 0, "replica", "alice", False),
        id="allow-carries-rule-backend",
    ),
]


@pytest.mark.parametrize(
    ("rules", "identities", "user", "database", "source", "mode", "expected"), CASES
)
def test_evaluate(
    rules: list[dict[str, Any]],
    identities: tuple[str, ...],
    user: str,
    database: str,
    source: str,
    mode: str,
    expected: Allow | tuple[str, int | None],
) -> None:
    result = evaluate(
        make_rules(*rules), identities, user, database, ipaddress.ip_address(source), mode
    )
    if isinstance(expected, Allow):
        assert result == expected
    else:
        assert isinstance(result, Deny), result
        assert (result.reason, result.rule_index) == expected


SECRET_RULES: list[dict[str, Any]] = [
    {"identity": r"/(\w+)@corp\.internal/", "user": r"\1", "databases": ["payroll"]},
    {"identity": "mallory", "action": "reject"},
]


@pytest.mark.parametrize(
    ("identities", "user", "database", "reason"),
    [
        pytest.param(("carol@corp.internal",), "bob", "payroll", "user_mismatch", id="mismatch"),
        pytest.param(("mallory",), "mallory", "app", "reject_rule", id="reject"),
        pytest.param(("eve",), "eve", "app", "no_rule", id="no-rule"),
    ],
)
def test_denial_message_names_attempt_not_rules(
    identities: tuple[str, ...], user: str, database: str, reason: str
) -> None:
    result = evaluate(
        make_rules(*SECRET_RULES), identities, user, database, ipaddress.ip_address(V4), "reject"
    )
    assert isinstance(result, Deny)
    assert result.reason == reason
    assert result.message == (
        f'certificate identity "{identities[0]}" is not allowed to connect'
        f' as user "{user}" to database "{database}"'
    )
    assert "corp\\.internal" not in result.message
    assert "(\\w+)" not in result.message
    assert "rule" not in result.message


def test_denial_message_shows_first_identity_entry() -> None:
    rules = make_rules({"identity": "nobody", "user": "x"})
    result = evaluate(rules, ("first", "second"), "u", "d", ipaddress.ip_address(V4), "reject")
    assert isinstance(result, Deny)
    assert '"first"' in result.message
    assert "second" not in result.message


def test_denial_message_without_identity() -> None:
    result = evaluate((), (), "u", "d", ipaddress.ip_address(V4), "reject")
    assert isinstance(result, Deny)
    assert result.message == (
        'certificate identity (none) is not allowed to connect as user "u" to database "d"'
    )


def test_denial_message_escapes_untrusted_text() -> None:
    result = evaluate((), ('ev"il\x00\n',), "u\\x", "d\r", ipaddress.ip_address(V4), "reject")
    assert isinstance(result, Deny)
    assert "\x00" not in result.message
    assert "\n" not in result.message
    assert "\r" not in result.message
    assert 'identity "ev\\"il\\x00\\n"' in result.message
    assert 'user "u\\\\x"' in result.message


def test_denial_message_is_bounded() -> None:
    result = evaluate((), ("a" * 5000,), "u", "d", ipaddress.ip_address(V4), "reject")
    assert isinstance(result, Deny)
    assert len(result.message) < 400


def test_rule_built_directly() -> None:
    rule = Rule(
        index=7,
        identity="/svc-(.+)/",
        identity_regex=re.compile("svc-(.+)"),
        user=r"\1",
        databases=("app",),
        sources=(ipaddress.ip_network("10.0.0.0/8"),),
        action="allow",
        backend=None,
    )
    assert evaluate(
        [rule], ("svc-api",), "api", "app", ipaddress.ip_address(V4), "reject"
    ) == Allow("api", 7, None, "svc-api", False)


@pytest.mark.parametrize(
    ("template", "pattern", "text", "expected"),
    [
        pytest.param("alice", None, None, "alice", id="no-match-literal"),
        pytest.param(r"x\1", None, None, r"x\1", id="no-match-ref-left"),
        pytest.param(r"\1", r"(\w+)@x", "bob@x", "bob", id="one-group"),
        pytest.param(r"\2.\1", r"(\w+)\.(\w+)", "a.b", "b.a", id="two-groups"),
        pytest.param(r"\1\1", r"(\w+)", "ab", "abab", id="repeated"),
        pytest.param(r"a\nb", r"(x)", "x", r"a\nb", id="backslash-other-char"),
        pytest.param(r"a\0b", r"(x)", "x", r"a\0b", id="backslash-zero"),
        pytest.param("a\\", r"(x)", "x", "a\\", id="trailing-backslash"),
        pytest.param(r"\3", r"(x)", "x", r"\3", id="ref-beyond-groups-left"),
        pytest.param(r"p\1s", r"(a)?b", "b", "ps", id="unmatched-group-empty"),
        pytest.param(r"\1", r"(x)", "x", "x", id="whole"),
        pytest.param(r"\12", r"(x)", "x", "x2", id="single-digit-refs-only"),
        pytest.param(r"\1", r"(.*)", r"a\2", r"a\2", id="group-text-not-rescanned"),
    ],
)
def test_substitute(template: str, pattern: str | None, text: str | None, expected: str) -> None:
    match = re.fullmatch(pattern, text) if pattern is not None and text is not None else None
    if pattern is not None:
        assert match is not None
    assert substitute(template, match) == expected


ROUTE_CASES = [
    pytest.param(
        {"a": ["app"], "b": ["*"], "c": ["app", "other"]},
        "c",
        "app",
        "c",
        id="rule-backend-wins",
    ),
    pytest.param(
        {"a": ["app"], "b": ["*"]},
        "b",
        "app",
        "b",
        id="rule-backend-star-wins-over-listed",
    ),
    pytest.param(
        {"a": ["app"], "b": ["*"], "c": ["app", "other"]},
        None,
        "app",
        "a",
        id="first-listing-backend",
    ),
    pytest.param(
        {"a": ["app"], "b": ["*"], "c": ["app", "other"]},
        None,
        "other",
        "c",
        id="listed-later-beats-earlier-star",
    ),
    pytest.param(
        {"a": ["app"], "b": ["*"], "c": ["*"]},
        None,
        "unknown",
        "b",
        id="first-star-backend",
    ),
    pytest.param({"a": ["app"], "b": ["other"]}, None, "unknown", None, id="nothing-serves-it"),
    pytest.param({"a": ["App"]}, None, "app", None, id="database-name-case-sensitive"),
    pytest.param({"a": ["app"], "b": ["*"]}, "missing", "app", None, id="unknown-rule-backend"),
]


@pytest.mark.parametrize(("backends", "rule_backend", "database", "expected"), ROUTE_CASES)
def test_route(
    backends: dict[str, list[str]],
    rule_backend: str | None,
    database: str,
    expected: str | None,
) -> None:
    result = route(make_backends(backends), rule_backend, database)
    assert (result.name if result is not None else None) == expected


def test_route_end_to_end_from_allow() -> None:
    backends = make_backends({"main": ["*"], "replica": ["reports"]})
    decision = evaluate(
        make_rules({"identity": "alice", "user": "alice"}),
        ("alice",),
        "alice",
        "reports",
        ipaddress.ip_address(V4),
        "reject",
    )
    assert isinstance(decision, Allow)
    chosen = route(backends, decision.backend, "reports")
    assert chosen is not None
    assert chosen.name == "replica"


NAMES = st.sampled_from(["alice", "bob", "carol", "svc.a", "svc.b"])


@given(
    rules=st.lists(
        st.fixed_dictionaries(
            {
                "identity": st.sampled_from(["alice", "bob", r"/svc\.(\w+)/", "/.*/"]),
                "user": st.sampled_from(["alice", "bob", "a", r"\1"]),
                "action": st.sampled_from(["allow", "allow", "reject"]),
                "databases": st.sampled_from([["*"], ["app"], ["other"]]),
            }
        ),
        max_size=5,
    ),
    identities=st.lists(NAMES, max_size=3),
    user=NAMES,
    mode=st.sampled_from(["reject", "rewrite"]),
)
def test_evaluate_invariants(
    rules: list[dict[str, str]], identities: list[str], user: str, mode: str
) -> None:
    # \1 only makes sense with a group; keep the generated configs valid.
    valid = [r for r in rules if r["user"] != r"\1" or r["identity"] == r"/svc\.(\w+)/"]
    parsed = make_rules(*valid)
    result = evaluate(parsed, tuple(identities), user, "app", ipaddress.ip_address(V4), mode)
    if isinstance(result, Allow):
        assert result.identity in identities
        assert parsed[result.rule_index].action == "allow"
        assert result.rewritten == (result.user != user)
        if mode == "reject":
            assert result.user == user
    else:
        assert (result.rule_index is not None) == (result.reason == "reject_rule")
        for rule in valid:
            if rule["identity"].startswith("/"):
                assert rule["identity"] not in result.message
