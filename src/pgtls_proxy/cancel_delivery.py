"""Deliver a CancelRequest to the backend session its key names.

With several workers, the key may belong to a session another worker runs:
the low bits of the substitute pid name that worker, and the request is
handed to it over a Unix socket in the supervisor's private run directory,
and that worker answers with what became of it (forwarded, unknown key,
failed), so the log and the metric of either side tell the truth. Keys that
match nothing are dropped silently towards the client, as PostgreSQL does.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
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
# The owner of a handed-over key answers with one of these bytes (then the
# backend's name, when it knows one) before it closes the hand-off socket.
_RESULT_CODES = {"forwarded": b"F", "unknown_key": b"U", "failed": b"X"}
_RESULTS_BY_CODE = {code: result for result, code in _RESULT_CODES.items()}


@dataclass(frozen=True, slots=True)
class CancelOutcome:
    """What became of one CancelRequest: a ``pgtls_cancel_requests_total`` result.

    ``backend`` names the backend it went to, ``error`` says why it did not
    (both for the audit record).
    """

    result: str
    backend: str | None = None
    error: str | None = None
    handed_off: bool = False  # looked up by the sibling worker that owns the key


async def deliver_cancel(rt: Runtime, request: CancelRequest) -> CancelOutcome:
    """Forward to the right place and say what happened; counted once.

    The worker that looks the key up counts the result: this one, or the
    sibling that owns the key (it reports back over the hand-off socket).
    A hand-off that gets no answer is counted here, as ``failed``.
    """
    peer = rt.cancel_peer(request.pid) if rt.cancel_peer is not None else None
    if peer is not None:
        outcome, reported = await _hand_off(peer, request)
        if not reported:
            rt.metrics.cancel_by_result[outcome.result].inc()
        return outcome
    outcome = await _deliver_here(rt, request)
    rt.metrics.cancel_by_result[outcome.result].inc()
    return outcome


async def _deliver_here(rt: Runtime, request: CancelRequest) -> CancelOutcome:
    target = rt.cancels.lookup(request.pid, request.key)
    if target is None:
        return CancelOutcome("unknown_key", error="unknown cancel key")
    backend = target.backend
    try:
        stream = await open_backend(backend, rt.state.backend_contexts.get(backend.name))
    except BackendUnavailable as exc:
        _log.warning("S: cancel not delivered to %s: %s", backend.name, exc)
        return CancelOutcome("failed", backend.name, str(exc))
    try:
        with trio.move_on_after(backend.connect_timeout):
            await stream.send_all(CancelRequest(target.pid, target.key).encode())
            # The server closes the connection once it has acted on it.
            await stream.recv_into(memoryview(bytearray(64)))
    except (StreamClosed, OSError):
        pass
    finally:
        await stream.aclose()
    return CancelOutcome("forwarded", backend.name)


async def _hand_off(path: Path, request: CancelRequest) -> tuple[CancelOutcome, bool]:
    """Give the request to the worker that owns its key; return what it reports.

    The flag is True when the owner answered (and so counted the result).
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    answer = b""
    try:
        with trio.fail_after(_HANDOFF_TIMEOUT):
            try:
                sock.connect(str(path))
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
            stream = PlainStream(sock)
            await stream.send_all(request.encode())
            while len(answer) < 1 + _MAX_NAME:  # the owner closes when done
                chunk = await stream.recv_some(1 + _MAX_NAME - len(answer))
                if not chunk:
                    break
                answer += chunk
    except (OSError, StreamClosed, trio.TooSlowError) as exc:
        if not answer:
            _log.warning("P: cannot hand the cancel to its worker at %s: %s", path, exc)
            return CancelOutcome("failed", error="worker unreachable"), False
    result = _RESULTS_BY_CODE.get(answer[:1])
    if result is None:
        _log.warning("P: the worker at %s did not say what became of a cancel", path)
        return CancelOutcome("failed", error="worker did not answer"), False
    backend = answer[1:].decode("utf-8", "replace") or None
    error = {"unknown_key": "unknown cancel key", "failed": "backend unreachable"}.get(result)
    return CancelOutcome(result, backend, error, handed_off=True), True


_MAX_NAME = 255


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
                outcome = await deliver_cancel(rt, request)
                name = (outcome.backend or "").encode()[:_MAX_NAME]
                await stream.send_all(_RESULT_CODES[outcome.result] + name)
    except (StreamClosed, ProtocolError, OSError):
        pass
    finally:
        await stream.aclose()
