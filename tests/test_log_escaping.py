"""Log lines quote what strangers send; no value may add a line or reach the terminal.

Every class of control character goes through both formatters, in every
field of a record: the message, its %-arguments, the session id, the
key=value extras and a traceback.
"""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys
import textwrap
import unicodedata
from collections.abc import Iterator

import pytest

from pgtls_proxy.logsetup import (
    CONTINUATION,
    TEXT_RECORD,
    LineSplitter,
    escape,
    relay_worker_output,
    setup_logging,
)

FORGED = "2026-01-01T00:00:00.000+00:00 INFO audit event=session outcome=completed user=admin"

# One of each kind of character that can end, split or repaint a line.
CONTROLS = {
    "NUL": "\x00",
    "TAB": "\t",
    "LF": "\n",
    "VT": "\x0b",
    "FF": "\x0c",
    "CR": "\r",
    "ESC": "\x1b",
    "FS": "\x1c",
    "US": "\x1f",
    "DEL": "\x7f",
    "PAD (C1)": "\x80",
    "NEL (C1)": "\x85",
    "CSI (C1)": "\x9b",
    "APC (C1)": "\x9f",
    "LINE SEPARATOR": "\u2028",
    "PARAGRAPH SEPARATOR": "\u2029",
    "RLO (bidi)": "\u202e",
    "BOM": "\ufeff",
    "lone surrogate": "\udcff",
}
ALL_C0_C1 = "".join(chr(c) for c in [*range(0x20), *range(0x7F, 0xA0)])


def hostile(ch: str) -> str:
    """A value that, printed raw, would start a forged record on its own line."""
    return f"mallory{ch}{FORGED}{ch}\x1b[2J"


@pytest.fixture
def text_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    setup_logging("debug", "text", stream)
    try:
        yield stream
    finally:
        setup_logging("warning", "text")


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    setup_logging("debug", "json", stream)
    try:
        yield stream
    finally:
        setup_logging("warning", "text")


def _emit(value: str, *, exc: bool = False) -> None:
    log = logging.getLogger("pgtls_proxy.test")
    extra = {"session": value, "user": value, "database": value, "empty": "", value: "key"}
    if exc:
        try:
            raise ValueError(value)
        except ValueError:
            log.exception("C: %s refused", value, extra=extra)
    else:
        log.info("C: %s " + value, value, extra=extra)


def _physical_lines(text: str) -> list[str]:
    """Split on every character any reader treats as a line end, not only LF."""
    assert text.endswith("\n")
    return text[:-1].splitlines()


@pytest.mark.parametrize("name", list(CONTROLS))
def test_text_record_stays_one_printable_line(text_log: io.StringIO, name: str) -> None:
    _emit(hostile(CONTROLS[name]))
    out = text_log.getvalue()
    lines = _physical_lines(out)
    assert len(lines) == 1, lines
    assert lines[0].isprintable()
    assert TEXT_RECORD.match(lines[0])
    assert not any(line.startswith(FORGED) for line in lines)


@pytest.mark.parametrize("name", list(CONTROLS))
def test_json_record_stays_one_ascii_object(json_lines: io.StringIO, name: str) -> None:
    value = hostile(CONTROLS[name])
    _emit(value)
    lines = _physical_lines(json_lines.getvalue())
    assert len(lines) == 1, lines
    assert lines[0].isascii() and lines[0].isprintable()
    record = json.loads(lines[0])
    # JSON escapes, it does not lose: the value comes back exactly.
    assert record["user"] == value and record["session"] == value
    assert record["msg"] == f"C: {value} {value}"


def test_every_c0_c1_character_is_escaped_in_every_text_field(text_log: io.StringIO) -> None:
    _emit(ALL_C0_C1)
    [line] = _physical_lines(text_log.getvalue())
    assert line.isprintable()
    for ch in ALL_C0_C1:
        assert ch not in line
    # session, message (twice: %-arg and format string), user, database, the key
    assert line.count(escape(ALL_C0_C1)) == 6


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("a\nb", r"a\nb"),
        ("a\rb", r"a\rb"),
        ("a\tb", r"a\tb"),
        ("a\x00b", r"a\x00b"),
        ("\x1b[31m", r"\x1b[31m"),
        ("\x7f\x85\x9f", r"\x7f\x85\x9f"),
        ("\u2028\u2029", r"\u2028\u2029"),
        ("\U000e0001", r"\U000e0001"),
        # The backslash is doubled, so a client cannot spell an escape itself.
        (r"a\nb", r"a\\nb"),
        ("\\", "\\\\"),
        ("café 日本 -_.@/:", "café 日本 -_.@/:"),
    ],
)
def test_escape(raw: str, shown: str) -> None:
    assert escape(raw) == shown


def test_escape_is_unambiguous() -> None:
    """Different values never print the same (the escape is injective)."""
    values = ["a\nb", r"a\nb", "a\\\nb", r"a\\nb", "\\x1b", "\x1b", r"\\x1b"]
    assert len({escape(v) for v in values}) == len(values)


def test_every_non_printable_code_point_is_escaped() -> None:
    planes = [*range(0x30000), *range(0xE0000, 0xE0200), 0x10FFFF]
    for code in planes:
        ch = chr(code)
        if not ch.isprintable():
            shown = escape(ch)
            assert shown.startswith("\\") and shown.isascii() and shown.isprintable(), hex(code)
    assert unicodedata.category("\u2028") == "Zl"


