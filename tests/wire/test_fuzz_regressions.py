"""What the fuzzers (fuzz/, ``make fuzz``) found, and replays that keep them working.

Every crash or hang a fuzzer finds is kept here as the input it found, run
through the same harness function, next to a plain test of the fix. The seed
corpora and a few inputs that reach the parsers' edge cases are replayed too,
so the harnesses themselves run in ``make test`` and cannot rot unnoticed.
"""

from __future__ import annotations

import struct

import pytest

from fuzz import fuzz_login, fuzz_proxyproto, fuzz_startup
from pgtls_proxy.wire import codec
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
