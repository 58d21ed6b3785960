"""Logging to stderr as readable text or one JSON object per line.

Every line of a connection carries its session id, and messages say who spoke
(``C:`` client, ``P:`` proxy, ``S:`` server/backend) as PgBouncer's do, so an
operator can follow one client through the log.

Log lines quote what strangers send (user names, database names, certificate
subjects), so a line must never contain a byte that ends it early or talks to
the operator's terminal. The text format escapes every control character in
every field (see :func:`escape`) and prefixes the continuation lines of a
traceback so they cannot pass for records; the JSON format escapes through
``json.dumps``. :func:`route_process_output` sends what Python itself would
print to stderr (warnings, uncaught exceptions) through the same formatter,
and :func:`relay_worker_output` does the same for what workers write.
"""

from __future__ import annotations

import io
import json
import logging
import re
import sys
import threading
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TextIO

LOGGER_NAME = "pgtls_proxy"
_STD_ATTRS = frozenset(
    vars(logging.LogRecord("x", logging.INFO, "x", 0, "x", None, None)).keys()
) | {"message", "asctime", "taskName"}

# The text format: a record line starts with its timestamp and level; the
# lines of a traceback follow, each behind this prefix.
CONTINUATION = "  | "
TEXT_RECORD = re.compile(
    r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00 (?:DEBUG|INFO|WARNING|ERROR|CRITICAL) \S"
)
_NAMED_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(ch: str) -> str:
    named = _NAMED_ESCAPES.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    if code <= 0xFF:
        return f"\\x{code:02x}"
    if code <= 0xFFFF:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape(text: str) -> str:
    r"""``text`` with every non-printable character written as a backslash escape.

    Non-printable is Python's ``str.isprintable``: all C0 and C1 controls
    (NUL, TAB, LF, CR, ESC …), DEL, the line and paragraph separators
    U+2028/U+2029, the bidirectional overrides and every other format or
    unassigned code point, and lone surrogates. The backslash itself is
    doubled, so ``\n`` in a line always means the escape and never a literal
    backslash that a client sent before an ``n``. Printable non-ASCII text
    (``é``, ``日本``) stays as it is.
    """
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(ch if ch.isprintable() and ch != "\\" else _escape_char(ch) for ch in text)


def _value(value: Any) -> str:
    """A ``key=value`` value: escaped, and quoted when it has a space or quote or is empty."""
    text = escape(str(value))
    if not text or " " in text or '"' in text:
        return '"' + text.replace('"', '\\"') + '"'
    return text


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STD_ATTRS}


class JSONFormatter(logging.Formatter):
    """Flat JSON objects: ts, level, session, msg, then the extras.

    ``json.dumps`` with its default ``ensure_ascii`` writes every control and
    non-ASCII character (U+2028 included) as a ``\\u`` escape, so one record is
    one line of printable ASCII whatever it quotes.
    """

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
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``<time> <LEVEL> [session] message key=value ...``, one line per record.

    Every field is passed through :func:`escape`; a traceback (``exc_info``,
    ``stack_info``) follows on lines that each start with ``"  | "``, so no
    line that is not a record starts with a timestamp.
    """

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        extras = _extras(record)
        session = extras.pop("session", None)
        parts = [ts, record.levelname]
        if session:
            parts.append(f"[{escape(str(session))}]")
        parts.append(escape(record.getMessage()))
        for key, value in extras.items():
            parts.append(f"{escape(key)}={_value(value)}")
        line = " ".join(parts)
        if record.exc_info:
            line += _continuation(self.formatException(record.exc_info))
        if record.stack_info:
            line += _continuation(self.formatStack(record.stack_info))
        return line


def _continuation(text: str) -> str:
    return "".join("\n" + CONTINUATION + escape(part) for part in text.split("\n"))


class _WorkerStamp(logging.Filter):
    """Adds ``worker=N`` to every record of a worker process."""

    def __init__(self, worker: int) -> None:
        super().__init__()
        self.worker = worker

    def filter(self, record: logging.LogRecord) -> bool:
        record.worker = self.worker
        return True


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """The one handler of the process; remembers its format for the worker relay."""

    def __init__(self, stream: TextIO, fmt: str) -> None:
        super().__init__(stream)
        self.fmt = fmt
        self.setFormatter(JSONFormatter() if fmt == "json" else TextFormatter())

    def handleError(self, record: logging.LogRecord) -> None:
        """A record that cannot be formatted is reported as a record, not a raw traceback.

        The stdlib version prints ``--- Logging error ---`` and a traceback
        to stderr, which would break the one-record-per-line promise.
        """
        try:
            bad = logging.LogRecord(
                record.name,
                logging.ERROR,
                record.pathname,
                record.lineno,
                "P: cannot format a log record from %s:%s (message %r)",
                (record.pathname, record.lineno, record.msg),
                None,
            )
            self.stream.write(self.format(bad) + self.terminator)
            self.flush()
        except Exception:
            pass

    def write_line(self, line: str) -> None:
        """Write one already formatted line under the handler's lock."""
        with self.lock or threading.Lock():
            self.stream.write(line + self.terminator)
            self.flush()


