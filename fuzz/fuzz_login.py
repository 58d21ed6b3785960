"""Fuzz the backend login generator and the password authenticator.

The input plays the backend: each step it picks a message (authentication
requests of every kind, SCRAM server-first and server-final, both genuine
and garbage, BackendKeyData, ParameterStatus, notices, errors, ReadyForQuery,
or raw bytes) and the bytes go through :class:`codec.MessageReader` into
:func:`login`, as :func:`pgtls_proxy.backend.run_login` drives it. A real
SCRAM server (scramp) answers the proxy's own SCRAM messages, so the input
can complete the exchange and reach the paths after it. The contract checked:

- only :class:`BackendLoginError` and :class:`ProtocolError` escape (the I/O
  layer turns the latter into the former), and the error can be put in an
  ErrorResponse to the client;
- the proxy sends only well-formed frontend messages, never the password in
  the clear unless cleartext is allowed and was asked for, never a stored hash;
- a login that ends well with SCRAM saw the server's genuine signature;
- the result is made of well-formed messages.

Run: ``python -m fuzz.fuzz_login [libFuzzer options] [corpus dirs]``.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

from scramp import ScramException, ScramMechanism
from scramp.core import ScramServer

from fuzz._provider import Provider
from fuzz._run import fuzz
from pgtls_proxy.wire import codec
from pgtls_proxy.wire.auth import (
    SCRAM,
    SCRAM_PLUS,
    TLS_SERVER_END_POINT,
    PasswordAnswerer,
    is_md5_hash,
    is_scram_verifier,
)
from pgtls_proxy.wire.errors import ProtocolError
from pgtls_proxy.wire.login import BackendLoginError, LoginResult, login
from pgtls_proxy.wire.messages import PROTOCOL_3_0, StartupMessage

PASSWORD = "correct horse"
CHANNEL_BINDING = hashlib.sha256(b"the backend's certificate").digest()
NONCE_MARK = b"@@"  # in a made-up server-first, replaced by the proxy's client nonce
SALT = b"0123456789abcdef"
MAX_STEPS = 64

USERS = ("alice", "u,=ser", "ünïcode")
MECHANISM_LISTS = (
    b"SCRAM-SHA-256\x00\x00",
    b"SCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00",
    b"SCRAM-SHA-256-PLUS\x00\x00",
    b"SCRAM-SHA-1\x00\x00",
    b"\x00",
)


def _secrets(user: str) -> tuple[str, ...]:
    md5 = "md5" + hashlib.md5((PASSWORD + user).encode()).hexdigest()
    scram = "SCRAM-SHA-256$4096:c2FsdHNhbHRzYWx0$c3RvcmVk:c2VydmVy"
    # A passwords file can hold any character but a line break, NUL included.
    return (PASSWORD, md5, scram, "pä\u00adss", "\u0627\u0031", "pass\x00word")


_AUTH_INFO: dict[str, tuple[bytes, bytes, bytes, int]] = {}


def _auth_info(mechanism: str) -> tuple[bytes, bytes, bytes, int]:
    """The backend's stored key for PASSWORD: computed once, reused every run."""
    if mechanism not in _AUTH_INFO:
        info = ScramMechanism(mechanism).make_auth_info(PASSWORD, 4096, SALT)
        _AUTH_INFO[mechanism] = info
    return _AUTH_INFO[mechanism]


def _auth(code: int, data: bytes = b"") -> bytes:
    return codec.encode_message(b"R", struct.pack("!I", code) + data)


