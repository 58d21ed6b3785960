"""The admin HTTP endpoint: ``/metrics``, ``/healthz``, ``/readyz``.

A deliberately tiny HTTP/1.0-style responder on trio (one request per
connection, bounded request size, short timeouts): Prometheus scrapers and
health checkers need nothing more, and it keeps the exposition on the event
loop without a thread. With ``metrics.tls`` it speaks HTTPS and demands a
client certificate from its own CA (Prometheus' ``tls_config``); a failed
handshake costs one task and closes only its own connection. The text
itself comes from prometheus-client's own encoder, including OpenMetrics
when the scraper asks for it.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable

import trio
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

_log = logging.getLogger("pgtls_proxy.admin")
_MAX_REQUEST = 8192
_COLLECT_TRIES = 3


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
        for _attempt in range(_COLLECT_TRIES):
            try:
                body = encoder(registry)
            except OSError as exc:
                # With workers, the sum is read from their metric files; a file
                # removed between listing and reading (a worker replaced or
                # restarted) is gone on the next read.
                _log.debug("P: metrics collection raced a worker's files: %s", exc)
                continue
            return _response("200 OK", body, content_type)
        return _response("503 Service Unavailable", b"metrics unavailable, try again\n")
    if path == "/healthz":
        return _response("200 OK", b"ok\n")
    if path == "/readyz":
        if is_ready():
            return _response("200 OK", b"ready\n")
        return _response("503 Service Unavailable", b"not ready\n")
    return _response("404 Not Found", b"not found\n")


async def _handle(
    stream: trio.SocketStream,
    registry: CollectorRegistry,
    is_ready: Callable[[], bool],
    context: ssl.SSLContext | None = None,
) -> None:
    """One request, all within 5 s (TLS handshake included), then close."""
    conn: trio.abc.Stream = stream
    try:
        with trio.move_on_after(5):
            if context is not None:
                tls = trio.SSLStream(stream, context, server_side=True)
                conn = tls
                await tls.do_handshake()  # no client certificate from the CA: refused here
            data = b""
            while b"\r\n\r\n" not in data and len(data) < _MAX_REQUEST:
                chunk = await conn.receive_some(4096)
                if not chunk:
                    break
                data += chunk
            head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
            lines = head.split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) < 2:
                await conn.send_all(_response("400 Bad Request", b"bad request\n"))
                return
            accept = ""
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "accept":
                    accept = value.strip()
            await conn.send_all(render(parts[1], accept, registry, is_ready, parts[0]))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        if context is not None:
            _log.debug("P: admin request over TLS failed: %s", exc.__cause__ or exc)
    finally:
        # A cancelled aclose still closes the socket; the bound keeps a
        # peer that never reads from holding the close_notify up.
        with trio.move_on_after(1):
            await conn.aclose()
        await stream.aclose()


async def serve_admin(
    host: str,
    port: int,
    registry: CollectorRegistry,
    is_ready: Callable[[], bool],
    context: Callable[[], ssl.SSLContext | None] | None = None,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; reports the bound port through ``task_status``.

    ``context`` gives the TLS context for each new connection (``metrics.tls``,
    rebuilt on reload), or None to serve plain HTTP.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    scheme = "https" if context is not None and context() is not None else "http"
    where = f"[{host}]" if ":" in host else host
    _log.info("P: admin endpoint on %s://%s:%d/metrics", scheme, where, bound)

    async def handler(stream: trio.SocketStream) -> None:
        await _handle(stream, registry, is_ready, context() if context is not None else None)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handler, listeners)
        task_status.started(bound)
