"""Certificate, key and CRL files: notice when they change on disk.

docs/reference.md promises that changed CRL and certificate files reach new
handshakes within 5 seconds, without a signal. Polling ``stat()`` once a second does
that on every filesystem (NFS, overlay, Kubernetes secret volumes that swap a
symlink) without a dependency, for a handful of system calls per second.

A change is applied once two polls in a row agree on it, so a file caught
half-written is read again when its writer is done: at most about two poll
intervals plus the rebuild. This module only polls: the rebuild, for a
change and for SIGHUP alike, is :class:`pgtls_proxy.snapshot.SnapshotBuilder`'s,
so both paths share the CRL memory (a CRL file that turns bad keeps its
previous content) and the view of what was last loaded.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

import trio

from pgtls_proxy.config import Config
from pgtls_proxy.pki.revocation import crl_sources

POLL_INTERVAL = 1.0

# (device, inode, size, mtime, ctime) of a file, or None when it is missing.
FileStamp = tuple[int, int, int, int, int] | None
FileStamps = tuple[tuple[str, FileStamp], ...]


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


def stamps(paths: Iterable[Path]) -> FileStamps:
    """What ``paths`` look like now; equal stamps mean nothing changed."""
    return tuple((str(path), _stamp(path)) for path in paths)


def snapshot(config: Config) -> FileStamps:
    """What the watched files look like now; equal snapshots mean nothing changed."""
    return stamps(watched_files(config))


class Settle:
    """Says when a change has held still: two polls in a row that agree on it."""

    def __init__(self) -> None:
        self._pending: FileStamps | None = None

    def reset(self) -> None:
        """Start over (the files were just read): a change needs two more polls."""
        self._pending = None

    def settled(self, current: FileStamps, known: tuple[FileStamps | None, ...]) -> bool:
        """True when ``current`` is none of ``known`` and was seen at the last poll too."""
        if current in known:
            self._pending = None
            return False
        if current != self._pending:
            self._pending = current
            return False
        self._pending = None
        return True


class Built(Protocol):
    """What the watcher needs from the snapshot builder."""

    @property
    def built(self) -> FileStamps | None:
        """The files as they were when the last snapshot was built (or tried)."""

    @property
    def builds(self) -> int:
        """How many builds there have been, so a rebuild restarts the watch."""


class FileWatch:
    """Whether the files of a config changed since the builder last read them.

    A change counts once it has held still for one poll; a build (a reload,
    or the rebuild a change caused) starts the count again.
    """

    def __init__(self, builder: Built) -> None:
        self.builder = builder
        self._builds = builder.builds
        self._settle = Settle()

    def changed(self, config: Config) -> bool:
        """True once a change to the files of ``config`` has held still for one poll."""
        if self.builder.builds != self._builds:
            self._builds = self.builder.builds
            self._settle.reset()
        return self._settle.settled(snapshot(config), (self.builder.built,))


async def watch_files(
    watch: FileWatch,
    config: Callable[[], Config],
    on_change: Callable[[], object],
    interval: float = POLL_INTERVAL,
) -> None:
    """Poll forever; call ``on_change`` (which rebuilds through the builder) on a change."""
    while True:
        await trio.sleep(interval)
        if watch.changed(config()):
            on_change()
