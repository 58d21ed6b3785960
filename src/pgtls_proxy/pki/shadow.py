"""Rules that can never match because an earlier rule always decides first.

Rules are tried in order and the first match decides, so a rule placed after
a broader one is dead text, and usually a mistake (the intended exception was
written below the general case). ``check`` reports them.

The test is deliberately conservative: a rule counts as shadowed only when an
earlier rule provably matches every (identity, user, database, source) it
would, and then decides. Anything that needs regex containment beyond the
obvious cases is given the benefit of the doubt.
"""

from __future__ import annotations

from collections.abc import Sequence

from pgtls_proxy.pki.rules import Rule, uses_groups

_MATCH_ANYTHING = frozenset({".*", "(.*)", "^.*$"})


def _identity_covers(earlier: Rule, later: Rule) -> bool:
    if earlier.identity_regex is None:
        return later.identity_regex is None and earlier.identity == later.identity
    if earlier.identity_regex.pattern in _MATCH_ANYTHING:
        return True
    if later.identity_regex is None:
        return earlier.identity_regex.fullmatch(later.identity) is not None
    return earlier.identity == later.identity


def _databases_cover(earlier: Rule, later: Rule) -> bool:
    if "*" in earlier.databases:
        return True
    return "*" not in later.databases and set(later.databases) <= set(earlier.databases)


def _sources_cover(earlier: Rule, later: Rule) -> bool:
    return all(
        any(
            net.version == wide.version and net.subnet_of(wide)  # type: ignore[arg-type]
            for wide in earlier.sources
        )
        for net in later.sources
    )


def _user_covers(earlier: Rule, later: Rule, rewrite: bool) -> bool:
    """Whether ``earlier`` decides for every requested user ``later`` would accept.

    A mapped user built from regex groups may come out empty, and an empty
    mapping decides nothing, so such rules never count as covering.
    """
    if earlier.action == "reject":
        return True
    if earlier.user is None or uses_groups(earlier.user):
        return False
    if rewrite:
        return True
    if later.action == "reject" or later.user is None or uses_groups(later.user):
        return False  # a later reject still catches the users the earlier allow does not map
    return earlier.user == later.user


def shadowed_rules(rules: Sequence[Rule], on_user_mismatch: str) -> list[tuple[int, int]]:
    """``(later, earlier)`` index pairs: ``later`` never matches because of ``earlier``."""
    rewrite = on_user_mismatch == "rewrite"
    found = []
    for j, later in enumerate(rules):
        for earlier in rules[:j]:
            if (
                _identity_covers(earlier, later)
                and _databases_cover(earlier, later)
                and _sources_cover(earlier, later)
                and _user_covers(earlier, later, rewrite)
            ):
                found.append((later.index, earlier.index))
                break
    return found
