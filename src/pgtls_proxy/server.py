"""Listeners, the connection nursery, reload, drain and systemd notification.

Tests start :meth:`Proxy.run` with ``nursery.start`` on port 0 and read the
bound ports from the started value, as trio's ``serve_tcp`` does.
"""

from __future__ import annotations

import logging
import math
import resource
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

import trio

from pgtls_proxy.admin import serve_admin
from pgtls_proxy.admission import Admission, Ticket
from pgtls_proxy.bundle import Bundle, seed_passwords
from pgtls_proxy.cancel import CancelRegistry
from pgtls_proxy.cancel_delivery import serve_handoffs
from pgtls_proxy.config import (
    Config,
    ConfigError,
    HostPort,
    ListenSettings,
    load_config,
)
from pgtls_proxy.listeners import Listener, bind_listener
from pgtls_proxy.logsetup import LOGGER_NAME
from pgtls_proxy.metrics import Metrics
from pgtls_proxy.relay import engine as relay_engine
from pgtls_proxy.runtime import Runtime
from pgtls_proxy.session import Session
from pgtls_proxy.snapshot import BUILD_ERRORS, SnapshotBuilder
from pgtls_proxy.systemd import handle_signals, sd_notify, watchdog
from pgtls_proxy.watch import FileWatch, watch_files
from pgtls_proxy.worker import WorkerRole

_log = logging.getLogger(f"{LOGGER_NAME}.server")


@dataclass(frozen=True, slots=True)
class Bound:
    """What a started proxy reports: its listener and admin ports."""

    ports: tuple[int, ...]
    metrics_port: int | None


