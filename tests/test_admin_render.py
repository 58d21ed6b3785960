"""/metrics while a worker's metric files come and go (render is pure: no sockets)."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.metrics_core import Metric

from pgtls_proxy.admin import render


class _Vanishing:
    """A collector whose first ``failures`` reads find a file already removed."""

    def __init__(self, failures: int) -> None:
        self.failures = failures

    def collect(self) -> Iterator[Metric]:
        if self.failures:
            self.failures -= 1
            raise FileNotFoundError(2, "No such file or directory", "gauge_live_4242.db")
        yield from ()


def _registry(failures: int) -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("pgtls_example", "an example", registry=registry).inc()
    registry.register(_Vanishing(failures))  # type: ignore[arg-type]
    return registry


def test_a_file_removed_while_collecting_is_read_again() -> None:
    response = render("/metrics", "", _registry(failures=1), lambda: True)
    assert response.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"pgtls_example_total 1.0" in response


def test_files_that_keep_vanishing_give_503_not_a_closed_connection() -> None:
    response = render("/metrics", "", _registry(failures=10), lambda: True)
    assert response.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
