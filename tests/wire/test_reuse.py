"""The pure parts of backend session reuse: TerminateWatch, the reset exchange, merge."""

from __future__ import annotations

import struct

import pytest

from pgtls_proxy.wire.codec import MessageReader, encode_message
from pgtls_proxy.wire.reuse import ResetCheck, TerminateWatch, merge_parameters, reset_request

TERMINATE = b"X\x00\x00\x00\x04"


def query(sql: str) -> bytes:
    return encode_message(b"Q", sql.encode() + b"\0")


def copy_data(data: bytes) -> bytes:
    return encode_message(b"d", data)


def parse(name: str, sql: str) -> bytes:
    return encode_message(b"P", name.encode() + b"\0" + sql.encode() + b"\0" + b"\0\0")


def feed_all(watch: TerminateWatch, chunks: list[bytes]) -> list[int]:
    return [watch.feed(chunk) for chunk in chunks]


# ------------------------------------------------------------------ TerminateWatch


def test_terminate_alone_is_reported_at_offset_zero() -> None:
    assert TerminateWatch().feed(TERMINATE) == 0


def test_terminate_as_memoryview() -> None:
    assert TerminateWatch().feed(memoryview(bytearray(TERMINATE))) == 0


def test_terminate_after_other_messages_in_the_same_chunk() -> None:
    before = query("select 1") + parse("s1", "select $1") + copy_data(b"abc")
    watch = TerminateWatch()
    assert watch.feed(before + TERMINATE) == len(before)
    assert not watch.lost


def test_terminate_after_earlier_chunks() -> None:
    watch = TerminateWatch()
    assert feed_all(watch, [query("select 1"), query("select 2")]) == [-1, -1]
    assert watch.feed(TERMINATE) == 0


def test_terminate_not_last_in_chunk_is_not_reported() -> None:
    """Only a Terminate that *ends* the chunk counts: bytes after it are not idle."""
    watch = TerminateWatch()
    assert watch.feed(TERMINATE + query("select 1")) == -1
    # Two in a row: the last one ends the chunk (the first is passed on, and
    # the backend then fails the reset: ResetCheck's business, not the watch's).
    head = query("select 1") + TERMINATE
    assert watch.feed(head + TERMINATE) == len(head)


def test_terminate_with_wrong_length_is_not_reported() -> None:
    watch = TerminateWatch()
    assert watch.feed(encode_message(b"X", b"\0")) == -1
    assert not watch.lost
    assert watch.feed(TERMINATE) == 0, "framing kept: the next real Terminate counts"


def test_terminate_split_byte_by_byte_is_not_reported() -> None:
    """Its first bytes were already passed on: the message began in an earlier chunk."""
    watch = TerminateWatch()
    results = feed_all(watch, [TERMINATE[i : i + 1] for i in range(len(TERMINATE))])
    assert results == [-1] * len(TERMINATE)
    assert not watch.lost
    # The framing is still right afterwards.
    assert watch.feed(query("select 1") + TERMINATE) == len(query("select 1"))


@pytest.mark.parametrize("cut", range(1, len(TERMINATE)))
def test_terminate_header_split_in_two_is_not_reported(cut: int) -> None:
    watch = TerminateWatch()
    head = query("select 1")
    assert watch.feed(head + TERMINATE[:cut]) == -1
    assert watch.feed(TERMINATE[cut:]) == -1
    assert not watch.lost


@pytest.mark.parametrize(
    "message",
    [
        copy_data(b"some rows\n" + TERMINATE),
        encode_message(b"Q", b"select 1; -- " + TERMINATE),
        encode_message(b"Q", TERMINATE),
    ],
    ids=["copydata", "query", "query-only-the-bytes"],
)
def test_terminate_bytes_inside_a_message_are_not_reported(message: bytes) -> None:
    assert message.endswith(TERMINATE)
    watch = TerminateWatch()
    assert watch.feed(message) == -1
    assert not watch.lost


