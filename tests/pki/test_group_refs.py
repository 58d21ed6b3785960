r"""One meaning of a group reference in a ``user`` template: ``\1`` to ``\9``.

The parser's check, the substitution and ``check``'s shadowed-rule test all
read a template the same way, so a backslash before anything else (a
Windows-style ``DOMAIN\user``) is literal text everywhere.
"""

from __future__ import annotations

import re

import pytest

from pgtls_proxy.pki.rules import check_template, substitute, uses_groups
from tests.pki.test_shadow import shadows

LITERAL = "corp\\alice"


@pytest.mark.parametrize(
    ("template", "expected"),
    [("\\1", True), ("x\\9y", True), (LITERAL, False), ("a\\0", False), ("plain", False)],
)
def test_uses_groups(template: str, expected: bool) -> None:
    assert uses_groups(template) is expected


def test_a_literal_backslash_is_text_for_parser_and_substitution() -> None:
    check_template(LITERAL, 0)  # no group named, nothing to refuse
    match = re.fullmatch("(a)", "a")
    assert substitute(LITERAL, match) == LITERAL


def test_a_literal_backslash_user_can_be_shadowed() -> None:
    """It maps every client to the same user, so an identical later rule is dead text."""
    rule = {"identity": "alice", "user": LITERAL}
    assert shadows([rule, rule]) == [(1, 0)]


def test_a_group_reference_still_is_never_a_shadow() -> None:
    rule = {"identity": "/(.*)/", "user": "\\1"}
    assert shadows([rule, rule], "rewrite") == []
