"""Every metric of docs/reference.md, defined once, with its label children pre-created.

Pre-creating the children means a dashboard sees zeros before the first event
and the hot path never builds a label tuple: the relay adds bytes to a child it
bound when the session started.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from pgtls_proxy import __version__
from pgtls_proxy.outcomes import HandshakeResult, Outcome

# Label values derived from the enums the session writes them with.
HANDSHAKE_RESULTS: tuple[HandshakeResult, ...] = tuple(HandshakeResult)
NEGOTIATIONS = ("sslrequest", "direct")
SESSION_OUTCOMES: tuple[Outcome, ...] = tuple(Outcome)
POOL_RESULTS = ("reused", "kept", "discarded")
DENIAL_REASONS = ("no_rule", "reject_rule", "user_mismatch")
DIRECTIONS = ("client_to_backend", "backend_to_client")
# Beyond forwarded and unknown_key: "refused" a plaintext one with limits.plaintext_cancel
# off, "failed" the key was known but its backend could not be reached.
CANCEL_RESULTS = ("forwarded", "unknown_key", "refused", "failed")
RELOAD_RESULTS = ("ok", "failed")
# Connections closed at once by admission (pgtls_proxy.admission): the pending
# budget was full, the source held its share, an older pending connection of
# the biggest source made room for a newcomer, or no descriptor was left.
REFUSAL_REASONS = ("pending_full", "per_source", "evicted", "no_descriptors")
ACCEPT_ERRORS = ("emfile", "enfile", "other")

# Handshakes take milliseconds; the tail we care about is the timeout.
_HANDSHAKE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_DAY = 86400.0
_EXPIRY_BUCKETS = (
    _DAY,
    3 * _DAY,
    7 * _DAY,
    14 * _DAY,
    30 * _DAY,
    60 * _DAY,
    90 * _DAY,
    180 * _DAY,
    365 * _DAY,
    730 * _DAY,
)


MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_enabled() -> bool:
    """Worker processes write their samples to files the supervisor adds up."""
    return bool(os.environ.get(MULTIPROC_ENV))


class Metrics:
    """The proxy's metrics in their own registry (one per server instance).

    In a worker process (``PROMETHEUS_MULTIPROC_DIR`` set) the values live in
    memory-mapped files and the supervisor serves their sum; gauges then say
    how they combine across workers.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        multi = multiprocess_enabled()
        self.handshakes = Counter(
            "pgtls_handshakes_total", "Client TLS handshakes by result.", ["result"], registry=r
        )
        self.handshake_duration = Histogram(
            "pgtls_handshake_duration_seconds",
            "Time to complete a client TLS handshake.",
            ["negotiation"],
            buckets=_HANDSHAKE_BUCKETS,
            registry=r,
        )
        self.sessions = Counter(
            "pgtls_sessions_total", "Client connections by outcome.", ["outcome"], registry=r
        )
        self.sessions_active = Gauge(
            "pgtls_sessions_active",
            "Sessions relaying to a backend.",
            ["backend"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.auth_denied = Counter(
            "pgtls_auth_denied_total", "Clients refused by the rules.", ["reason"], registry=r
        )
        self.bytes = Counter("pgtls_bytes_total", "Bytes relayed.", ["direction"], registry=r)
        self.backend_connect_errors = Counter(
            "pgtls_backend_connect_errors_total",
            "Failed connections or logins to a backend.",
            ["backend"],
            registry=r,
        )
        self.backend_pool_idle = Gauge(
            "pgtls_backend_pool_idle",
            "Backend sessions kept for reuse (backends.<name>.pool), idle now.",
            ["backend"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.backend_pool_results = Counter(
            "pgtls_backend_pool_results_total",
            "What became of backend sessions at the pool: reused by a new client, "
            "kept after a client left, discarded (not idle, reset failed, pool full, "
            "expired, closed by the server).",
            ["backend", "result"],
            registry=r,
        )
        self.cancel_requests = Counter(
            "pgtls_cancel_requests_total", "CancelRequests received.", ["result"], registry=r
        )
        self.crl_next_update = Gauge(
            "pgtls_crl_next_update_timestamp_seconds",
            "nextUpdate of each loaded CRL, by issuer.",
            ["issuer"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.server_cert_expiry = Gauge(
            "pgtls_server_cert_expiry_timestamp_seconds",
            "notAfter of the server certificate in use.",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.client_cert_expiry = Histogram(
            "pgtls_client_cert_expiry_seconds",
            "Seconds left on each accepted client certificate.",
            buckets=_EXPIRY_BUCKETS,
            registry=r,
        )
        self.config_reloads = Counter(
            "pgtls_config_reloads_total", "Configuration reloads by result.", ["result"], registry=r
        )
        self.crl_load_errors = Counter(
            "pgtls_crl_load_errors_total",
            "CRL files that failed to load or verify, or held a CRL older than the one in"
            " force (the previous CRL stays in force).",
            registry=r,
        )
        self.file_reloads = Counter(
            "pgtls_tls_file_reloads_total",
            "Rebuilds of the TLS state after certificate, key or CRL files changed on disk.",
            ["result"],
            registry=r,
        )
        self.connections_refused = Counter(
            "pgtls_connections_refused_total",
            "Connections closed at once, before TLS or startup finished, by reason.",
            ["reason"],
            registry=r,
        )
        self.connections_pending = Gauge(
            "pgtls_connections_pending",
            "Connections accepted that are not sessions yet (TLS or startup under way).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.accept_errors = Counter(
            "pgtls_accept_errors_total",
            "Failed accept() calls on the listeners (emfile: this process is out of "
            "descriptors, enfile: the system is).",
            ["error"],
            registry=r,
        )
        self.crl_problems = Counter(
            "pgtls_crl_problems_total",
            "Handshakes let through in lenient mode despite a missing or stale CRL.",
            registry=r,
        )
        # A gauge rather than an Info: Info has no multi-process mode.
        self.build_info = Gauge(
            "pgtls_build_info",
            "Build information.",
            ["version"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.build_info.labels(__version__).set(1)
        if not multi:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)

        # Pre-created children: zeros for dashboards, no label lookups later.
        self.handshake_by_result = {k: self.handshakes.labels(k) for k in HANDSHAKE_RESULTS}
        self.handshake_time = {k: self.handshake_duration.labels(k) for k in NEGOTIATIONS}
        self.session_by_outcome = {k: self.sessions.labels(k) for k in SESSION_OUTCOMES}
        self.denied_by_reason = {k: self.auth_denied.labels(k) for k in DENIAL_REASONS}
        self.bytes_c2b, self.bytes_b2c = (self.bytes.labels(k) for k in DIRECTIONS)
        self.cancel_by_result = {k: self.cancel_requests.labels(k) for k in CANCEL_RESULTS}
        self.reload_by_result = {k: self.config_reloads.labels(k) for k in RELOAD_RESULTS}
        self.file_reload_by_result = {k: self.file_reloads.labels(k) for k in RELOAD_RESULTS}
        self.refused_by_reason = {k: self.connections_refused.labels(k) for k in REFUSAL_REASONS}
        self.accept_errors_by_error = {k: self.accept_errors.labels(k) for k in ACCEPT_ERRORS}

    def declare_backends(self, names: list[str]) -> None:
        """Create the per-backend children so each backend shows zeros."""
        for name in names:
            self.sessions_active.labels(name)
            self.backend_connect_errors.labels(name)
            self.backend_pool_idle.labels(name)
            for result in POOL_RESULTS:
                self.backend_pool_results.labels(name, result)