def test_terminate_bytes_at_the_end_of_a_partial_message_are_not_reported() -> None:
    """The chunk ends inside a CopyData whose bytes so far end with X 0 0 0 4."""
    body = b"row\n" + TERMINATE + b"more data\n"
    message = copy_data(body)
    cut = 5 + len(b"row\n" + TERMINATE)  # header + body up to the fake Terminate
    watch = TerminateWatch()
    assert message[:cut].endswith(TERMINATE)
    assert watch.feed(message[:cut]) == -1
    assert watch.feed(message[cut:]) == -1
    assert watch.feed(TERMINATE) == 0, "framing kept across the split"


def test_terminate_bytes_spanning_message_body_and_chunks_are_not_reported() -> None:
    """A long CopyData fed in pieces that each end with the Terminate pattern."""
    pieces = [b"a" * 10 + TERMINATE, b"b" * 3 + TERMINATE, TERMINATE]
    message = copy_data(b"".join(pieces))
    watch = TerminateWatch()
    first = 5 + len(pieces[0])
    assert watch.feed(message[:first]) == -1
    assert watch.feed(message[first : first + len(pieces[1])]) == -1
    assert watch.feed(message[first + len(pieces[1]) :]) == -1
    assert watch.feed(TERMINATE) == 0


def _stream() -> tuple[bytes, int]:
    before = query("select 1") + parse("", "select $1") + copy_data(b"x" * 20)
    return before + TERMINATE, len(before)


@pytest.mark.parametrize("cut", range(len(_stream()[0]) + 1))
def test_messages_split_across_two_chunks(cut: int) -> None:
    """Every split point: reported only when the Terminate lies whole in the last chunk."""
    stream, at = _stream()
    watch = TerminateWatch()
    first, second = watch.feed(stream[:cut]), watch.feed(stream[cut:])
    assert not watch.lost
    if cut == len(stream):  # everything in the first chunk
        assert (first, second) == (at, -1)
    elif cut <= at:  # the Terminate lies whole in the second chunk
        assert (first, second) == (-1, at - cut)
    else:  # the Terminate was split
        assert (first, second) == (-1, -1)


def test_messages_split_byte_by_byte_then_terminate() -> None:
    before, _ = _stream()
    before = before[: -len(TERMINATE)]
    watch = TerminateWatch()
    assert feed_all(watch, [before[i : i + 1] for i in range(len(before))]) == [-1] * len(before)
    assert watch.feed(TERMINATE) == 0


def test_header_split_then_terminate_in_the_same_chunk() -> None:
    """A header completed from an earlier chunk, then a whole Terminate: reported."""
    q = query("select 42")
    watch = TerminateWatch()
    assert watch.feed(q[:3]) == -1
    assert watch.feed(q[3:] + TERMINATE) == len(q) - 3


@pytest.mark.parametrize("length", [0, 1, 2, 3])
def test_length_below_four_sets_lost(length: int) -> None:
    watch = TerminateWatch()
    assert watch.feed(struct.pack("!cI", b"Q", length) + TERMINATE) == -1
    assert watch.lost
    assert watch.feed(TERMINATE) == -1, "once lost, never reported"
    assert watch.lost


def test_length_below_four_in_a_split_header_sets_lost() -> None:
    watch = TerminateWatch()
    bad = struct.pack("!cI", b"Q", 2)
    assert watch.feed(bad[:2]) == -1
    assert not watch.lost
    assert watch.feed(bad[2:]) == -1
    assert watch.lost
    assert watch.feed(TERMINATE) == -1


def test_empty_chunk() -> None:
    watch = TerminateWatch()
    assert watch.feed(b"") == -1
    assert watch.feed(TERMINATE) == 0


# ------------------------------------------------------------------ reset_request


def test_reset_request_is_discard_all_then_the_nonce_query() -> None:
    reader = MessageReader()
    reader.feed(reset_request("abc123"))
    assert reader.next_message() == (b"Q", b"DISCARD ALL\0")
    assert reader.next_message() == (b"Q", b"SELECT 'abc123'\0")
    assert reader.next_message() is None
    assert reader.buffered() == b""


