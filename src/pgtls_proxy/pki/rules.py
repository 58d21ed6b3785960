"""Certificate identity -> database user policy, and backend routing.

A pure function of the configured rules and one connection's facts, so the
whole policy can be tested from tables, like PostgreSQL's pg_hba/pg_ident.
Everything about a rule lives here, as in PostgreSQL's hba.c: its fields
(:class:`Rule`, whose fields the config parser reads as the rule's keys),
compiling its identity, checking its user template, and evaluating it;
``config`` only reads the YAML and names the key of a problem.
Rules are tried in order and, within a rule, the certificate's identity
entries in certificate order; the first (rule, entry) that matches decides.

``/regex/`` identities are compiled here too, with RE2 (``google-re2``): its
automaton runs in time linear in the identity's length whatever the pattern,
so no certificate can make a rule like ``/(a+)+$/`` backtrack for seconds
while the worker's event loop (and every open session on it) waits. RE2 is
Python ``re`` without the constructs that need backtracking
(backreferences, lookaround, atomic groups, possessive quantifiers); such a
pattern is a configuration error, never a fallback to ``re``.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import re2

if TYPE_CHECKING:
    from pgtls_proxy.config import BackendSettings

SourceAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
DenyReason = Literal["no_rule", "reject_rule", "user_mismatch"]
RuleAction = Literal["allow", "reject"]

# A reference to a group of the identity's regex in a ``user`` template, as in
# pg_ident: ``\1`` to ``\9``. A backslash before anything else is literal text.
_GROUP_REF = re.compile(r"\\([1-9])")
# The identity entries of one certificate (``identity.field``) add up to at
# most this many characters, or the certificate matches no rule. Real ones
# are far shorter (a CN at most 64, a DNS name 253, an e-mail address 254,
# a SPIFFE ID 2048 bytes); the bound keeps what a hostile certificate costs
# the rules small: RE2 decides in linear time, but finding the groups of a
# match costs (length x pattern size), about 4 ms per KiB for /(.*a){20}/.
MAX_IDENTITY_CHARS = 4096
# RE2's reasons for the Python re constructs it leaves out on purpose.
_UNSUPPORTED = ("invalid perl operator", "invalid escape sequence", "bad repetition operator")
_UNSUPPORTED_HINT = (
    " (the RE2 dialect has no backreferences, lookahead, lookbehind,"
    " atomic groups or possessive quantifiers)"
)
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


class PatternError(ValueError):
    """A ``/regex/`` identity or a ``user`` template the rules cannot use."""


def _options(capture: bool) -> re2.Options:
    options = re2.Options()
    # RE2 would otherwise print its parse errors to stderr itself (through
    # absl logging), outside the log format; the caller gets the error anyway.
    options.log_errors = False
    options.never_capture = not capture
    return options


_DECIDE = _options(capture=False)
_CAPTURE = _options(capture=True)


@dataclass(frozen=True, slots=True)
class IdentityPattern:
    """A ``/regex/`` identity compiled by RE2, twice.

    Deciding whether an identity matches runs RE2's DFA, a single pass over
    the text. Finding the groups needs its slower NFA, whose cost grows with
    the pattern's size as well; so groups are computed only for a match,
    and only when a ``user`` template asks for them (:class:`IdentityMatch`).
    Equal when the pattern text is, like ``re.Pattern``.
    """

    pattern: str
    decide: re2._Regexp[str] = field(compare=False, repr=False)
    capture: re2._Regexp[str] = field(compare=False, repr=False)

    @property
    def groups(self) -> int:
        return self.capture.groups

    def fullmatch(self, text: str) -> IdentityMatch | None:
        """The whole of ``text`` matches (``re.fullmatch``), or None."""
        if self.decide.fullmatch(text) is None:
            return None
        return IdentityMatch(self, text)


class IdentityMatch:
    """A match whose groups are found on first use."""

    __slots__ = ("_found", "re", "string")

    def __init__(self, pattern: IdentityPattern, text: str) -> None:
        self.re = pattern
        self.string = text
        self._found: tuple[str | None, ...] | None = None

    def group(self, n: int = 0) -> str | None:
        """Group ``n`` as ``re.Match.group`` gives it (None: it took no part)."""
        if self._found is None:
            found = self.re.capture.fullmatch(self.string)
            assert found is not None, "the deciding and the capturing program disagree"
            self._found = tuple(found.group(i) for i in range(self.re.groups + 1))
        return self._found[n]


@dataclass(frozen=True, slots=True)
class Rule:
    """One line of policy (the ``rules`` list of the config); ``identity`` as written.

    Its fields are the keys of a rule and their defaults (the config parser
    reads them from here).

    ``identity_regex`` is set when the identity was written ``/regex/``;
    ``index`` is the rule's place in the file. Neither is a key.
    """

    index: int
    identity: str
    identity_regex: IdentityPattern | None
    user: str | None = None
    databases: tuple[str, ...] = ("*",)
    sources: tuple[IPNetwork, ...] = (
        ipaddress.ip_network("0.0.0.0/0"),
        ipaddress.ip_network("::/0"),
    )
    action: RuleAction = "allow"
    backend: str | None = None


def compile_identity(identity: str) -> IdentityPattern | None:
    r"""The compiled pattern of a ``/regex/`` identity, or None for a literal one.

    Raises :class:`PatternError` for a pattern RE2 cannot compile, with
    RE2's reason (for instance ``invalid escape sequence: \1``).
    """
    if not (len(identity) >= 2 and identity.startswith("/") and identity.endswith("/")):
        return None
    pattern = identity[1:-1]
    try:
        return IdentityPattern(
            pattern, re2.compile(pattern, _DECIDE), re2.compile(pattern, _CAPTURE)
        )
    except re2.error as exc:
        reason = exc.args[0] if exc.args else exc
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        hint = _UNSUPPORTED_HINT if str(reason).startswith(_UNSUPPORTED) else ""
        raise PatternError(f"is not a valid regex: {reason}{hint}") from None


def check_template(user: str, groups: int) -> None:
    r"""Raise :class:`PatternError` when ``user`` names a group (``\N``) the identity lacks."""
    for ref in _GROUP_REF.findall(user):
        if int(ref) > groups:
            raise PatternError(f"refers to group \\{ref} but the identity has {groups} group(s)")


def uses_groups(user: str) -> bool:
    r"""Whether the ``user`` template takes text from the identity (``\1`` to ``\9``).

    Such a user depends on the certificate and may even come out empty.
    """
    return _GROUP_REF.search(user) is not None


def substitute(template: str, match: IdentityMatch | re.Match[str] | None) -> str:
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
        # RE2, like re, gives None for a group that did not take part.
        value: str | None = match.group(n)
        return value or ""

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


def _identity_match(rule: Rule, entry: str) -> tuple[bool, IdentityMatch | re.Match[str] | None]:
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
    unexpected value fails closed. Identities that add up to more than
    ``MAX_IDENTITY_CHARS`` characters match no rule.
    """
    if sum(len(entry) for entry in identities) > MAX_IDENTITY_CHARS:
        # Longer than any real identity: fail closed before any pattern runs.
        return Deny("no_rule", None, denial_message(identities, user, database))
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
