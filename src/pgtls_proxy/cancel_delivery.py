"""Deliver a CancelRequest to the backend session its key names.

With several workers, the key may belong to a session another worker runs:
the low bits of the substitute pid name that worker, and the request is
handed to it over a Unix socket in the supervisor's private run directory.
Keys that match nothing are dropped silently, as PostgreSQL does.
"""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import trio

from pgtls_proxy.backend import BackendUnavailable, open_backend
from pgtls_proxy.logsetup import LOGGER_NAME
from pgtls_proxy.netio import PlainStream, StreamClosed
from pgtls_proxy.runtime import Runtime
from pgtls_proxy.wire import codec
from pgtls_proxy.wire.errors import ProtocolError
from pgtls_proxy.wire.messages import MAX_CANCEL_KEY, CancelRequest

_log = logging.getLogger(f"{LOGGER_NAME}.cancel")
_HANDOFF_TIMEOUT = 5.0


async def deliver_cancel(rt: Runtime, request: CancelRequest) -> tuple[str | None, str | None]:
    """Forward to the right place; return (backend name, error) for the audit."""
    peer = rt.cancel_peer(request.pid) if rt.cancel_peer is not None else None
    if peer is not None:
        return await _hand_off(peer, request)
    target = rt.cancels.lookup(request.pid, request.key)
    if target is None:
        rt.metrics.cancel_by_result["unknown_key"].inc()
        return None, "unknown cancel key"
    backend = target.backend
    try:
        stream = await open_backend(backend, rt.state.backend_contexts.get(backend.name))
    except BackendUnavailable as exc:
        rt.metrics.cancel_by_result["failed"].inc()
        _log.warning("S: cancel not delivered to %s: %s", backend.name, exc)
        return backend.name, str(exc)
    rt.metrics.cancel_by_result["forwarded"].inc()
    try:
        with trio.move_on_after(backend.connect_timeout):
            await stream.send_all(CancelRequest(target.pid, target.key).encode())
            # The server closes the connection once it has acted on it.
            await stream.recv_into(memoryview(bytearray(64)))
    except (StreamClosed, OSError):
        pass
    finally:
        await stream.aclose()
    return backend.name, None


async def _hand_off(path: Path, request: CancelRequest) -> tuple[str | None, str | None]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        with trio.fail_after(_HANDOFF_TIMEOUT):
            try:
                sock.connect(str(path))
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
            stream = PlainStream(sock)
            await stream.send_all(request.encode())
            await stream.recv_into(memoryview(bytearray(1)))  # the owner closes when done
    except (OSError, StreamClosed, trio.TooSlowError) as exc:
        _log.warning("P: cannot hand the cancel to its worker at %s: %s", path, exc)
        return None, "worker unreachable"
    finally:
        trio.lowlevel.notify_closing(sock)
        sock.close()
    return None, None


async def serve_handoffs(
    rt: Runtime, path: Path, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Accept cancels handed over by sibling workers, until cancelled."""
    path.unlink(missing_ok=True)
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lsock.bind(str(path))
    path.chmod(0o600)
    lsock.listen(128)
    lsock.setblocking(False)
    task_status.started()
    try:
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    conn, _ = lsock.accept()
                except BlockingIOError:
                    await trio.lowlevel.wait_readable(lsock)
                    continue
                nursery.start_soon(_handle_handoff, rt, PlainStream(conn))
    finally:
        trio.lowlevel.notify_closing(lsock)
        lsock.close()
        path.unlink(missing_ok=True)


async def _handle_handoff(rt: Runtime, stream: PlainStream) -> None:
    try:
        with trio.move_on_after(_HANDOFF_TIMEOUT):
            header = await stream.recv_exactly(4)
            length = int.from_bytes(header, "big")
            if not 16 <= length <= 12 + MAX_CANCEL_KEY:
                return
            packet = header + await stream.recv_exactly(length - 4)
            request = codec.parse_startup_packet(packet)
            if isinstance(request, CancelRequest):
                await deliver_cancel(rt, request)
    except (StreamClosed, ProtocolError, OSError):
        pass
    finally:
        await stream.aclose()
