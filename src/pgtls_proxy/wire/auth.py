"""Answering the backend's password challenge on the client's behalf.

Sans-I/O: :class:`PasswordAnswerer` turns each AuthenticationRequest into the
reply to send. SCRAM is scramp's, not ours. The client never sees any of this:
its certificate is its credential.

PostgreSQL documentation: "Frontend/Backend Protocol" -> "Message Flow" ->
"SASL Authentication", and "Message Formats" (AuthenticationMD5Password …).
"""

from __future__ import annotations

import hashlib
from typing import Any

from scramp import ScramClient, ScramException

from pgtls_proxy.wire import codec
from pgtls_proxy.wire.login import BackendLoginError

SCRAM = "SCRAM-SHA-256"
SCRAM_PLUS = "SCRAM-SHA-256-PLUS"


def md5_response(user: str, secret: str, salt: bytes) -> bytes:
    """``md5`` + md5(md5(password + user) + salt), from a password or stored hash."""
    if is_md5_hash(secret):
        inner = secret[3:]
    else:
        inner = hashlib.md5((secret + user).encode("utf-8")).hexdigest()
    return b"md5" + hashlib.md5(inner.encode("ascii") + salt).hexdigest().encode("ascii")


def is_md5_hash(secret: str) -> bool:
    return (
        len(secret) == 35
        and secret.startswith("md5")
        and all(c in "0123456789abcdef" for c in secret[3:])
    )


class PasswordAnswerer:
    """Answers cleartext, MD5 and SCRAM-SHA-256(-PLUS) for one login.

    ``channel_binding`` is ``("tls-server-end-point", ssl_socket)`` when the
    backend link is TLS; with it, SCRAM-SHA-256-PLUS is chosen when offered.
    ``cleartext_ok`` is False on a plaintext, non-loopback link.
    """

    def __init__(
        self,
        user: str,
        secret: str,
        *,
        describe: str,
        channel_binding: tuple[str, Any] | None = None,
        cleartext_ok: bool = False,
    ) -> None:
        self.user = user
        self._secret = secret
        self.describe = describe
        self.channel_binding = channel_binding
        self.cleartext_ok = cleartext_ok
        self._scram: ScramClient | None = None

    def _refuse(self, why: str) -> BackendLoginError:
        return BackendLoginError(
            "28000", f'{self.describe}: cannot log in user "{self.user}": {why}'
        )

    def answer(self, code: int, data: bytes) -> bytes:
        if code == codec.AUTH_CLEARTEXT:
            if is_md5_hash(self._secret):
                raise self._refuse(
                    "the backend asks for a cleartext password and only an md5 hash is stored"
                )
            if not self.cleartext_ok:
                raise self._refuse(
                    "the backend asks for a cleartext password over an unencrypted, "
                    "non-loopback link (set auth.allow_cleartext_over_plaintext to allow it)"
                )
            return codec.password_message(self._secret.encode("utf-8") + b"\0")
        if code == codec.AUTH_MD5:
            if len(data) != 4:
                raise BackendLoginError("08P01", f"{self.describe} sent a malformed MD5 request")
            return codec.password_message(md5_response(self.user, self._secret, data) + b"\0")
        if code == codec.AUTH_SASL:
            return self._sasl_start(data)
        if code == codec.AUTH_SASL_CONTINUE:
            return self._sasl_continue(data)
        if code == codec.AUTH_SASL_FINAL:
            return self._sasl_final(data)
        name = codec.AUTH_NAMES.get(code, f"method {code}")
        raise self._refuse(
            f"the backend asks for {name} authentication, which the proxy cannot answer"
        )

    def _sasl_start(self, data: bytes) -> bytes:
        if is_md5_hash(self._secret):
            raise self._refuse("the backend asks for SCRAM and only an md5 hash is stored")
        offered = [m.decode("ascii", "replace") for m in data.split(b"\0") if m]
        if self.channel_binding is not None and SCRAM_PLUS in offered:
            mechanisms, cb = [SCRAM_PLUS], self.channel_binding
        elif SCRAM in offered:
            mechanisms, cb = [SCRAM], None
        else:
            raise self._refuse(f"no supported SASL mechanism among {', '.join(offered) or 'none'}")
        try:
            self._scram = ScramClient(mechanisms, self.user, self._secret, channel_binding=cb)
            first = self._scram.get_client_first()
        except ScramException as exc:
            raise self._refuse(f"SCRAM failed: {exc}") from None
        return codec.sasl_initial_response(mechanisms[0], first.encode("utf-8"))

    def _sasl_continue(self, data: bytes) -> bytes:
        if self._scram is None:
            raise BackendLoginError("08P01", f"{self.describe} sent SASLContinue out of order")
        try:
            self._scram.set_server_first(data.decode("utf-8"))
            return codec.sasl_response(self._scram.get_client_final().encode("utf-8"))
        except (ScramException, UnicodeDecodeError) as exc:
            raise self._refuse(f"SCRAM failed: {exc}") from None

    def _sasl_final(self, data: bytes) -> bytes:
        if self._scram is None:
            raise BackendLoginError("08P01", f"{self.describe} sent SASLFinal out of order")
        try:
            # Proves the server knew the password too: a man in the middle
            # that merely accepts us is refused here.
            self._scram.set_server_final(data.decode("utf-8"))
        except (ScramException, UnicodeDecodeError) as exc:
            raise self._refuse(f"the backend's SCRAM signature is wrong: {exc}") from None
        return b""