# ------------------------------------------------------------------ ResetCheck

NONCE = "0123456789abcdef0123456789abcdef"


def row_description() -> bytes:
    return struct.pack("!h", 1) + b"?column?\0" + struct.pack("!ihihih", 0, 0, 25, -1, -1, 0)


def data_row(*values: bytes | None) -> bytes:
    out = struct.pack("!h", len(values))
    for v in values:
        out += struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v
    return out


def right_answer(nonce: str = NONCE) -> list[tuple[bytes, bytes]]:
    return [
        (b"C", b"DISCARD ALL\0"),
        (b"Z", b"I"),
        (b"T", row_description()),
        (b"D", data_row(nonce.encode())),
        (b"C", b"SELECT 1\0"),
        (b"Z", b"I"),
    ]


def run_check(messages: list[tuple[bytes, bytes]], nonce: str = NONCE) -> list[bool | None]:
    check = ResetCheck(nonce)
    return [check.feed(t, p) for t, p in messages]


def param(name: str, value: str) -> tuple[bytes, bytes]:
    return b"S", name.encode() + b"\0" + value.encode() + b"\0"


def notice(text: str) -> tuple[bytes, bytes]:
    return b"N", b"SNOTICE\0C00000\0M" + text.encode() + b"\0\0"


def test_reset_check_exact_answer() -> None:
    assert run_check(right_answer()) == [None] * 5 + [True]


def test_reset_check_with_parameter_status_and_notices_interleaved() -> None:
    answer = right_answer()
    messages = [
        notice("first"),
        answer[0],
        param("application_name", ""),
        param("DateStyle", "ISO, MDY"),
        answer[1],
        notice("between"),
        answer[2],
        answer[3],
        param("TimeZone", "UTC"),
        answer[4],
        answer[5],
    ]
    check = ResetCheck(NONCE)
    results = [check.feed(t, p) for t, p in messages]
    assert results == [None] * (len(messages) - 1) + [True]
    assert check.parameters == [
        encode_message(*param("application_name", "")),
        encode_message(*param("DateStyle", "ISO, MDY")),
        encode_message(*param("TimeZone", "UTC")),
    ]


def test_reset_check_without_parameters_collects_none() -> None:
    check = ResetCheck(NONCE)
    for t, p in right_answer():
        check.feed(t, p)
    assert check.parameters == []


def _replace(index: int, message: tuple[bytes, bytes]) -> list[tuple[bytes, bytes]]:
    answer = right_answer()
    answer[index] = message
    return answer


ERROR = (b"E", b"SERROR\0C25001\0MDISCARD ALL cannot run inside a transaction block\0\0")


