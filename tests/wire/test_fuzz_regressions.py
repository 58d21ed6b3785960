"""What the fuzzers (fuzz/, ``make fuzz``) found, and replays that keep them working.

Every crash or hang a fuzzer finds is kept here as the input it found, run
through the same harness function, next to a plain test of the fix. The seed
corpora and a few inputs that reach the parsers' edge cases are replayed too,
so the harnesses themselves run in ``make test`` and cannot rot unnoticed.
"""

from __future__ import annotations

import struct
import time

import pytest
from scramp import ScramMechanism

from fuzz import fuzz_login, fuzz_proxyproto, fuzz_startup
from pgtls_proxy.wire import codec
from pgtls_proxy.wire.auth import MAX_SCRAM_ITERATIONS, PasswordAnswerer
from pgtls_proxy.wire.login import BackendLoginError, login
from pgtls_proxy.wire.messages import PROTOCOL_3_0, StartupMessage

# ------------------------------------------------------------------ backend errors

# fuzz_login, after 1,244 runs: an ErrorResponse whose C field is no SQLSTATE
# ("" here). The session put it in its own ErrorResponse, which raised
# ValueError: the client got no message and the session ended as an internal
# error. (Replayed as found; the step that matters is the last error op.)
MALFORMED_SQLSTATE = (
    b"j\x01\x00\x00\x00\x04\x00\xff\xff\xff\xff\xff\xff\xb3\xff\xff\xff\xfffke"
    + b"\xff" * 26
    + b"\x00fkey\x0216~\t\x08\x00\x00\x00fkey!\x00\x0b\n\x0c\x00\x00"
)


def test_malformed_backend_sqlstate_replay() -> None:
    assert fuzz_login.run(MALFORMED_SQLSTATE) == "refused 08006: no"


@pytest.mark.parametrize("code", [None, "", "XX", "28p01", "123456", "2800\n"])
def test_a_backend_error_without_a_sqlstate_is_reported_as_08006(code: str | None) -> None:
    fields = b"SFATAL\0" + (b"" if code is None else b"C" + code.encode() + b"\0")
    gen = login(StartupMessage(PROTOCOL_3_0, (("user", "alice"),)))
    next(gen)
    with pytest.raises(BackendLoginError) as info:
        gen.send((b"E", fields + b"Mno such thing\0\0"))
    assert info.value.sqlstate == "08006"
    assert info.value.message == "no such thing" and info.value.from_backend
    # The session sends it on to the client: it must make an ErrorResponse.
    assert codec.error_response("FATAL", info.value.sqlstate, info.value.message)


def test_a_backend_sqlstate_is_kept_when_it_is_one() -> None:
    gen = login(StartupMessage(PROTOCOL_3_0, (("user", "alice"),)))
    next(gen)
    with pytest.raises(BackendLoginError) as info:
        gen.send((b"E", b"SFATAL\0C3D000\0Mdatabase does not exist\0\0"))
    assert info.value.sqlstate == "3D000"


# ------------------------------------------------------------------ password answers

# fuzz_login, after 14,601 runs: a passwords-file secret with a NUL in it, and
# a backend asking for a cleartext password. codec.password_message refused
# to build the message with ValueError, which the session took for a bug.
NUL_IN_CLEARTEXT_SECRET = b"/" * 75 + b"\xff" * 6 + b"&\x14\x00\x01"


def test_nul_in_cleartext_secret_replay() -> None:
    outcome = fuzz_login.run(NUL_IN_CLEARTEXT_SECRET)
    assert outcome.startswith("refused 28000:") and "NUL character" in outcome


def test_a_cleartext_secret_with_a_nul_is_refused_clearly() -> None:
    answerer = PasswordAnswerer("alice", "pass\0word", describe='backend "main"', cleartext_ok=True)
    with pytest.raises(BackendLoginError) as info:
        answerer.answer(codec.AUTH_CLEARTEXT, b"")
    assert info.value.sqlstate == "28000"
    assert "NUL character" in info.value.message
    assert "pass" not in info.value.message.replace("password", "")


# Seen while writing fuzz_login, not found by it (178,379 runs in 10 minutes
# never asked for over a million rounds): a server-first asking for
# 10,000,000 PBKDF2 rounds (scramp's own ceiling) cost about 30 s of CPU on
# the worker's event loop, stalling every session of that worker.
HUGE_ITERATIONS = (
    b"\x00\x01\x00\x00\x00"
    + bytes([4, 0, 1, 0])
    + bytes([6])
    + fuzz_login._blob(b"r=@@x,s=MDEyMzQ1Njc4OWFiY2RlZg==,i=10000000")
    + b"\x00"
)


