"""How this process builds a :class:`~pgtls_proxy.runtime.Snapshot`: one builder.

The first snapshot, SIGHUP and changed files all build through one
:class:`SnapshotBuilder`, so they share the CRL memory (a CRL file that
turns bad keeps its previous content) and the record of what the files
looked like when they were last read, which :mod:`pgtls_proxy.watch`
compares the disk with. The snapshot type itself lives in
:mod:`pgtls_proxy.runtime`, next to the sessions that hold one.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from pgtls_proxy.bundle import Bundle, build
from pgtls_proxy.config import Config
from pgtls_proxy.errors import KeyPathError
from pgtls_proxy.logsetup import LOGGER_NAME
from pgtls_proxy.metrics import Metrics
from pgtls_proxy.pki.revocation import CRLLoader
from pgtls_proxy.runtime import Snapshot, build_state
from pgtls_proxy.watch import FileStamps, snapshot

_log = logging.getLogger(f"{LOGGER_NAME}.watch")  # where these lines always came from

# What building a snapshot from a config file can raise: a reload that
# raises one of these keeps the running snapshot.
BUILD_ERRORS = (KeyPathError, OSError, ValueError)


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
