"""``/regex/`` identities run on RE2: linear time, a clear error for what RE2 leaves out.

A pattern with nested quantifiers made Python's backtracking ``re`` run for
seconds (exponential in the identity's length) inside the worker's event
loop; RE2 decides in one pass. The tests time the attack shapes, pin the
syntax RE2 refuses to a config error naming its key, and check that the
patterns operators write mean what they meant under ``re``.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from pgtls_proxy import cli
from pgtls_proxy.config import ConfigError, Rule, build_config
from pgtls_proxy.pki.rules import (
    MAX_IDENTITY_CHARS,
    Allow,
    Deny,
    IdentityPattern,
    PatternError,
    compile_identity,
    evaluate,
)

TLS = {"cert_file": "s.crt", "key_file": "s.key", "client_ca_file": "ca.crt"}
BACKENDS: dict[str, Any] = {"main": {"address": "127.0.0.1:5432"}}
V4 = ipaddress.ip_address("10.1.2.3")
KIB64 = 64 * 1024
CATASTROPHIC = ["/(a+)+$/", "/(a|aa)+$/", "/(a*)*b/", "/(.*a){20}/", "/((a|a)+)+z/"]


def make_rules(*rules: dict[str, Any]) -> tuple[Rule, ...]:
    cfg = build_config({"tls": TLS, "backends": BACKENDS, "rules": list(rules)}, Path("/cfg"))
    return cfg.rules


def fastest(fn: Any, runs: int = 3) -> float:
    """The best of a few runs: the cost of the work, not of a busy machine."""
    best = float("inf")
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_catastrophic_pattern_on_64k_identity_is_fast(pattern: str) -> None:
    """Deciding is one pass; groups are not computed unless asked for."""
    regex = compile_identity(pattern)
    assert regex is not None
    for text in ("a" * KIB64 + "!", "a" * KIB64):
        assert fastest(lambda t=text: regex.fullmatch(t)) < 0.1


def test_python_re_would_backtrack_on_the_same_shape() -> None:
    """The premise: ``re`` doubles its work per character; 22 take visible time."""
    slow = re.compile("(a+)+$")
    short, longer = "a" * 14 + "!", "a" * 20 + "!"
    t_short = fastest(lambda: slow.fullmatch(short), runs=1)
    t_long = fastest(lambda: slow.fullmatch(longer), runs=1)
    assert t_long > 10 * t_short
    regex = compile_identity("/(a+)+$/")
    assert regex is not None and regex.fullmatch(longer) is None


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_evaluate_with_the_longest_allowed_identity_is_fast(pattern: str) -> None:
    """The groups of a match (a slower pass than the decision) included."""
    rules = make_rules(
        {"identity": pattern, "user": "nobody"},
        {"identity": pattern, "user": r"x\1"},
        {"identity": "/(a+)+(.)/", "user": r"\1\2"},
    )
    for tail in ("!", "a"):
        identity = "a" * (MAX_IDENTITY_CHARS - 1) + tail
        assert len(identity) == MAX_IDENTITY_CHARS

        def run(identity: str = identity) -> None:
            result = evaluate(rules, (identity,), "alice", "app", V4, "reject")
            assert isinstance(result, Deny) and result.reason == "user_mismatch"

        assert fastest(run) < 0.1


@pytest.mark.parametrize(
    "identities",
    [
        pytest.param(("a" * KIB64 + "!",), id="one-64k-entry"),
        pytest.param(("a" * (MAX_IDENTITY_CHARS + 1),), id="one-entry-over"),
        pytest.param(("alice", "a" * MAX_IDENTITY_CHARS), id="entries-add-up-over"),
        pytest.param(("alice",) * (MAX_IDENTITY_CHARS // 5 + 1), id="many-short-entries"),
    ],
)
def test_identity_over_the_bound_matches_no_rule(identities: tuple[str, ...]) -> None:
    rules = make_rules({"identity": "/.*/", "user": "alice"})
    started = time.perf_counter()
    result = evaluate(rules, identities, "alice", "app", V4, "rewrite")
    assert time.perf_counter() - started < 0.1
    assert isinstance(result, Deny) and result.reason == "no_rule"
    assert len(result.message) < 400


def test_groups_are_found_only_when_the_user_needs_them() -> None:
    regex = compile_identity("/(.*a){20}/")
    assert regex is not None
    match = regex.fullmatch("a" * KIB64)
    assert match is not None
    assert match.group(0) == "a" * KIB64  # the slow pass, on demand
    assert match.group(1) == "a"
    assert regex.fullmatch("a" * 19) is None


def test_identity_at_the_bound_is_still_evaluated() -> None:
    rules = make_rules({"identity": "/(a+)/", "user": "alice"})
    identities = ("a" * (MAX_IDENTITY_CHARS - 10), "a" * 10)
    result = evaluate(rules, identities, "alice", "app", V4, "reject")
    assert result == Allow("alice", 0, None, identities[0], False)


# ---------------------------------------------------------------- refused syntax


UNSUPPORTED = [
    pytest.param(r"/(a)\1/", r"invalid escape sequence: \1", id="backreference"),
    pytest.param(r"/(?P<n>a)(?P=n)/", "invalid perl operator: (?P", id="named-backreference"),
    pytest.param("/(?=a)a/", "invalid perl operator: (?=", id="lookahead"),
    pytest.param("/(?!a)b/", "invalid perl operator: (?!", id="negative-lookahead"),
    pytest.param("/(?<=a)b/", "invalid perl operator: (?<", id="lookbehind"),
    pytest.param("/(?>a+)b/", "invalid perl operator: (?>", id="atomic-group"),
    pytest.param("/a++b/", "bad repetition operator: ++", id="possessive"),
    pytest.param(r"/alice\Z/", r"invalid escape sequence: \Z", id="python-end-anchor"),
]


@pytest.mark.parametrize(("pattern", "reason"), UNSUPPORTED)
def test_unsupported_pattern_is_a_config_error_naming_its_key(pattern: str, reason: str) -> None:
    rules = [{"identity": "alice", "user": "alice"}, {"identity": pattern, "user": "bob"}]
    with pytest.raises(ConfigError) as err:
        make_rules(*rules)
    message = str(err.value)
    assert message.startswith(f"rules[1].identity: is not a valid regex: {reason}")
    assert "no backreferences, lookahead, lookbehind" in message


def test_syntax_error_names_the_key_without_the_dialect_hint() -> None:
    with pytest.raises(
        ConfigError, match=r"^rules\[0\]\.identity: is not a valid regex: missing \)"
    ):
        make_rules({"identity": "/(alice/", "user": "alice"})


def test_compile_errors_are_not_printed_by_re2(capfd: pytest.CaptureFixture[str]) -> None:
    """RE2 logs parse errors to stderr itself unless told not to; that would bypass the log."""
    with pytest.raises(PatternError):
        compile_identity(r"/(a)\1/")
    out = capfd.readouterr()
    assert out.err == "" and out.out == ""


@pytest.mark.parametrize(("pattern", "reason"), UNSUPPORTED[:3])
def test_check_reports_the_unsupported_pattern(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pattern: str, reason: str
) -> None:
    data = {
        "tls": TLS,
        "backends": BACKENDS,
        "rules": [{"identity": "alice", "user": "alice"}, {"identity": pattern, "user": "bob"}],
    }
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(data))
    assert cli.main(["check", "--config", str(path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert any(
        line.startswith(f"error: rules[1].identity: is not a valid regex: {reason}")
        for line in lines
    ), lines


def test_run_exits_2_naming_the_rule(tmp_path: Path) -> None:
    data = {
        "tls": TLS,
        "backends": BACKENDS,
        "rules": [{"identity": "alice", "user": "alice"}, {"identity": "/(?=a)a/", "user": "a"}],
    }
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(data))
    out = subprocess.run(
        [sys.executable, "-m", "pgtls_proxy", "run", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        "pgtls-proxy: configuration error: rules[1].identity: is not a valid regex:"
        " invalid perl operator: (?= (the RE2 dialect has no backreferences, lookahead,"
        " lookbehind, atomic groups or possessive quantifiers)"
    ]


def test_group_reference_beyond_the_groups_is_still_refused() -> None:
    with pytest.raises(ConfigError, match=r"^rules\[0\]\.user: refers to group \\2 but"):
        make_rules({"identity": "/(a)-b/", "user": r"\2"})


# ---------------------------------------------------------------- same meaning as re


PARITY = [
    (r"svc-(.+)", ["svc-api", "svc-", "xsvc-api", "svc-a\nb"]),
    (r"(\w+)@example\.com", ["bob@example.com", "bob@example.com.evil", "@example.com"]),
    (r"(.*)@(.*)\.example\.com", ["a@b.example.com", "a@b.c.example.com", "a@example.com"]),
    (
        r"spiffe://example\.org/ns/([^/]+)/sa/([^/]+)",
        ["spiffe://example.org/ns/prod/sa/app", "spiffe://example.org/ns/prod/sa/app/x"],
    ),
    (r"(?i)alice", ["alice", "ALICE", "Alice2"]),
    (r"(?P<team>[a-z]+)\.(ops|dev)", ["web.ops", "web.qa", "Web.ops"]),
    (r"app-(.*)", ["app-reporting", "app-", "app"]),
    (r"(a)?b", ["b", "ab", "aab"]),
    (r"a|b", ["a", "b", "ab"]),
    (r"[0-9]{2,4}-x", ["12-x", "1-x", "12345-x"]),
    (r"^alice$", ["alice", "alice\n"]),
    (r".*", ["", "anything", "two\nlines"]),
    (r"(?s).*", ["two\nlines"]),
    (r"\d+", ["123", "١٢٣"]),
]


@pytest.mark.parametrize(
    ("pattern", "text"),
    [(p, t) for p, texts in PARITY for t in texts],
)
def test_patterns_operators_write_mean_what_they_did(pattern: str, text: str) -> None:
    theirs = re.fullmatch(pattern, text, re.ASCII)
    ours = compile_identity(f"/{pattern}/")
    assert ours is not None
    mine = ours.fullmatch(text)
    assert (mine is None) == (theirs is None)
    if mine is not None and theirs is not None:
        assert ours.groups == theirs.re.groups
        assert [mine.group(i) for i in range(ours.groups + 1)] == [
            theirs.group(i) for i in range(theirs.re.groups + 1)
        ]


def test_shorthand_classes_are_ascii() -> None:
    r"""RE2's ``\w``/``\d``/``\s`` are ASCII (Python's are Unicode); ``\pL`` is the Unicode one."""
    word = compile_identity(r"/\w+/")
    letters = compile_identity(r"/\pL+/")
    assert word is not None and letters is not None
    assert word.fullmatch("josé") is None
    assert letters.fullmatch("josé") is not None


def test_groups_map_to_the_user_through_re2() -> None:
    rules = make_rules(
        {"identity": r"/(\w+)\.(ops|dev)@example\.com/", "user": r"\1_\2"},
        {"identity": r"/(a)?(b)/", "user": r"x\1y\2"},
    )
    assert rules[0].identity_regex is not None
    assert isinstance(rules[0].identity_regex, IdentityPattern)
    result = evaluate(rules, ("web.ops@example.com",), "web_ops", "app", V4, "reject")
    assert result == Allow("web_ops", 0, None, "web.ops@example.com", False)
    # A group that did not take part becomes empty, as with re.
    result = evaluate(rules, ("b",), "xyb", "app", V4, "reject")
    assert result == Allow("xyb", 1, None, "b", False)
