"""The state a running proxy shares between its connections.

A :class:`Snapshot` (the config and everything loaded from the files it
names) is built in one piece from a config and swapped in one
assignment on reload, so a connection that took a snapshot at accept time
keeps a consistent view (rules, contexts, CRLs) for its whole life.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pgtls_proxy.backend_pool import BackendPool
from pgtls_proxy.cancel import CancelRegistry
from pgtls_proxy.config import BackendSettings, Config, ConfigError
from pgtls_proxy.logsetup import LOGGER_NAME
from pgtls_proxy.metrics import Metrics
from pgtls_proxy.netio import ByteStream, TLSStream
from pgtls_proxy.passwords import PasswordsFile
from pgtls_proxy.pki import contexts
from pgtls_proxy.pki.contexts import TLSConfigError
from pgtls_proxy.pki.peer import CertificateCapture
from pgtls_proxy.pki.revocation import CRLLoader, RevocationChecker, load_revocation
from pgtls_proxy.secretfiles import require_private
from pgtls_proxy.watch import FileStamps, snapshot
from pgtls_proxy.wire.auth import PasswordAnswerer, tls_server_end_point
from pgtls_proxy.wire.login import Authenticator

if TYPE_CHECKING:
    from pgtls_proxy.bundle import Bundle

_log = logging.getLogger(f"{LOGGER_NAME}.watch")  # where these lines always came from

# What building a snapshot from a config file can raise: a reload that
# raises one of these keeps the running snapshot.
BUILD_ERRORS = (ConfigError, TLSConfigError, OSError, ValueError)


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


class SnapshotBuilder:
    """How this process builds snapshots, from disk or from the supervisor's bundle.

    ``count_errors`` is off in all but one worker process, so a bad CRL
    counts once in the summed metrics.
    """

    def __init__(self, metrics: Metrics | None = None, *, count_errors: bool = True) -> None:
        self.metrics = metrics
        self.count_errors = count_errors
        self.crls = CRLLoader()
        self.built: FileStamps | None = None
        self.builds = 0

    def build(self, config: Config) -> Snapshot:
        """Build a snapshot from ``config`` and the files as they are now.

        The files are stamped before they are read, so a change that
        lands during the build is seen by the next poll. A failed build is
        remembered too: the same broken files are not retried every second.
        """
        self.built = snapshot(config)
        self.builds += 1
        try:
            state = build_state(config, self.crls)
        except BaseException:
            self.crls.forget_reports()  # nothing was logged: say it at the next build
            raise
        self._report(state)
        return state

    def build_bundle(self, bundle: Bundle, config: Config) -> Snapshot:
        """Build from the supervisor's copy of the files (see :mod:`pgtls_proxy.bundle`).

        The files count as built as they were when the copy was taken, so
        the watcher rebuilds from disk as soon as they differ from it.
        """
        from pgtls_proxy.bundle import build

        state = build(bundle, config, self.crls)
        self.built = bundle.snapshot(config)
        self.builds += 1
        self._report(state)
        return state

    def _report(self, state: Snapshot) -> None:
        for problem in state.revocation.problems:
            if problem.repeated:
                continue  # an older CRL reported by an earlier build, unchanged since
            _log.error("P: CRL %s: %s", problem.source.key, problem)
            if self.metrics is not None and self.count_errors:
                self.metrics.crl_load_errors.inc()
        now = datetime.now(UTC)
        for item in state.revocation.crls:
            if not item.is_current(now):
                _log.warning(
                    "P: the CRL of %s in %s is outside its validity (nextUpdate %s)%s",
                    item.issuer,
                    item.source.path,
                    item.next_update,
                    "; strict revocation refuses the clients it covers"
                    if state.revocation.mode == "strict"
                    else "",
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
        state.revocation.export(self.metrics)

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
