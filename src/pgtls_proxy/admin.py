"""The admin HTTP endpoint: ``/metrics``, ``/healthz``, ``/readyz``.

A deliberately tiny HTTP/1.0-style responder on trio (one request per
connection, bounded request size, short timeouts): Prometheus scrapers and
health checkers need nothing more, and it keeps the exposition on the event
loop without a thread. The text itself comes from prometheus-client's own
encoder, including OpenMetrics when the scraper asks for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

_log = logging.getLogger("pgtls_proxy.admin")
_MAX_REQUEST = 8192


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def render(
    path: str,
    accept: str,
    registry: CollectorRegistry,
    is_ready: Callable[[], bool],
    method: str = "GET",
) -> bytes:
    """Build the full HTTP response for one request (pure, for tests)."""
    path = path.split("?", 1)[0]
    if method not in ("GET", "HEAD"):
        return _response("405 Method Not Allowed", b"method not allowed\n")
    if path == "/metrics":
        encoder, content_type = choose_encoder(accept)
        return _response("200 OK", encoder(registry), content_type)
    if path == "/healthz":
        return _response("200 OK", b"ok\n")
    if path == "/readyz":
        if is_ready():
            return _response("200 OK", b"ready\n")
        return _response("503 Service Unavailable", b"not ready\n")
    return _response("404 Not Found", b"not found\n")


async def _handle(
    stream: trio.SocketStream, registry: CollectorRegistry, is_ready: Callable[[], bool]
) -> None:
    try:
        with trio.move_on_after(5):
            data = b""
            while b"\r\n\r\n" not in data and len(data) < _MAX_REQUEST:
                chunk = await stream.receive_some(4096)
                if not chunk:
                    break
                data += chunk
            head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
            lines = head.split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) < 2:
                await stream.send_all(_response("400 Bad Request", b"bad request\n"))
                return
            accept = ""
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "accept":
                    accept = value.strip()
            await stream.send_all(render(parts[1], accept, registry, is_ready, parts[0]))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        pass
    finally:
        await stream.aclose()


async def serve_admin(
    host: str,
    port: int,
    registry: CollectorRegistry,
    is_ready: Callable[[], bool],
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; reports the bound port through ``task_status``."""
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    _log.info("P: admin endpoint on http://%s:%d/metrics", host, bound)

    async def handler(stream: trio.SocketStream) -> None:
        await _handle(stream, registry, is_ready)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handler, listeners)
        task_status.started(bound)