def test_huge_iteration_count_replay_is_refused_at_once() -> None:
    started = time.perf_counter()
    outcome = fuzz_login.run(HUGE_ITERATIONS)
    assert outcome.startswith("refused 28000:") and "10000000 SCRAM iterations" in outcome
    assert time.perf_counter() - started < 2, "refused before PBKDF2 ran"


def _server_first(answerer: PasswordAnswerer, iterations: int) -> bytes:
    first = answerer.answer(codec.AUTH_SASL, b"SCRAM-SHA-256\0\0")
    client_first = first[5:].split(b"\0", 1)[1][4:].decode()
    nonce = client_first.split(",r=", 1)[1]
    salt = "MDEyMzQ1Njc4OWFiY2RlZg=="
    return f"r={nonce}srv,s={salt},i={iterations}".encode()


@pytest.mark.parametrize("iterations", [MAX_SCRAM_ITERATIONS + 1, 10_000_000])
def test_scram_iterations_beyond_the_cap_are_refused_without_hashing(iterations: int) -> None:
    answerer = PasswordAnswerer("alice", "pw", describe='backend "main"')
    server_first = _server_first(answerer, iterations)
    started = time.perf_counter()
    with pytest.raises(BackendLoginError) as info:
        answerer.answer(codec.AUTH_SASL_CONTINUE, server_first)
    assert time.perf_counter() - started < 2, "refused before PBKDF2 ran"
    assert info.value.sqlstate == "28000"
    assert f"{iterations} SCRAM iterations" in info.value.message
    assert "pw" not in info.value.message.replace('"alice"', "")


def test_scram_iterations_above_the_default_still_work() -> None:
    """A backend hardened beyond PostgreSQL's 4096 rounds is still answered."""
    mech = ScramMechanism()
    info = mech.make_auth_info("pw", iteration_count=20_000)
    server = mech.make_server(lambda _user: info)
    answerer = PasswordAnswerer("alice", "pw", describe='backend "main"')
    first = answerer.answer(codec.AUTH_SASL, b"SCRAM-SHA-256\0\0")
    server.set_client_first(first[5:].split(b"\0", 1)[1][4:].decode())
    final = answerer.answer(codec.AUTH_SASL_CONTINUE, server.get_server_first().encode())
    server.set_client_final(final[5:].decode())
    assert answerer.answer(codec.AUTH_SASL_FINAL, server.get_server_final().encode()) == b""
    answerer.done()


# ------------------------------------------------------------------ replays

# Inputs from the fuzzers' corpora that reach edge cases, kept so the
# harnesses (and what they assert) run on every `make test`.
STARTUP_EDGES = [
    # inside TLS, a length word of 10005: one more than PostgreSQL allows
    b"\x01\x00" + struct.pack("!I", 10005),
    # SSLRequest, then bytes in the clear before the handshake (CVE-2021-23214)
    b"\x02\x00" + struct.pack("!II", 8, 80877103) + b"Q",
    # SSLRequest twice
    b"\x00\x00" + struct.pack("!II", 8, 80877103) * 2,
    # a StartupMessage that ends without its terminating NUL
    b"\x01\x00" + struct.pack("!II", 15, PROTOCOL_3_0) + b"user\0a\0\0",
    # CancelRequest with a 257-byte key
    b"\x00\x00" + struct.pack("!III", 269, 80877102, 1) + bytes(257),
]
PROXY_EDGES = [
    b"\x00PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",  # a port with a leading zero
    b"\x00PROXY TCP6 fe80::1%eth0 :: 1 2\r\n",  # a scope id
    b"\x00PROXY UNKNOWN" + b" " * 92 + b"\r\n",  # the longest v1 line
    b"\x00PROXY UNKNOWN" + b" " * 93 + b"\r\n",  # one byte over
    b"\x00\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0b" + bytes(11),  # v2 TCP4, short block
    b"\x00\r\n\r\n\x00\r\nQUIT\n\x20\xff\x00\x00",  # v2 LOCAL ignores the family
]


@pytest.mark.parametrize("data", fuzz_startup.seeds() + STARTUP_EDGES)
def test_startup_harness_replays(data: bytes) -> None:
    fuzz_startup.test_one_input(data)


@pytest.mark.parametrize("data", fuzz_proxyproto.seeds() + PROXY_EDGES)
def test_proxyproto_harness_replays(data: bytes) -> None:
    fuzz_proxyproto.test_one_input(data)


def test_login_harness_seeds_log_in() -> None:
    """The login seeds reach the end of every method, so the fuzzer starts deep."""
    outcomes = [fuzz_login.run(seed) for seed in fuzz_login.seeds()]
    assert outcomes.count("ok") >= 8, outcomes
