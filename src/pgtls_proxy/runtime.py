"""The state a running proxy shares between its connections.

A :class:`TLSState` is built in one piece from a config and swapped in one
assignment on reload, so a connection that took a snapshot at accept time
keeps a consistent view (rules, contexts, CRLs) for its whole life.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from pgtls_proxy.cancel import CancelRegistry
from pgtls_proxy.config import BackendSettings, Config
from pgtls_proxy.metrics import Metrics
from pgtls_proxy.netio import ByteStream
from pgtls_proxy.pki import contexts
from pgtls_proxy.pki.revocation import RevocationChecker, load_revocation
from pgtls_proxy.wire.login import Authenticator


@dataclass(frozen=True, slots=True)
class TLSState:
    """Everything a new connection needs, built together from one config."""

    config: Config
    server_context: ssl.SSLContext
    backend_contexts: dict[str, ssl.SSLContext | None]
    revocation: RevocationChecker
    server_cert_not_after: datetime


def build_state(config: Config, now: datetime | None = None) -> TLSState:
    """Load every file the config names; raise ConfigError/TLSConfigError."""
    revocation = load_revocation(config.tls, now=now)
    server_ctx = contexts.server_context(
        config.tls, revocation.pem_for_openssl(), crl_check=revocation.openssl_crl_check
    )
    backend_ctxs: dict[str, ssl.SSLContext | None] = {}
    for name, backend in config.backends.items():
        backend_ctxs[name] = (
            None
            if backend.tls.mode == "disable"
            else contexts.backend_context(backend.tls, f"backends.{name}.tls")
        )
    cert = x509.load_pem_x509_certificates(config.tls.cert_file.read_bytes())[0]
    return TLSState(
        config=config,
        server_context=server_ctx,
        backend_contexts=backend_ctxs,
        revocation=revocation,
        server_cert_not_after=cert.not_valid_after_utc,
    )


@dataclass(slots=True)
class Runtime:
    """Mutable process-wide state: the current TLSState and live counters."""

    state: TLSState
    metrics: Metrics
    cancels: CancelRegistry = field(default_factory=CancelRegistry)
    connections: int = 0
    draining: bool = False
    ready: bool = False
    started: float = field(default_factory=time.monotonic)
    # With several workers: the hand-off socket of the worker that owns a
    # substitute pid, or None when this process owns it.
    cancel_peer: Callable[[int], Path | None] | None = None

    def install(self, state: TLSState) -> None:
        """Swap in a new state; established sessions keep their snapshot."""
        self.state = state
        self.metrics.server_cert_expiry.set(state.server_cert_not_after.timestamp())
        self.metrics.declare_backends(list(state.config.backends))
        state.revocation.export(self.metrics)

    @property
    def config(self) -> Config:
        return self.state.config

    def authenticator_for(
        self, backend: BackendSettings, user: str, stream: ByteStream
    ) -> Authenticator | None:
        """The answerer for the backend's password challenge, if we hold a secret."""
        return None

    def now(self) -> datetime:
        return datetime.now(UTC)