_handler: _Handler | None = None
# Set by route_process_output: the root logger shares the package's handler.
routed = False


def setup_logging(
    level: str = "info",
    fmt: str = "text",
    stream: TextIO | None = None,
    worker: int | None = None,
) -> None:
    """Configure the package logger; calling again replaces the handler."""
    global _handler
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    root = logging.getLogger()
    if _handler is not None and _handler in root.handlers:
        root.removeHandler(_handler)
    real = sys.stderr._real if isinstance(sys.stderr, _StderrRecords) else sys.stderr
    handler = _Handler(stream or real, fmt)
    if worker is not None:
        handler.addFilter(_WorkerStamp(worker))
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
    if routed:
        root.addHandler(handler)
    _handler = handler


# ---------------------------------------------------------------- the process

_log = logging.getLogger(f"{LOGGER_NAME}.process")


def _exc_info(
    exc_type: type[BaseException] | None,
    exc: BaseException | None,
    tb: TracebackType | None,
) -> tuple[type[BaseException], BaseException, TracebackType | None] | None:
    if exc_type is None or exc is None:
        return None
    return exc_type, exc, tb


def _excepthook(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    """An exception nothing caught ends the process; say so as a record."""
    _log.critical("P: uncaught exception", exc_info=(exc_type, exc, tb))


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "?"
    _log.error(
        "P: uncaught exception in thread %s",
        name,
        exc_info=_exc_info(args.exc_type, args.exc_value, args.exc_traceback),
    )


def _unraisablehook(args: Any) -> None:
    """``Exception ignored in ...`` (a ``__del__`` or a callback that raised)."""
    try:
        where = repr(args.object) if args.object is not None else ""
    except Exception:
        where = "<object>"
    _log.warning(
        "P: %s%s",
        args.err_msg or "Exception ignored in",
        f": {where}" if where else "",
        exc_info=_exc_info(args.exc_type, args.exc_value, args.exc_traceback),
    )


class _TrimWarning(logging.Filter):
    """``warnings.formatwarning`` ends its text with a newline; a record needs none."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = record.msg.rstrip("\n")
        return True


class _StderrRecords(io.TextIOBase):
    """``sys.stderr`` for code that prints to it: each line becomes a record.

    Libraries print to ``sys.stderr`` on rare paths (trio, for one, prints
    a traceback when it fails to deliver a thread's result). The handler
    keeps the real stream, so records never come back here. ``fileno`` is
    the real one, for code (``faulthandler``) that writes to the descriptor.
    """

    def __init__(self, real: TextIO) -> None:
        super().__init__()
        self._real = real
        self._partial = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self._real.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._real.encoding

    def write(self, text: str) -> int:
        with self._lock:
            lines = (self._partial + text).split("\n")
            self._partial = lines.pop()
        for line in lines:
            _stderr_log.error("P: stderr: %s", line)
        return len(text)

    def flush(self) -> None:
        with self._lock:
            line, self._partial = self._partial, ""
        if line:
            _stderr_log.error("P: stderr: %s", line)


_stderr_log = logging.getLogger(f"{LOGGER_NAME}.stderr")


def route_process_output() -> None:
    """Send what Python would print to stderr through the configured formatter.

    - warnings (``warnings.warn``; ``cryptography`` warns, for instance,
      about a certificate whose CN is longer than 64 characters) go to the
      ``py.warnings`` logger, and the root logger gets the package's handler
      at level WARNING, so other libraries' records (and logging's own
      last-resort output) take the same form;
    - ``sys.excepthook``, ``threading.excepthook`` and ``sys.unraisablehook``
      log the exception, its traceback on continuation lines;
    - whatever else is printed to ``sys.stderr`` becomes one record a line.

    Only what bypasses Python's ``sys.stderr`` (a fatal interpreter error,
    ``faulthandler``, a C library) reaches the descriptor unformatted; in a
    worker the supervisor's relay wraps even that.

    Called by ``run`` after :func:`setup_logging`; tests that configure
    logging in-process leave Python's own hooks to pytest.
    """
    global routed
    routed = True
    logging.captureWarnings(True)
    py_warnings = logging.getLogger("py.warnings")
    if not any(isinstance(f, _TrimWarning) for f in py_warnings.filters):
        py_warnings.addFilter(_TrimWarning())
    root = logging.getLogger()
    if _handler is not None and _handler not in root.handlers:
        root.addHandler(_handler)
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook
    sys.unraisablehook = _unraisablehook
    if not isinstance(sys.stderr, _StderrRecords) and sys.stderr is not None:
        sys.stderr = _StderrRecords(sys.stderr)


# ---------------------------------------------------------------- workers

# The longest line a worker may write before the relay cuts it (a longer one
# arrives as several wrapped records): an audit record quotes at most one
# certificate (OpenSSL's 100 KiB list limit) in two or three fields and a
# startup packet (10 KiB), each character escaped to at most 12 bytes.
MAX_RELAYED_LINE = 4 << 20
_relay_log = logging.getLogger(f"{LOGGER_NAME}.supervisor")


def _is_record(line: str, fmt: str) -> bool:
    """Whether ``line`` is what this process's formatter writes."""
    if not line.isprintable():
        return False
    if fmt == "json":
        if not (line.startswith('{"ts":"') and line.endswith("}")):
            return False
        try:
            return isinstance(json.loads(line), dict)
        except ValueError:
            return False
    return TEXT_RECORD.match(line) is not None or line.startswith(CONTINUATION)


