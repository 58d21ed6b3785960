"""The typed outcomes: the label values of docs/reference.md, each a pre-created metric child."""

from __future__ import annotations

import ssl

from pgtls_proxy import metrics as m
from pgtls_proxy.outcomes import HandshakeResult, Outcome
from pgtls_proxy.pki.contexts import _REASONS, _VERIFY_CODES, classify_handshake_error

REFERENCE_HANDSHAKE_RESULTS = [
    "ok",
    "no_certificate",
    "unknown_ca",
    "expired",
    "not_yet_valid",
    "revoked",
    "crl_unavailable",
    "bad_certificate",
    "protocol_version",
    "no_alpn",
    "timeout",
    "aborted",
    "plaintext_rejected",
]
REFERENCE_SESSION_OUTCOMES = [
    "completed",
    "denied",
    "backend_error",
    "startup_error",
    "client_error",
    "terminated",
]


def test_the_enums_are_the_spec_label_values() -> None:
    assert [str(r) for r in HandshakeResult] == REFERENCE_HANDSHAKE_RESULTS
    assert [str(o) for o in Outcome] == REFERENCE_SESSION_OUTCOMES


def test_every_member_has_its_counter_child() -> None:
    """A session's last act counts its outcome: no member may be missing there."""
    metrics = m.Metrics()
    assert set(metrics.handshake_by_result) == set(HandshakeResult)
    assert set(metrics.session_by_outcome) == set(Outcome)
    for outcome in Outcome:
        metrics.session_by_outcome[outcome].inc()
        value = metrics.registry.get_sample_value("pgtls_sessions_total", {"outcome": outcome})
        assert value == 1.0


def test_the_classifier_answers_with_members() -> None:
    assert all(isinstance(r, HandshakeResult) for r in _VERIFY_CODES.values())
    assert all(isinstance(r, HandshakeResult) for r in _REASONS.values())
    assert classify_handshake_error(ssl.SSLEOFError()) is HandshakeResult.ABORTED
    assert classify_handshake_error(ConnectionResetError()) is HandshakeResult.ABORTED