@dataclass
class _Backend:
    """A backend the input controls, with a genuine SCRAM server behind it."""

    fdp: Provider
    client_nonce: bytes = b""
    server_first: bytes | None = None
    server_final: bytes | None = None
    genuine_final_sent: bool = False
    mechanism: str | None = None
    sent_by_proxy: list[tuple[bytes, bytes]] = field(default_factory=list)
    scram: ScramServer | None = None

    def hear(self, data: bytes, startup: bool) -> None:
        """What the proxy sent: well-formed messages; feed SCRAM to the server."""
        if startup:
            return
        reader = codec.MessageReader()
        reader.feed(data)
        while (message := reader.next_message()) is not None:
            self.sent_by_proxy.append(message)
            msg_type, payload = message
            assert msg_type == b"p", message
            self._scram_step(payload)
        assert reader.buffered() == b"", data

    def _scram_step(self, payload: bytes) -> None:
        if payload.startswith((SCRAM.encode() + b"\x00", SCRAM_PLUS.encode() + b"\x00")):
            name, rest = payload.split(b"\x00", 1)
            (length,) = struct.unpack("!i", rest[:4])
            first = rest[4:]
            assert length == len(first), payload
            self.mechanism = name.decode()
            self.client_nonce = first.split(b",r=", 1)[1].split(b",")[0]
            cb = (TLS_SERVER_END_POINT, CHANNEL_BINDING) if name == SCRAM_PLUS.encode() else None
            server = ScramMechanism(self.mechanism).make_server(
                lambda _user: _auth_info(self.mechanism or SCRAM), channel_binding=cb
            )
            self.scram = server
            try:
                server.set_client_first(first.decode())
                self.server_first = server.get_server_first().encode()
            except ScramException:
                self.server_first = None
            return
        server = self.scram
        if self.server_first is not None and server is not None:
            try:
                server.set_client_final(payload.decode())
                self.server_final = server.get_server_final().encode()
            except (ScramException, UnicodeDecodeError):
                self.server_final = None

    def next_bytes(self) -> bytes:
        """The backend's next message (or raw bytes), as the input chooses."""
        fdp = self.fdp
        op = fdp.byte() % 18
        if op == 0:
            return fdp.blob(64)
        if op == 1:
            return _auth(codec.AUTH_OK)
        if op == 2:
            return _auth(codec.AUTH_CLEARTEXT)
        if op == 3:
            return _auth(codec.AUTH_MD5, fdp.take(4) if fdp.boolean() else fdp.blob(8))
        if op == 4:
            lists = fdp.pick(MECHANISM_LISTS)
            return _auth(codec.AUTH_SASL, lists if fdp.boolean() else fdp.blob(48))
        if op == 5:
            return _auth(codec.AUTH_SASL_CONTINUE, self.server_first or fdp.blob(32))
        if op == 6:
            text = fdp.blob(96).replace(NONCE_MARK, self.client_nonce)
            return _auth(codec.AUTH_SASL_CONTINUE, text)
        if op == 7:
            if self.server_final is not None:
                self.genuine_final_sent = True
                return _auth(codec.AUTH_SASL_FINAL, self.server_final)
            return _auth(codec.AUTH_SASL_FINAL, fdp.blob(48))
        if op == 8:
            text = fdp.blob(64)
            self.genuine_final_sent |= text == self.server_final
            return _auth(codec.AUTH_SASL_FINAL, text)
        if op == 9:
            return codec.encode_message(b"K", fdp.blob(40))
        if op == 10:
            return codec.encode_message(b"S", b"server_version\x00" + fdp.blob(8) + b"\x00")
        if op == 11:
            return codec.encode_message(b"N", b"SNOTICE\x00Mhello\x00\x00")
        if op == 12:
            status = fdp.int_in(0, 3)
            return codec.encode_message(b"Z", b"ITE"[status : status + 1] or fdp.blob(3))
        if op == 13:
            sqlstate = fdp.pick((b"28P01", b"3D000", b"")) or fdp.blob(6)
            fields = b"SFATAL\x00C" + sqlstate + b"\x00Mno\x00"
            return codec.encode_message(b"E", fields + fdp.blob(24) + b"\x00")
        if op == 14:
            return codec.encode_message(b"v", fdp.blob(32))
        if op == 15:
            return codec.encode_message(fdp.take(1) or b"?", fdp.blob(32))
        if op == 16:
            return _auth(fdp.int_in(0, 0xFFFFFFFF), fdp.blob(16))
        return struct.pack("!cI", fdp.take(1) or b"?", fdp.int_in(0, 0xFFFFFFFF))


def _check_result(result: LoginResult) -> None:
    for encoded in (*result.before_auth, *result.to_client, result.ready_for_query):
        reader = codec.MessageReader()
        reader.feed(encoded)
        assert reader.next_message() is not None and reader.buffered() == b"", encoded
    assert result.ready_for_query[:1] == b"Z"
    if result.backend_key is not None:
        assert 4 <= len(result.backend_key) <= 256


def test_one_input(data: bytes) -> None:
    """libFuzzer's entry point."""
    run(data)


