"""Certificate, key and CRL files: rebuild the TLS state when they change on disk.

The SPEC wants changed CRL and certificate files to reach new handshakes
within 5 seconds, without a signal. Polling ``stat()`` once a second does
that on every filesystem (NFS, overlay, Kubernetes secret volumes that swap a
symlink) without a dependency, for a handful of system calls per second.

A change is applied once two polls in a row agree on it, so a file caught
half-written is read again when its writer is done: at most about two poll
intervals plus the rebuild. SIGHUP rebuilds through the same
:class:`TLSFiles`, so both paths share the CRL memory (a CRL file that turns
bad keeps its previous content) and the view of what was last loaded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from pgtls_proxy.config import Config
from pgtls_proxy.logsetup import LOGGER_NAME
from pgtls_proxy.metrics import Metrics
from pgtls_proxy.pki.revocation import CRLLoader, crl_sources
from pgtls_proxy.runtime import TLSState, build_state

if TYPE_CHECKING:
    from pgtls_proxy.bundle import Bundle

_log = logging.getLogger(f"{LOGGER_NAME}.watch")

POLL_INTERVAL = 1.0

# (device, inode, size, mtime, ctime) of a file, or None when it is missing.
FileStamp = tuple[int, int, int, int, int] | None
Snapshot = tuple[tuple[str, FileStamp], ...]


def watched_files(config: Config) -> list[Path]:
    """Every file whose content goes into a TLS state built from ``config``."""
    tls = config.tls
    paths = [tls.cert_file, tls.key_file, tls.client_ca_file]
    if tls.key_passphrase_file is not None:
        paths.append(tls.key_passphrase_file)
    metrics_tls = config.metrics.tls
    if metrics_tls is not None and config.metrics.address is not None:
        paths.extend([metrics_tls.cert_file, metrics_tls.key_file, metrics_tls.client_ca_file])
    if tls.revocation != "off":
        paths.extend(source.path for source in crl_sources(tls))
    for backend in config.backends.values():
        for path in (backend.tls.ca_file, backend.tls.cert_file, backend.tls.key_file):
            if path is not None:
                paths.append(path)
    return paths


def file_stamp(path: Path) -> FileStamp:
    """What ``path`` looks like now (None when missing), as snapshots record it."""
    return _stamp(path)


def _stamp(path: Path) -> FileStamp:
    try:
        st = os.stat(path)  # follows symlinks: a swapped link target is a change
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def snapshot(config: Config) -> Snapshot:
    """What the watched files look like now; equal snapshots mean nothing changed."""
    return tuple((str(path), _stamp(path)) for path in watched_files(config))


class TLSFiles:
    """How this process builds TLS states, and whether their files changed since.

    ``count_errors`` is off in all but one worker process, so a bad CRL
    counts once in the summed metrics.
    """

    def __init__(self, metrics: Metrics | None = None, *, count_errors: bool = True) -> None:
        self.metrics = metrics
        self.count_errors = count_errors
        self.crls = CRLLoader()
        self._built: Snapshot | None = None
        self._pending: Snapshot | None = None

    def build(self, config: Config) -> TLSState:
        """Build a state from ``config`` and the files as they are now.

        The snapshot is taken before the files are read, so a change that
        lands during the build is seen by the next poll. A failed build is
        remembered too: the same broken files are not retried every second.
        """
        self._built = snapshot(config)
        self._pending = None
        try:
            state = build_state(config, self.crls)
        except BaseException:
            self.crls.forget_reports()  # nothing was logged: say it at the next build
            raise
        self._report(state)
        return state

    def build_bundle(self, bundle: Bundle, config: Config) -> TLSState:
        """Build from the supervisor's copy of the files (see :mod:`pgtls_proxy.bundle`).

        The files count as built as they were when the copy was taken, so
        the watcher rebuilds from disk as soon as they differ from it.
        """
        from pgtls_proxy.bundle import build

        state = build(bundle, config, self.crls)
        self._built = bundle.snapshot(config)
        self._pending = None
        self._report(state)
        return state

    def _report(self, state: TLSState) -> None:
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

    def changed(self, config: Config) -> bool:
        """True once a change to the files of ``config`` has held still for one poll."""
        current = snapshot(config)
        if current == self._built:
            self._pending = None
            return False
        if current != self._pending:
            self._pending = current
            return False
        return True


async def watch_files(
    files: TLSFiles,
    config: Callable[[], Config],
    on_change: Callable[[], object],
    interval: float = POLL_INTERVAL,
) -> None:
    """Poll forever; call ``on_change`` (which rebuilds through ``files``) on a change."""
    while True:
        await trio.sleep(interval)
        if files.changed(config()):
            on_change()
