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

import os
from dataclasses import dataclass
from pathlib import Path

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
