"""The label values a connection can end with, as types.

docs/reference.md's ``pgtls_handshakes_total`` results and ``pgtls_sessions_total``
outcomes are written into metrics, audit records and log lines from many
places; as enums a misspelt one is a type error rather than a ``KeyError``
while a session closes. :mod:`pgtls_proxy.metrics` pre-creates one counter
child per member, so every value here is a label a dashboard sees.

Pure: no I/O, importable from the sans-I/O layers (``pki.contexts`` returns a
:class:`HandshakeResult`).
"""

from __future__ import annotations

from enum import StrEnum


class HandshakeResult(StrEnum):
    """``result`` of ``pgtls_handshakes_total``: how the client's TLS handshake ended."""

    OK = "ok"
    NO_CERTIFICATE = "no_certificate"
    UNKNOWN_CA = "unknown_ca"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    REVOKED = "revoked"
    CRL_UNAVAILABLE = "crl_unavailable"
    BAD_CERTIFICATE = "bad_certificate"
    PROTOCOL_VERSION = "protocol_version"
    NO_ALPN = "no_alpn"
    TIMEOUT = "timeout"
    ABORTED = "aborted"
    PLAINTEXT_REJECTED = "plaintext_rejected"


class Outcome(StrEnum):
    """``outcome`` of ``pgtls_sessions_total`` and of the audit record."""

    COMPLETED = "completed"
    DENIED = "denied"
    BACKEND_ERROR = "backend_error"
    STARTUP_ERROR = "startup_error"
    CLIENT_ERROR = "client_error"
    # Ended by the proxy (revoked or expired certificate, rules, admin).
    TERMINATED = "terminated"


class Phase(StrEnum):
    """Where a connection is in its life; the startup timeout's message depends on it."""

    NEGOTIATION = "negotiation"
    HANDSHAKE = "handshake"
    STARTUP = "startup"
    BACKEND = "backend"
    RELAY = "relay"