class Proxy:
    """A running proxy: state, listeners, sessions."""

    def __init__(
        self,
        config: Config,
        metrics: Metrics | None = None,
        role: WorkerRole | None = None,
        bundle: Bundle | None = None,
    ) -> None:
        self.role = role
        self.metrics = metrics or Metrics()
        config = self._adapt(config)
        # One builder for the first state, SIGHUP and changed files alike.
        self.files = SnapshotBuilder(self.metrics, count_errors=self.counts_reloads)
        self.rt = Runtime(
            # A worker starts from the supervisor's last good copy of the files.
            state=self.files.build(config)
            if bundle is None
            else self.files.build_bundle(bundle, config),
            metrics=self.metrics,
            cancels=CancelRegistry(role.worker_id, role.worker_bits) if role else CancelRegistry(),
        )
        if bundle is not None:
            seed_passwords(bundle, config, self.rt.passwords)
        self.rt.install(self.rt.state)
        self.admission = Admission(self.metrics, lambda: self.rt.config)
        self._stop = trio.Event()
        # When the drain's deadline passes, and how many sessions it closed.
        self._drain_deadline = math.inf
        self._closed_at_deadline = 0
        self._listeners: dict[ListenSettings, Listener] = {}
        self._acceptors: trio.Nursery | None = None
        self._sessions: trio.Nursery | None = None
        self.reuse_port = role is not None
        if role is not None and role.has_siblings:
            self.rt.cancel_peer = self._cancel_peer

    @property
    def config(self) -> Config:
        return self.rt.config

    def _adapt(self, config: Config) -> Config:
        """In a worker: the supervisor's concrete ports, and no admin endpoint."""
        return config if self.role is None else self.role.adapt(config)

    def _cancel_peer(self, pid: int) -> Path | None:
        """The hand-off socket of the worker that issued ``pid``, if not us."""
        assert self.role is not None
        return self.role.peer_socket(self.rt.cancels.owner_of(pid))

    @property
    def counts_reloads(self) -> bool:
        """Only one process of a group counts reloads, so one SIGHUP counts once."""
        return self.role is None or self.role.counts_reloads

    def is_ready(self) -> bool:
        """What /readyz reports: listeners bound and not draining."""
        return self.rt.ready and not self.rt.draining

    # ------------------------------------------------------------ control

    def request_stop(self) -> None:
        """Begin the drain (safe to call from a signal handler task)."""
        self.rt.draining = True
        self._stop.set()

    def reload(self) -> bool:
        """Re-read the config and every file; keep the old state on failure."""
        source = self.rt.config.source
        try:
            if source is None:
                raise ConfigError("", "no config file to reload from")
            new = self.files.build(self._adapt(load_config(source)))
        except BUILD_ERRORS as exc:
            if self.counts_reloads:
                self.metrics.reload_by_result["failed"].inc()
            _log.error("P: reload failed, keeping the running configuration: %s", exc)
            return False
        if self._acceptors is not None and not self.rt.draining:
            try:
                self._apply_listeners(new.config.listen)
            except OSError as exc:
                if self.counts_reloads:
                    self.metrics.reload_by_result["failed"].inc()
                _log.error("P: reload failed, cannot bind a new listener: %s", exc)
                return False
        self.rt.install(new)
        if self.counts_reloads:
            self.metrics.reload_by_result["ok"].inc()
        _log.info("P: configuration reloaded from %s", source)
        return True

    def reload_files(self) -> bool:
        """Rebuild from the running config after its files changed on disk.

        Unlike SIGHUP this does not re-read the config file. A certificate or
        key that does not load keeps the running state; a CRL that does not
        load keeps its previous content (both logged and counted).
        """
        try:
            new = self.files.build(self.rt.config)
        except BUILD_ERRORS as exc:
            if self.counts_reloads:
                self.metrics.file_reload_by_result["failed"].inc()
            _log.error("P: changed TLS files not loaded, keeping the running ones: %s", exc)
            return False
        self.rt.install(new)
        if self.counts_reloads:
            self.metrics.file_reload_by_result["ok"].inc()
        _log.info("P: TLS files changed on disk; new handshakes use them")
        return True

    # ------------------------------------------------------------ serving

    async def run(self, *, task_status: trio.TaskStatus[Bound] = trio.TASK_STATUS_IGNORED) -> None:
        relay_engine()  # its tasks and epoll set live as long as the run
        self.admission.nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        try:
            async with trio.open_nursery() as outer:
                metrics_port = await self._start_services(outer)
                async with trio.open_nursery() as sessions:
                    self._sessions = sessions
                    async with trio.open_nursery() as acceptors:
                        self._acceptors = acceptors
                        self._apply_listeners(self.config.listen)
                        ports = tuple(item.port for item in self._listeners.values())
                        self._start_watchers(outer)
                        self.rt.ready = True
                        sd_notify("READY=1")
                        task_status.started(Bound(ports, metrics_port))
                        self._tell_supervisor()
                        await self._stop.wait()
                        sd_notify("STOPPING=1")
                        _log.info(
                            "P: draining %d session(s) for up to %gs",
                            len(sessions.child_tasks),
                            self.rt.config.shutdown.drain_timeout,
                        )
                        self._apply_listeners(())
                    # The drain is a deadline on the sessions nursery (as in
                    # hypercorn): leaving it waits for the sessions, and the
                    # deadline cancels the ones still open when it passes.
                    self._drain_deadline = trio.current_time() + self.config.shutdown.drain_timeout
                    sessions.cancel_scope.deadline = self._drain_deadline
                if self._closed_at_deadline:
                    _log.info("P: closed %d session(s) at drain timeout", self._closed_at_deadline)
                outer.cancel_scope.cancel()
        finally:
            for listener in self._listeners.values():
                listener.close()
            self._listeners.clear()
        _log.info("P: stopped")

    async def _start_services(self, outer: trio.Nursery) -> int | None:
        """Start what serves besides the listeners; the admin port, if any."""
        cfg = self.config
        outer.start_soon(self.admission.run)
        metrics_port = None
        if cfg.metrics.address is not None:
            metrics_port = await outer.start(
                serve_admin,
                cfg.metrics.address.host,
                cfg.metrics.address.port,
                self.metrics.registry,
                self.is_ready,
                lambda: self.rt.state.metrics_context,
            )
        if self.rt.pool is not None:
            outer.start_soon(self.rt.pool.run, lambda: self.rt.config.backends)
        if self.role is not None and self.role.has_siblings:
            await outer.start(serve_handoffs, self.rt, self.role.cancel_socket(self.role.worker_id))
        return metrics_port

    def _start_watchers(self, outer: trio.Nursery) -> None:
        """Signals, systemd's watchdog, the supervisor and the files on disk."""
        if threading_is_main():
            outer.start_soon(handle_signals, self.reload, self._on_stop_signal)
        outer.start_soon(watchdog)
        if self.role is not None:
            outer.start_soon(self.role.watch_supervisor, self.request_stop)
        watch = FileWatch(self.files)
        outer.start_soon(watch_files, watch, lambda: self.rt.config, self.reload_files)

    def _tell_supervisor(self) -> None:
        """In a worker: count the reload it carries out, and say that it serves."""
        if self.role is None:
            return
        if self.role.reloaded and self.counts_reloads:
            # This process is how the last reload took effect.
            self.metrics.reload_by_result["ok"].inc()
        self.role.announce_ready()

    def _apply_listeners(self, wanted: tuple[ListenSettings, ...]) -> None:
        """Bind what is new, close what is gone, keep what is unchanged.

        Raises OSError when a new address cannot be bound; the listeners that
        were already running keep running.
        """
        assert self._acceptors is not None and self._sessions is not None
        added = [item for item in wanted if item not in self._listeners]
        bound: list[Listener] = []
        try:
            for item in added:
                sock = bind_listener(item.address, reuse_port=self.reuse_port)
                bound.append(Listener(item, sock))
        except BaseException:
            for listener in bound:
                listener.close()
            raise
        for item in [item for item in self._listeners if item not in wanted]:
            listener = self._listeners.pop(item)
            listener.close()
            _log.info("P: stopped listening on %s", HostPort(item.address.host, listener.port))
        for listener in bound:
            self._listeners[listener.settings] = listener
            self._acceptors.start_soon(self._accept_loop, listener, self._sessions)
            _log.info(
                "P: listening on %s%s",
                HostPort(listener.settings.address.host, listener.port),
                " (PROXY protocol)" if listener.settings.proxy_protocol else "",
            )

    async def _accept_loop(self, listener: Listener, sessions: trio.Nursery) -> None:
        lsock = listener.sock
        with listener.scope:
            while True:
                try:
                    sock, peer = lsock.accept()
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(lsock)
                    continue
                except OSError as exc:
                    if lsock.fileno() == -1:
                        return
                    # EMFILE and friends: count, shed, back off instead of spinning.
                    await self.admission.accept_failed(lsock, exc)
                    continue
                self.admission.accepted()
                # Behind a PROXY-protocol listener the TCP peer is the load
                # balancer: only the global budget applies until the header
                # names the client.
                ticket = self.admission.admit(peer, capped=not listener.settings.proxy_protocol)
                if ticket is None:
                    sock.close()
                    continue
                sessions.start_soon(self._serve_one, sock, peer, listener.settings, ticket)

    async def _serve_one(
        self, sock: socket.socket, peer: object, listen: ListenSettings, ticket: Ticket
    ) -> None:
        try:
            with ticket.scope:
                await Session(
                    self.rt, sock, peer, proxy_protocol=listen.proxy_protocol, ticket=ticket
                ).run()
        finally:
            ticket.release()
            if trio.current_time() >= self._drain_deadline:
                self._closed_at_deadline += 1

    def _on_stop_signal(self, signum: int) -> None:
        if self.rt.draining:
            _log.info("P: second stop signal, closing every session now")
            if self._sessions is not None:
                self._sessions.cancel_scope.cancel()
        else:
            _log.info("P: %s received, draining", signal.Signals(signum).name)
            self.request_stop()


def threading_is_main() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()
