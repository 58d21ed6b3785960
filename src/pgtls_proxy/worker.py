"""What a worker process is told by its supervisor, and how it reads it.

The supervisor (:mod:`pgtls_proxy.supervisor`) writes these variables into
each worker's environment; the worker (:class:`pgtls_proxy.server.Proxy`)
reads them back with :func:`worker_role`. Both sides import this module
and neither imports the other.

A worker tells its supervisor that it serves by writing :data:`READY_LINE`
to its stdout. Stdout is free for it: logs go to stderr (relayed by the
supervisor, :func:`pgtls_proxy.logsetup.relay_worker_output`) and the
bundle comes in on stdin, so the pipe the supervisor opens anyway is the
dedicated channel, with no descriptor to pass and no variable to name it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import trio

from pgtls_proxy.config import Config, HostPort, MetricsSettings
from pgtls_proxy.logsetup import LOGGER_NAME

_log = logging.getLogger(f"{LOGGER_NAME}.server")

ENV_WORKER_ID = "PGTLS_PROXY_WORKER_ID"
ENV_WORKERS = "PGTLS_PROXY_WORKERS"
ENV_RUNDIR = "PGTLS_PROXY_RUNDIR"
ENV_PORTS = "PGTLS_PROXY_LISTEN_PORTS"
ENV_RELOADED = "PGTLS_PROXY_RELOADED"
ENV_PARENT = "PGTLS_PROXY_SUPERVISOR_PID"

# The line a worker writes to its stdout once its listeners are bound.
READY_LINE = b"READY"


@dataclass(frozen=True, slots=True)
class WorkerRole:
    """What a worker process was told by its supervisor."""

    worker_id: int
    workers: int
    rundir: Path
    ports: tuple[int, ...]
    reloaded: bool = False  # started by a reload that changed the listeners
    supervisor_pid: int = 0

    @property
    def worker_bits(self) -> int:
        return max(0, (self.workers - 1).bit_length())

    def cancel_socket(self, worker_id: int) -> Path:
        return self.rundir / f"cancel-{worker_id}.sock"

    @property
    def counts_reloads(self) -> bool:
        """Only one process of a group counts reloads, so one SIGHUP counts once."""
        return self.worker_id == 0

    @property
    def has_siblings(self) -> bool:
        """Other workers may own a cancel key (see :mod:`pgtls_proxy.cancel_delivery`)."""
        return self.workers > 1

    def peer_socket(self, owner: int) -> Path | None:
        """The hand-off socket of worker ``owner``, or None when that is us (or nobody)."""
        if owner == self.worker_id or owner >= self.workers:
            return None
        return self.cancel_socket(owner)

    def adapt(self, config: Config) -> Config:
        """The supervisor's concrete ports, and no admin endpoint (the supervisor has it)."""
        listen = tuple(
            replace(item, address=HostPort(item.address.host, port))
            for item, port in zip(config.listen, self.ports, strict=False)
        )
        return replace(config, listen=listen, metrics=MetricsSettings(address=None))

    def announce_ready(self) -> None:
        """Tell the supervisor that this worker serves."""
        sys.stdout.write(READY_LINE.decode() + "\n")
        sys.stdout.flush()

    async def watch_supervisor(self, on_gone: Callable[[], None]) -> None:
        """Call ``on_gone`` once the supervisor is gone (we were re-parented).

        Polling the parent pid is portable and, unlike PR_SET_PDEATHSIG, not
        tied to the lifetime of the thread that happened to fork us.
        """
        expected = self.supervisor_pid
        while True:
            await trio.sleep(1)
            if expected and os.getppid() != expected:
                _log.warning("P: supervisor %d is gone; draining", expected)
                on_gone()
                return


def worker_role() -> WorkerRole | None:
    """The role from the environment, or None in a single-process run."""
    wid = os.environ.get(ENV_WORKER_ID)
    if wid is None:
        return None
    ports = tuple(int(p) for p in os.environ.get(ENV_PORTS, "").split(",") if p)
    return WorkerRole(
        worker_id=int(wid),
        workers=int(os.environ[ENV_WORKERS]),
        rundir=Path(os.environ[ENV_RUNDIR]),
        ports=ports,
        reloaded=os.environ.get(ENV_RELOADED) == "1",
        supervisor_pid=int(os.environ.get(ENV_PARENT, "0")),
    )