def test_quoted_values_escape_the_quote(text_log: io.StringIO) -> None:
    logging.getLogger("pgtls_proxy.test").info(
        "m", extra={"a": 'x" b="y', "b": "", "c": "two words", "d": "plain"}
    )
    line = text_log.getvalue().rstrip("\n")
    assert line.endswith(r'a="x\" b=\"y" b="" c="two words" d=plain')


def test_text_traceback_lines_cannot_pass_for_records(text_log: io.StringIO) -> None:
    _emit(hostile("\n") + "\r" + hostile("\r\n"), exc=True)
    lines = _physical_lines(text_log.getvalue())
    assert len(lines) > 3
    assert TEXT_RECORD.match(lines[0])
    for line in lines[1:]:
        assert line.startswith(CONTINUATION), line
        assert not TEXT_RECORD.match(line)
        assert line.isprintable()
    assert any(line.startswith(CONTINUATION + "ValueError: mallory") for line in lines)
    # The exception's own newline splits it over continuation lines, never into a record.
    assert any(line == CONTINUATION + FORGED for line in lines)


def test_json_traceback_is_one_field(json_lines: io.StringIO) -> None:
    value = hostile("\n")
    _emit(value, exc=True)
    [line] = _physical_lines(json_lines.getvalue())
    record = json.loads(line)
    assert record["exc"].endswith(f"ValueError: {value}")


def test_stack_info_is_continued(text_log: io.StringIO) -> None:
    logging.getLogger("pgtls_proxy.test").info("here", stack_info=True)
    lines = _physical_lines(text_log.getvalue())
    assert TEXT_RECORD.match(lines[0])
    assert len(lines) > 2 and all(line.startswith(CONTINUATION) for line in lines[1:])


# ---------------------------------------------------------------- the worker relay


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_relay_passes_records_and_wraps_anything_else(fmt: str) -> None:
    stream = io.StringIO()
    setup_logging("info", fmt, stream, worker=3)
    try:
        logging.getLogger("pgtls_proxy.test").info("from the worker %s", "x\ny")
        record = stream.getvalue().rstrip("\n")
        stream.seek(0)
        stream.truncate()
        for raw in [
            record.encode(),
            b"Fatal Python error: Segmentation fault",
            FORGED.encode() + b"\x1b[2J",
            b"\xff\xfe not utf-8",
            b'{"ts":"2026","msg":"a JSON line that is not closed"',
            b"",
        ]:
            relay_worker_output(3, raw)
    finally:
        setup_logging("warning", "text")
    lines = _physical_lines(stream.getvalue())
    assert lines[0] == record
    assert len(lines) == 5
    for line in lines:
        assert line.isprintable()
        if fmt == "json":
            assert isinstance(json.loads(line), dict)
        else:
            assert TEXT_RECORD.match(line)
    assert "Segmentation fault" in lines[1] and "worker 3 wrote" in lines[1]
    assert not lines[2].startswith(FORGED)


def test_line_splitter_bounds_lines() -> None:
    splitter = LineSplitter(limit=8)
    assert splitter.feed(b"ab") == []
    assert splitter.feed(b"c\nde") == [b"abc"]
    assert splitter.feed(b"fghijklmnop\nq") == [b"defghijk", b"lmnop"]
    assert splitter.close() == [b"q"]
    assert splitter.close() == []


# ---------------------------------------------------------------- the process


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_python_output_goes_through_the_formatter(fmt: str) -> None:
    """Warnings, a thread's exception, an unraisable one and the fatal one: all records."""
    script = textwrap.dedent(
        f"""
        import gc, threading, warnings
        from pgtls_proxy.logsetup import route_process_output, setup_logging
        setup_logging("info", {fmt!r})
        route_process_output()
        warnings.warn("a warning\\n{FORGED}")
        t = threading.Thread(target=lambda: 1 / 0, name="t\\n{FORGED}")
        t.start(); t.join()
        class Bad:
            def __del__(self):
                raise RuntimeError("in __del__\\n{FORGED}")
        Bad(); gc.collect()
        import logging
        logging.getLogger("some.library").warning("other library\\n{FORGED}")
        import sys, traceback
        print("printed\\n{FORGED}", file=sys.stderr)
        try:
            1 / 0
        except ZeroDivisionError as exc:
            traceback.print_exception(exc)
        setup_logging("info", {fmt!r})  # again: still the real stream, no loop
        print("partial line, no newline", file=sys.stderr, end="")
        sys.stderr.flush()
        raise SystemError("the end\\n{FORGED}")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 1
    lines = _physical_lines(out.stderr)
    seen = []
    for line in lines:
        assert line.isprintable(), line
        assert not line.startswith(FORGED)
        if fmt == "json":
            record = json.loads(line)
            assert isinstance(record, dict)
            seen.append(record["msg"])
        else:
            assert TEXT_RECORD.match(line) or line.startswith(CONTINUATION), line
            if TEXT_RECORD.match(line):
                seen.append(line)
    text = "\n".join(seen)
    for needle in [
        "a warning",
        "uncaught exception in thread",
        "__del__",
        "other library",
        "stderr: printed",
        "stderr: ZeroDivisionError",
        "stderr: partial line, no newline",
    ]:
        assert needle in text, (needle, out.stderr)
    assert "uncaught exception" in seen[-1]
