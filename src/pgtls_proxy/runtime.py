"""The state a running proxy shares between its connections.

A :class:`Snapshot` (the config and everything loaded from the files it
names) is built in one piece from a config and swapped in one
assignment on reload, so a connection that took a snapshot at accept time
keeps a consistent view (rules, contexts, CRLs) for its whole life.
"""

from __future__ import annotations

import ipaddress
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from pgtls_proxy.backend_pool import BackendPool
from pgtls_proxy.cancel import CancelRegistry
from pgtls_proxy.config import BackendSettings, Config
from pgtls_proxy.metrics import Metrics
from pgtls_proxy.netio import ByteStream, TLSStream
from pgtls_proxy.passwords import PasswordsFile
from pgtls_proxy.pki import contexts
from pgtls_proxy.pki.peer import CertificateCapture
from pgtls_proxy.pki.revocation import CRLLoader, RevocationChecker, load_revocation
from pgtls_proxy.secretfiles import require_private
from pgtls_proxy.wire.auth import PasswordAnswerer, tls_server_end_point
from pgtls_proxy.wire.login import Authenticator


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a new connection needs, built together from one config."""

    config: Config
    server_context: ssl.SSLContext
    backend_contexts: dict[str, ssl.SSLContext | None]
    revocation: RevocationChecker
    server_cert_not_after: datetime
    # Where a connection moves once its handshake is done, and what saw the
    # client's certificate during it (see pki.peer).
    established_context: ssl.SSLContext | None = None
    capture: CertificateCapture | None = None
    # The metrics endpoint's context when ``metrics.tls`` is set.
    metrics_context: ssl.SSLContext | None = None


def build_state(config: Config, crls: CRLLoader | None = None) -> Snapshot:
    """Load every file the config names; raise ConfigError/TLSConfigError.

    ``crls`` is the process's long-lived loader, so a CRL file that turned
    bad keeps its previous content; without it every file loads afresh.
    A CRL that fails to load is not an exception: it is listed in
    ``revocation.problems`` (strict mode then fails closed for its issuer).
    A key or passwords file that others may read raises InsecureFileError.
    """
    require_private(config)
    tls = config.tls
    server_certs = contexts.load_server_certificates(tls)
    revocation = load_revocation(tls, contexts.load_client_cas(tls), crls)
    capture = CertificateCapture()
    server_ctx = contexts.server_context(
        tls,
        revocation.pem_for_openssl(),
        crl_check=revocation.openssl_crl_check,
        capture=capture,
    )
    backend_ctxs: dict[str, ssl.SSLContext | None] = {}
    for name, backend in config.backends.items():
        backend_ctxs[name] = (
            None
            if backend.tls.mode == "disable"
            else contexts.backend_context(backend.tls, f"backends.{name}.tls")
        )
    return Snapshot(
        config=config,
        server_context=server_ctx,
        backend_contexts=backend_ctxs,
        revocation=revocation,
        server_cert_not_after=server_certs[0].not_valid_after_utc,
        established_context=contexts.established_context(tls),
        capture=capture,
        metrics_context=(
            contexts.metrics_context(config.metrics.tls)
            if config.metrics.tls is not None and config.metrics.address is not None
            else None
        ),
    )


@dataclass(slots=True)
class Runtime:
    """Mutable process-wide state: the current snapshot and live counters."""

    state: Snapshot
    metrics: Metrics
    cancels: CancelRegistry = field(default_factory=CancelRegistry)
    connections: int = 0
    draining: bool = False
    ready: bool = False
    # With several workers: the hand-off socket of the worker that owns a
    # substitute pid, or None when this process owns it.
    cancel_peer: Callable[[int], Path | None] | None = None
    passwords: dict[Path, PasswordsFile] = field(default_factory=dict)
    pool: BackendPool | None = None

    def __post_init__(self) -> None:
        if self.pool is None:
            self.pool = BackendPool(self.metrics)

    def install(self, state: Snapshot) -> None:
        """Swap in a new state; established sessions keep their snapshot."""
        self.state = state
        self.metrics.server_cert_expiry.set(state.server_cert_not_after.timestamp())
        self.metrics.declare_backends(list(state.config.backends))
        # Issuers gone since the last state lose their series.
        self.metrics.crl_next_update.clear()
        for issuer, when in state.revocation.next_updates().items():
            self.metrics.crl_next_update.labels(issuer).set(when.timestamp())

    @property
    def config(self) -> Config:
        return self.state.config

    def authenticator_for(
        self, backend: BackendSettings, user: str, stream: ByteStream
    ) -> Authenticator | None:
        """The answerer for the backend's password challenge, if we hold a secret."""
        path = backend.auth.passwords_file
        if path is None:
            return None
        store = self.passwords.get(path)
        if store is None:
            store = self.passwords[path] = PasswordsFile(path)
        secret = store.lookup(user)
        if secret is None:
            return None
        server_cert = (
            stream.ssl_object.getpeercert(binary_form=True)
            if isinstance(stream, TLSStream)
            else None
        )
        return PasswordAnswerer(
            user,
            secret,
            describe=f'backend "{backend.name}"',
            channel_binding=tls_server_end_point(server_cert) if server_cert else None,
            cleartext_ok=cleartext_allowed(backend, over_tls=isinstance(stream, TLSStream)),
        )


def cleartext_allowed(backend: BackendSettings, *, over_tls: bool) -> bool:
    """May a cleartext password go to this backend?

    Over TLS, or to a loopback address (nothing leaves the host), or when the
    operator said so with ``auth.allow_cleartext_over_plaintext``.
    """
    return (
        over_tls
        or _is_loopback(backend.address.host)
        or backend.auth.allow_cleartext_over_plaintext
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