def relay_worker_output(worker: int, raw: bytes) -> None:
    """Write one line a worker wrote to its stderr to the supervisor's.

    A line in this process's format (every line the worker's own formatter
    writes) passes as it is. Anything else (an interpreter crash, a C
    library's message, ``faulthandler``, the one-line reason a worker gives
    before its logging is set up) becomes a record of its own, escaped, so
    the operator's stream keeps the format and no worker output can forge a
    record. Only the supervisor writes to the operator's stderr, so lines of
    different workers never interleave mid-line.
    """
    text = raw.decode("utf-8", "replace").rstrip("\r")
    handler = _handler
    if handler is not None and _is_record(text, handler.fmt):
        handler.write_line(text)
        return
    if not text:
        return
    _relay_log.warning("P: worker %d wrote: %s", worker, text, extra={"worker": worker})


class LineSplitter:
    """Cuts a byte stream into lines of at most ``MAX_RELAYED_LINE`` bytes."""

    def __init__(self, limit: int = MAX_RELAYED_LINE) -> None:
        self.limit = limit
        self._buffer = bytearray()

    def feed(self, chunk: bytes | bytearray) -> list[bytes]:
        self._buffer += chunk
        lines = []
        while True:
            end = self._buffer.find(b"\n", 0, self.limit + 1)
            if end >= 0:
                lines.append(bytes(self._buffer[:end]))
                del self._buffer[: end + 1]
            elif len(self._buffer) > self.limit:
                lines.append(bytes(self._buffer[: self.limit]))
                del self._buffer[: self.limit]
            else:
                return lines

    def close(self) -> list[bytes]:
        rest, self._buffer = bytes(self._buffer), bytearray()
        return [rest] if rest else []


class SessionLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger that stamps every record with the session id."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = dict(self.extra or {})
        extra.update(kwargs.get("extra") or {})
        kwargs["extra"] = extra
        return msg, kwargs
