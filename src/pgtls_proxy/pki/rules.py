"""Certificate identity -> database user policy, and backend routing.

A pure function of the configured rules and one connection's facts, so the
whole policy can be tested from tables, like PostgreSQL's pg_hba/pg_ident.
Rules are tried in order and, within a rule, the certificate's identity
entries in certificate order; the first (rule, entry) that matches decides.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pgtls_proxy.config import BackendSettings, Rule

SourceAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
DenyReason = Literal["no_rule", "reject_rule", "user_mismatch"]

_GROUP_REF = re.compile(r"\\([1-9])")
# Client-facing messages quote values from the certificate and the startup
# packet; keep them printable and bounded so they cannot break a log line.
_MAX_SHOWN = 256


@dataclass(frozen=True, slots=True)
class Allow:
    """The client may connect, as ``user``, via the rule at ``rule_index``."""

    user: str
    rule_index: int
    backend: str | None
    identity: str
    rewritten: bool


@dataclass(frozen=True, slots=True)
class Deny:
    """The client is refused; ``reason`` is the metric label, ``message`` goes to the client."""

    reason: DenyReason
    rule_index: int | None
    message: str


Decision = Allow | Deny


def substitute(template: str, match: re.Match[str] | None) -> str:
    r"""Replace ``\1``..``\9`` with the match's groups, as pg_ident does.

    A group that did not take part in the match becomes empty. Without a
    match, and for a backslash before anything else, the text stays as is.
    """
    if match is None:
        return template
    groups = match.re.groups

    def replace(ref: re.Match[str]) -> str:
        n = int(ref.group(1))
        if n > groups:
            return ref.group(0)
        return match.group(n) or ""

    return _GROUP_REF.sub(replace, template)


def _source_matches(rule: Rule, source: SourceAddress) -> bool:
    """An IPv4-mapped IPv6 client (``::ffff:a.b.c.d``) also matches IPv4 CIDRs."""
    mapped = source.ipv4_mapped if isinstance(source, ipaddress.IPv6Address) else None
    for network in rule.sources:
        if source in network:
            return True
        if mapped is not None and mapped in network:
            return True
    return False


def _database_matches(rule: Rule, database: str) -> bool:
    return "*" in rule.databases or database in rule.databases


def _identity_match(rule: Rule, entry: str) -> tuple[bool, re.Match[str] | None]:
    if rule.identity_regex is not None:
        m = rule.identity_regex.fullmatch(entry)
        return m is not None, m
    return entry == rule.identity, None


def _show(value: str) -> str:
    """Quote a value for a message, escaping quotes and control characters."""
    if len(value) > _MAX_SHOWN:
        value = value[:_MAX_SHOWN] + "..."
    out = []
    for ch in value:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch.isprintable():
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return '"' + "".join(out) + '"'


def denial_message(identities: Sequence[str], user: str, database: str) -> str:
    """The FATAL text for any denial: the facts of the attempt, never the policy."""
    identity = _show(identities[0]) if identities else "(none)"
    return (
        f"certificate identity {identity} is not allowed to connect"
        f" as user {_show(user)} to database {_show(database)}"
    )


def evaluate(
    rules: Sequence[Rule],
    identities: Sequence[str],
    user: str,
    database: str,
    source: SourceAddress,
    on_user_mismatch: str,
) -> Decision:
    """Decide whether a client may connect, and as which database user.

    ``identities`` are the values of the configured certificate field, in
    certificate order (one for ``cn``/``subject``, any number for ``san_*``).
    ``on_user_mismatch`` other than ``"rewrite"`` behaves as ``"reject"``, so an
    unexpected value fails closed.
    """
    rewrite = on_user_mismatch == "rewrite"
    mismatched = False
    for rule in rules:
        if not _database_matches(rule, database) or not _source_matches(rule, source):
            continue
        for entry in identities:
            matched, match = _identity_match(rule, entry)
            if not matched:
                continue
            if rule.action == "reject":
                return Deny("reject_rule", rule.index, denial_message(identities, user, database))
            if rule.user is None:
                # Only a reject rule may omit the user; the parser enforces it.
                continue
            mapped = substitute(rule.user, match)
            if mapped and mapped == user:
                return Allow(mapped, rule.index, rule.backend, entry, rewritten=False)
            if mapped and rewrite:
                return Allow(mapped, rule.index, rule.backend, entry, rewritten=True)
            # pg_ident style: this (rule, entry) maps to another user; keep looking.
            mismatched = True
    reason: DenyReason = "user_mismatch" if mismatched else "no_rule"
    return Deny(reason, None, denial_message(identities, user, database))


def route(
    backends: Mapping[str, BackendSettings], rule_backend: str | None, database: str
) -> BackendSettings | None:
    """Pick the backend: the rule's, else one listing the database, else a ``*`` one."""
    if rule_backend is not None:
        return backends.get(rule_backend)
    for backend in backends.values():
        if database in backend.databases:
            return backend
    for backend in backends.values():
        if "*" in backend.databases:
            return backend
    return None
