"""Logging to stderr as readable text or one JSON object per line.

Every line of a connection carries its session id, and messages say who spoke
(``C:`` client, ``P:`` proxy, ``S:`` server/backend) as PgBouncer's do, so an
operator can follow one client through the log.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

LOGGER_NAME = "pgtls_proxy"
_STD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STD_ATTRS}


class JSONFormatter(logging.Formatter):
    """Flat JSON objects: ts, level, logger, session, msg, then the extras."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
        }
        extras = _extras(record)
        if "session" in extras:
            out["session"] = extras.pop("session")
        out["msg"] = record.getMessage()
        out.update(extras)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> [session] message key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        extras = _extras(record)
        session = extras.pop("session", None)
        parts = [ts, record.levelname]
        if session:
            parts.append(f"[{session}]")
        parts.append(record.getMessage())
        for key, value in extras.items():
            text = str(value)
            parts.append(f"{key}={json.dumps(text) if (' ' in text or not text) else text}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _WorkerStamp(logging.Filter):
    """Adds ``worker=N`` to every record of a worker process."""

    def __init__(self, worker: int) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.worker
        return True


def setup_logging(
    level: str = "info",
    fmt: str = "text",
    stream: TextIO | None = None,
    worker: int | None = None,
) -> None:
    """Configure the package logger; calling again replaces the handler."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())
    if worker is not None:
        handler.addFilter(_WorkerStamp(worker))
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False


class SessionLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger that stamps every record with the session id."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = dict(self.extra or {})
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return msg, kwargs
