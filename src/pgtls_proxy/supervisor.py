"""``workers: N``: N proxy processes on one port, supervised by the main process.

Why processes: one trio loop is one core, and TLS plus relaying is CPU work.
Each worker binds the listeners itself with ``SO_REUSEPORT`` and the kernel
spreads connections over them. The supervisor owns everything that must be
single: the admin endpoint (it adds up the workers' metrics, which they write
to memory-mapped files through prometheus-client's multi-process mode),
systemd notifications, signal fan-out, and restarting a worker that dies.

A worker learns its role from the environment (``PGTLS_PROXY_WORKER_ID`` …),
so it runs the very same ``pgtls-proxy run`` code path as a single process.
It reads its configuration and files from its stdin, where the supervisor
writes the last ones that loaded (:mod:`pgtls_proxy.bundle`): a worker that
dies while the CA file is missing or the config is broken comes back with
what the others run, instead of crash-looping.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import trio
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from pgtls_proxy.admin import serve_admin
from pgtls_proxy.bundle import ENV_BUNDLE, Bundle, bundled_files, capture_from_disk, refresh
from pgtls_proxy.config import Config, HostPort
from pgtls_proxy.listeners import reserve_port
from pgtls_proxy.logsetup import LOGGER_NAME, LineSplitter, relay_worker_output
from pgtls_proxy.metrics import MULTIPROC_ENV
from pgtls_proxy.runtime import Snapshot
from pgtls_proxy.snapshot import BUILD_ERRORS
from pgtls_proxy.systemd import handle_signals, sd_notify, watchdog
from pgtls_proxy.watch import POLL_INTERVAL, FileStamps, Settle, stamps
from pgtls_proxy.worker import (
    ENV_PARENT,
    ENV_PORTS,
    ENV_RELOADED,
    ENV_RUNDIR,
    ENV_WORKER_ID,
    ENV_WORKERS,
    READY_LINE,
)

_log = logging.getLogger(f"{LOGGER_NAME}.supervisor")

_RESTART_DELAY = 0.5


@dataclass(slots=True)
class _Worker:
    worker_id: int
    process: trio.Process | None = None
    ready: bool = False
    restarts: int = 0
    pids: list[int] = field(default_factory=list)
    replace: trio.Event = field(default_factory=trio.Event)
    replaced: bool = False


class Supervisor:
    def __init__(self, config: Config, workers: int, bundle: Bundle, state: Snapshot) -> None:
        assert config.source is not None
        self.config = config
        # The last configuration and files that loaded: what workers start from.
        self.bundle = bundle
        self.metrics_context = state.metrics_context
        self._refused_files: FileStamps | None = None
        self.workers = [_Worker(i) for i in range(workers)]
        self.rundir = Path(tempfile.mkdtemp(prefix="pgtls-proxy-"))
        self.metrics_dir = self.rundir / "metrics"
        self.metrics_dir.mkdir()
        self.draining = False
        self._reserved = [reserve_port(item.address) for item in config.listen]
        self.ports = tuple(s.getsockname()[1] for s in self._reserved)
        self.registry = CollectorRegistry()
        MultiProcessCollector(self.registry, path=str(self.metrics_dir))  # type: ignore[no-untyped-call]
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._live: set[trio.Process] = set()
        self._nursery: trio.Nursery | None = None

    # ------------------------------------------------------------ workers

    def _env(self, worker: _Worker) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("NOTIFY_SOCKET", None)  # only the supervisor talks to systemd
        env.pop("WATCHDOG_USEC", None)
        env.pop("WATCHDOG_PID", None)
        env[MULTIPROC_ENV] = str(self.metrics_dir)
        env[ENV_WORKER_ID] = str(worker.worker_id)
        env[ENV_WORKERS] = str(len(self.workers))
        env[ENV_RUNDIR] = str(self.rundir)
        env[ENV_PORTS] = ",".join(str(p) for p in self.ports)
        env[ENV_RELOADED] = "1" if worker.replaced else "0"
        env[ENV_PARENT] = str(os.getpid())
        env[ENV_BUNDLE] = "stdin"  # a flag: the bytes go through the pipe
        return env

    async def _feed(self, process: trio.Process, data: bytes) -> None:
        """Write the bundle to the worker's stdin and close it (the worker reads to EOF)."""
        assert process.stdin is not None
        try:
            await process.stdin.send_all(data)
            await process.stdin.aclose()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # it died first; its exit is handled like any other

    async def _run_worker(self, worker: _Worker) -> None:
        """Keep one worker alive until the drain; restart it when it dies.

        When a reload changes the listeners, the worker is replaced: the new
        process starts at once on the new ports while the old one drains its
        sessions in the background.
        """
        while True:
            process = await self._spawn(worker)
            replaced = await self._serve(worker, process)
            worker.ready = False
            worker.replaced = replaced
            if replaced and process.returncode is None:
                _log.info("P: replacing worker %d (pid %d)", worker.worker_id, process.pid)
                process.send_signal(signal.SIGTERM)
                assert self._nursery is not None
                self._nursery.start_soon(self._reap, process)
                continue
            self._reaped(process)
            if self.draining:
                _log.info("P: worker %d exited (%s)", worker.worker_id, process.returncode)
                return
            worker.restarts += 1
            _log.error(
                "P: worker %d (pid %d) died with %s; restarting",
                worker.worker_id,
                process.pid,
                process.returncode,
            )
            await trio.sleep(_RESTART_DELAY)

    async def _spawn(self, worker: _Worker) -> trio.Process:
        """Start a worker process, its stderr relayed to ours."""
        argv = [sys.executable, "-m", "pgtls_proxy", "run", "--config", str(self.config.source)]
        process = await trio.lowlevel.open_process(
            argv,
            env=self._env(worker),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.PIPE,
        )
        assert process.stderr is not None and self._nursery is not None
        # Outlives the worker's turn: a replaced worker still logs while it drains.
        self._nursery.start_soon(self._relay_stderr, worker.worker_id, process.stderr)
        self._live.add(process)
        worker.process = process
        worker.ready = False
        worker.pids.append(process.pid)
        return process

    async def _serve(self, worker: _Worker, process: trio.Process) -> bool:
        """Feed the worker its bundle and follow it until it exits or is to be replaced.

        True when a reload asked for the worker to be replaced.
        """
        requested = worker.replace = trio.Event()
        replaced = False
        async with trio.open_nursery() as nursery:

            async def watch_replace() -> None:
                nonlocal replaced
                await requested.wait()
                replaced = True
                nursery.cancel_scope.cancel()

            nursery.start_soon(self._feed, process, self.bundle.encode())
            nursery.start_soon(self._watch_ready, worker, process)
            nursery.start_soon(watch_replace)
            await process.wait()
            nursery.cancel_scope.cancel()
        return replaced

    async def _watch_ready(self, worker: _Worker, process: trio.Process) -> None:
        """A worker says it serves with one line on its stdout (see :mod:`pgtls_proxy.worker`)."""
        assert process.stdout is not None
        splitter = LineSplitter()
        async for chunk in process.stdout:
            if READY_LINE in splitter.feed(chunk):
                worker.ready = True
                _log.debug("P: worker %d ready", worker.worker_id)

    async def _relay_stderr(self, worker_id: int, stderr: trio.abc.ReceiveStream) -> None:
        """Copy a worker's stderr to ours line by line, through the log formatter.

        Workers do not share the operator's stderr: a line longer than a
        pipe's atomic write (4 KiB) written by two workers at once would
        interleave, and output that did not come from the worker's formatter
        (an interpreter crash, a C library) would break the log's format.
        """
        splitter = LineSplitter()
        async with stderr:
            async for chunk in stderr:
                for line in splitter.feed(chunk):
                    relay_worker_output(worker_id, line)
        for line in splitter.close():
            relay_worker_output(worker_id, line)

    async def _reap(self, process: trio.Process) -> None:
        await process.wait()
        self._reaped(process)

    def _reaped(self, process: trio.Process) -> None:
        self._live.discard(process)
        mark_process_dead(process.pid, str(self.metrics_dir))  # type: ignore[no-untyped-call]

    def _signal_workers(self, signum: int) -> None:
        for process in list(self._live):
            if process.returncode is None:
                try:
                    process.send_signal(signum)
                except ProcessLookupError:
                    pass

    def ready(self) -> bool:
        return not self.draining and all(w.ready for w in self.workers)

    # ------------------------------------------------------------ signals

    def reload(self) -> None:
        """Fan SIGHUP out; each worker validates and keeps its state on failure.

        The supervisor validates too, to log one clear line and to keep what
        loaded for the workers it restarts; worker 0 is the one that counts
        reloads, so the metric moves once per SIGHUP.
        """
        assert self.config.source is not None
        try:
            bundle, state = capture_from_disk(self.config.source, self.bundle)
        except BUILD_ERRORS as exc:
            _log.error("P: reload failed, keeping the running configuration: %s", exc)
            self._signal_workers(signal.SIGHUP)
            return
        config = state.config
        if config.listen != self.config.listen:
            if self._rebind(config):
                self._take(bundle, state)
            return
        self._take(bundle, state)
        self._signal_workers(signal.SIGHUP)

    def _take(self, bundle: Bundle, state: Snapshot) -> None:
        self.bundle = bundle
        self.config = state.config
        self.metrics_context = state.metrics_context
        self._refused_files = None

    def _rebind(self, config: Config) -> bool:
        """New listeners: reserve their ports, then replace every worker."""
        try:
            reserved = [reserve_port(item.address) for item in config.listen]
        except OSError as exc:
            _log.error("P: reload failed, cannot bind a new listener: %s", exc)
            return False
        for sock in self._reserved:
            sock.close()
        self._reserved = reserved
        self.ports = tuple(sock.getsockname()[1] for sock in reserved)
        self.config = config
        for item, port in zip(config.listen, self.ports, strict=True):
            _log.info("P: listening on %s", HostPort(item.address.host, port))
        for worker in self.workers:
            worker.replace.set()
        return True

    async def _watch_files(self) -> None:
        """Keep the bundle's files current: take them once a change holds still and loads.

        The workers watch the same files and log their own verdict; here a
        change that does not load only leaves the bundle as it was.
        """
        settle = Settle()
        while True:
            await trio.sleep(POLL_INTERVAL)
            paths = bundled_files(self.config)
            current = stamps(paths)
            built = self.bundle.snapshot(self.config, paths)
            if not settle.settled(current, (built, self._refused_files)):
                continue
            try:
                bundle, state = refresh(self.config, self.bundle.config, self.bundle)
            except BUILD_ERRORS as exc:
                self._refused_files = current
                _log.info("P: changed files not kept for restarting workers: %s", exc)
                continue
            self._take(bundle, state)
            _log.debug("P: changed files kept for restarting workers")

    def _on_stop_signal(self, signum: int) -> None:
        if not self.draining:
            _log.info("P: %s received, draining workers", signal.Signals(signum).name)
            sd_notify("STOPPING=1")
        self.draining = True
        self._signal_workers(signal.SIGTERM)

    # ------------------------------------------------------------ main

    async def run(self) -> None:
        cfg = self.config
        async with trio.open_nursery() as outer:
            if cfg.metrics.address is not None:
                await outer.start(
                    serve_admin,
                    cfg.metrics.address.host,
                    cfg.metrics.address.port,
                    self.registry,
                    self.ready,
                    lambda: self.metrics_context,
                )
            outer.start_soon(handle_signals, self.reload, self._on_stop_signal)
            outer.start_soon(watchdog, lambda: any(w.ready for w in self.workers))
            outer.start_soon(self._watch_files)
            async with trio.open_nursery() as workers:
                self._nursery = workers
                for worker in self.workers:
                    workers.start_soon(self._run_worker, worker)
                while not all(w.ready for w in self.workers) and not self.draining:
                    await trio.sleep(0.05)
                if not self.draining:
                    for item, port in zip(cfg.listen, self.ports, strict=True):
                        _log.info(
                            "P: listening on %s with %d workers",
                            HostPort(item.address.host, port),
                            len(self.workers),
                        )
                    sd_notify("READY=1")
                    _log.info("P: all %d workers ready", len(self.workers))
            outer.cancel_scope.cancel()

    def close(self) -> None:
        for sock in self._reserved:
            sock.close()
        shutil.rmtree(self.rundir, ignore_errors=True)


def run_supervisor(config: Config, workers: int, bundle: Bundle, state: Snapshot) -> int:
    supervisor = Supervisor(config, workers, bundle, state)
    try:
        trio.run(supervisor.run)
    finally:
        supervisor.close()
    return 0