@pytest.mark.parametrize(
    ("messages", "fails_at"),
    [
        pytest.param(_replace(3, (b"D", data_row(b"f" * 32))), 3, id="wrong-nonce"),
        pytest.param(_replace(3, (b"D", data_row(NONCE.encode() + b"x"))), 3, id="longer-nonce"),
        pytest.param(_replace(3, (b"D", data_row(None))), 3, id="null-value"),
        pytest.param(
            _replace(3, (b"D", data_row(NONCE.encode(), NONCE.encode()))), 3, id="two-columns"
        ),
        pytest.param([ERROR, *right_answer()], 0, id="error-first"),
        pytest.param(_replace(0, ERROR), 0, id="error-for-discard"),
        pytest.param(_replace(3, ERROR), 3, id="error-for-nonce"),
        pytest.param([(b"D", data_row(b"1")), *right_answer()], 0, id="datarow-first"),
        pytest.param([(b"T", row_description()), *right_answer()], 0, id="rowdesc-first"),
        pytest.param([(b"Z", b"I"), *right_answer()], 0, id="ready-first"),
        pytest.param([(b"I", b""), *right_answer()], 0, id="emptyquery-first"),
        pytest.param([(b"1", b""), *right_answer()], 0, id="parsecomplete-first"),
        pytest.param([(b"A", b"\0\0\0\1chan\0\0"), *right_answer()], 0, id="notification"),
        pytest.param(_replace(1, (b"Z", b"T")), 1, id="in-transaction-after-discard"),
        pytest.param(_replace(1, (b"Z", b"E")), 1, id="failed-transaction-after-discard"),
        pytest.param(_replace(5, (b"Z", b"T")), 5, id="in-transaction-at-end"),
        pytest.param(_replace(0, (b"C", b"SELECT 1\0")), 0, id="other-command-tag-first"),
        pytest.param(_replace(4, (b"C", b"SELECT 2\0")), 4, id="two-rows-tag"),
        pytest.param(
            [*right_answer()[:4], (b"D", data_row(NONCE.encode())), *right_answer()[4:]],
            4,
            id="extra-row",
        ),
        pytest.param([*right_answer()[:2], *right_answer()], 2, id="client-discard-all-pipelined"),
    ],
)
def test_reset_check_rejects(messages: list[tuple[bytes, bytes]], fails_at: int) -> None:
    results = run_check(messages)
    assert results[:fails_at] == [None] * fails_at
    assert results[fails_at] is False


def test_reset_check_nothing_after_the_end() -> None:
    check = ResetCheck(NONCE)
    results = [check.feed(t, p) for t, p in right_answer()]
    assert results[-1] is True
    assert check.feed(b"Z", b"I") is False
    assert check.feed(b"D", data_row(b"x")) is False


def test_reset_check_nonce_is_per_check() -> None:
    assert run_check(right_answer("aaaa"), nonce="bbbb")[3] is False
    assert run_check(right_answer("bbbb"), nonce="bbbb")[-1] is True


# ------------------------------------------------------------------ merge_parameters


def ps(name: str, value: str) -> bytes:
    return encode_message(*param(name, value))


def test_merge_without_changes_returns_the_login_as_is() -> None:
    login = [ps("application_name", "a"), ps("DateStyle", "ISO, MDY")]
    assert merge_parameters(login, []) is login


def test_merge_replaces_values_in_place_and_keeps_the_rest() -> None:
    note = encode_message(*notice("hello"))
    login = [
        ps("application_name", "first"),
        note,
        ps("DateStyle", "ISO, MDY"),
        ps("TimeZone", "UTC"),
    ]
    merged = merge_parameters(login, [ps("DateStyle", "German, DMY"), ps("application_name", "")])
    assert merged == [
        ps("application_name", ""),
        note,
        ps("DateStyle", "German, DMY"),
        ps("TimeZone", "UTC"),
    ]
    assert login[0] == ps("application_name", "first"), "the input is not modified"


def test_merge_appends_new_parameters_in_their_order() -> None:
    login = [ps("DateStyle", "ISO, MDY")]
    merged = merge_parameters(
        login, [ps("new_b", "2"), ps("DateStyle", "ISO, DMY"), ps("new_a", "1")]
    )
    assert merged == [ps("DateStyle", "ISO, DMY"), ps("new_b", "2"), ps("new_a", "1")]


def test_merge_last_change_of_a_parameter_wins() -> None:
    login = [ps("application_name", "x")]
    merged = merge_parameters(login, [ps("application_name", "y"), ps("application_name", "z")])
    assert merged == [ps("application_name", "z")]


def test_merge_does_not_touch_a_notice_named_like_a_parameter() -> None:
    """Only ParameterStatus messages are matched by name."""
    fake = encode_message(b"N", b"application_name\0whatever\0")
    login = [fake, ps("application_name", "x")]
    merged = merge_parameters(login, [ps("application_name", "y")])
    assert merged == [fake, ps("application_name", "y")]


def test_merge_of_an_empty_login() -> None:
    assert merge_parameters([], [ps("a", "1")]) == [ps("a", "1")]