def run(data: bytes) -> str:
    """One login: who logs in, with which secret, then the backend's steps.

    Returns how it ended ("ok", "refused SQLSTATE: message", "protocol" or
    "quiet") so seeds and replays can say which path they take.
    """
    fdp = Provider(data)
    user = fdp.pick(USERS)
    startup = StartupMessage(PROTOCOL_3_0, (("user", user), ("database", "app")))
    answerer: PasswordAnswerer | None = None
    secret = ""
    cleartext_ok = False
    if fdp.boolean():
        secret = fdp.pick(_secrets(user))
        cleartext_ok = fdp.boolean()
        answerer = PasswordAnswerer(
            user,
            secret,
            describe='backend "main"',
            channel_binding=CHANNEL_BINDING if fdp.boolean() else None,
            cleartext_ok=cleartext_ok,
        )
    backend = _Backend(fdp)
    gen = login(startup, answerer, describe='backend "main"')
    reader = codec.MessageReader()
    sent = b""
    try:
        out = next(gen)
        assert out == startup.encode()
        backend.hear(out, startup=True)
        steps = 0
        while True:
            if out and sent:
                backend.hear(out, startup=False)
            sent += out
            message = reader.next_message()
            while message is None:
                steps += 1
                if steps > MAX_STEPS or fdp.remaining() == 0:
                    return "quiet"  # the backend went quiet: the I/O layer times out
                chunk = backend.next_bytes()
                cut = fdp.int_in(0, len(chunk))
                reader.feed(chunk[:cut])
                message = reader.next_message()
                reader.feed(chunk[cut:])
                if message is None:
                    message = reader.next_message()
            out = gen.send(message)
    except StopIteration as stop:
        result = stop.value
        assert isinstance(result, LoginResult)
        _check_result(result)
        if answerer is not None and answerer.method in (SCRAM, SCRAM_PLUS):
            assert backend.genuine_final_sent, "SCRAM login without the server's proof"
        return "ok"
    except BackendLoginError as exc:
        # What the session does with it: an ErrorResponse to the client.
        codec.error_response("FATAL", exc.sqlstate, exc.message)
        return f"refused {exc.sqlstate}: {exc.message}"
    except ProtocolError as exc:
        codec.error_response("FATAL", "08P01", f"backend broke the protocol: {exc}")
        return "protocol"
    finally:
        if secret and not (
            cleartext_ok and not is_md5_hash(secret) and not is_scram_verifier(secret)
        ):
            # Never in the clear: only a plaintext password, only where allowed.
            assert secret.encode() not in sent, "secret sent in the clear"
        gen.close()


def _step(op: int, data: bytes = b"") -> bytes:
    """One backend step in the input's encoding: op, its bytes, where to cut it (0)."""
    return bytes([op]) + data + b"\x00"


def _blob(data: bytes) -> bytes:
    return bytes([len(data)]) + data


def seeds() -> list[bytes]:
    """Logins that succeed: trust, cleartext, MD5, SCRAM and SCRAM-PLUS, and refusals."""
    key = _step(9, _blob(struct.pack("!I", 7) + b"key!"))
    tail = _step(1) + _step(10, _blob(b"16")) + key + _step(11) + _step(12, b"\x00")
    scram = _step(4, b"\x00\x01") + _step(5) + _step(7) + tail
    scram_plus = _step(4, b"\x01\x01") + _step(5) + _step(7) + tail
    made_up_first = _blob(b"r=@@srv,s=MDEyMzQ1Njc4OWFiY2RlZg==,i=4096")
    # setup bytes: user, authenticator?, secret, cleartext_ok, channel binding
    return [
        b"\x00\x00" + tail,
        b"\x00\x01\x00\x01\x00" + _step(2) + tail,
        b"\x00\x01\x00\x00\x00" + _step(3, b"\x01salt") + tail,
        b"\x00\x01\x01\x00\x00" + _step(3, b"\x01salt") + tail,
        b"\x00\x01\x00\x00\x00" + scram,
        b"\x00\x01\x00\x00\x01" + scram_plus,
        b"\x01\x01\x00\x00\x01" + scram,
        b"\x02\x01\x00\x00\x00" + scram_plus,
        b"\x00\x01\x00\x00\x00" + _step(4, b"\x00\x01") + _step(6, made_up_first) + _step(7) + tail,
        b"\x00\x00" + _step(14, _blob(struct.pack("!II", 196608, 1) + b"_pq_.x\x00")) + tail,
        b"\x00\x00" + _step(13, b"\x00" + _blob(b"")),
        b"\x00\x01\x02\x00\x00" + _step(2),
    ]


def main() -> None:
    fuzz(test_one_input, ("pgtls_proxy.wire", "scramp"))


if __name__ == "__main__":
    main()
