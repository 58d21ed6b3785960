"""Cancel requests handed to another worker: the log and the metric say what happened."""

from __future__ import annotations

import struct
from typing import Any

from tests.fixtures.clients import cancel_during_sleep, connect, raw_socket, recv_all
from tests.fixtures.pki import PKIFiles


def _forged_cancel(port: int, pid: int) -> None:
    with raw_socket(port) as s:
        s.sendall(struct.pack("!III", 16, 80877102, pid) + b"\x13\x37\xbe\xef")
        recv_all(s)  # the proxy closes without a word, as PostgreSQL does


def test_handed_over_cancel_with_a_forged_key_says_no_session(
    daemon_factory: Any, pki: PKIFiles
) -> None:
    d = daemon_factory({"workers": 2})
    d.wait_log("all 2 workers ready")
    start = len(d.log)
    sent = 0
    # The low bit of the pid names the worker: whichever worker accepts,
    # one pid of each pair belongs to the other one and is handed over.
    for i in range(6):
        for owner in (0, 1):
            _forged_cancel(d.port, (1000 + i) * 2 + owner)
            sent += 1
    d.wait_metric("pgtls_cancel_requests_total", sent, result="unknown_key")
    assert d.metric("pgtls_cancel_requests_total", result="forwarded") == 0
    assert d.metric("pgtls_cancel_requests_total", result="failed") == 0
    d.wait_log("CancelRequest dropped by the worker that owns the key: no session", start=start)
    lines = [line for line in d.log[start:] if "CancelRequest" in line]
    assert not [line for line in lines if "delivered" in line], lines
    assert len(lines) == sent, lines
    # A real cancel still works, and says so, whichever worker runs the query.
    with connect(pki, d.port, "alice") as conn:
        assert cancel_during_sleep(conn) < 10
    d.wait_metric("pgtls_cancel_requests_total", 1, result="forwarded")
    d.wait_log("CancelRequest delivered", start=start)
