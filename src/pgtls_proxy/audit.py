"""One audit record per connection, written when the connection ends.

The record is a log line on the ``pgtls_proxy.audit`` logger with flat fields,
so ``logging.format: json`` turns it into one JSON object a SIEM can ingest.
Identities and user names go here and never into metric labels.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

AUDIT_LOGGER = "pgtls_proxy.audit"
_log = logging.getLogger(AUDIT_LOGGER)


@dataclass(slots=True)
class AuditRecord:
    """The facts gathered about one connection as it progresses."""

    session: str
    client_addr: str
    started: float = field(default_factory=time.monotonic)
    identity: str | None = None
    subject: str | None = None
    cert_serial: str | None = None
    cert_fingerprint_sha256: str | None = None
    requested_user: str | None = None
    user: str | None = None
    database: str | None = None
    backend: str | None = None
    negotiation: str | None = None
    tls_version: str | None = None
    outcome: str = "client_error"
    error: str | None = None
    bytes_in: int = 0
    bytes_out: int = 0
    event: str = "session"
    # The backend session came from backends.<name>.pool (no new login).
    backend_reused: bool = False

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "event": self.event,
            "session": self.session,
            "client_addr": self.client_addr,
            "identity": self.identity,
            "subject": self.subject,
            "cert_serial": self.cert_serial,
            "cert_fingerprint_sha256": self.cert_fingerprint_sha256,
            "user": self.user if self.user is not None else self.requested_user,
            "requested_user": self.requested_user,
            "database": self.database,
            "backend": self.backend,
            "negotiation": self.negotiation,
            "tls_version": self.tls_version,
            "outcome": self.outcome,
            "duration_s": round(time.monotonic() - self.started, 6),
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
        }
        if self.backend_reused:
            out["backend_reused"] = True
        if self.error is not None:
            out["error"] = self.error
        return out


def write(record: AuditRecord, enabled: bool = True) -> None:
    if enabled:
        _log.info("audit", extra=record.fields())
