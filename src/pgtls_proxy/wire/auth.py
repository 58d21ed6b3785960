"""Answering the backend's password challenge on the client's behalf.

Sans-I/O: :class:`PasswordAnswerer` turns each AuthenticationRequest into the
reply to send. SCRAM is scramp's, not ours. The client never sees any of this:
its certificate is its credential.

PostgreSQL documentation: "Frontend/Backend Protocol" -> "Message Flow" ->
"SASL Authentication", and "Message Formats" (AuthenticationMD5Password …).
"""

from __future__ import annotations

import hashlib

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from scramp import ScramClient, ScramException

from pgtls_proxy.wire import codec
from pgtls_proxy.wire.login import BackendLoginError

SCRAM = "SCRAM-SHA-256"
SCRAM_PLUS = "SCRAM-SHA-256-PLUS"
TLS_SERVER_END_POINT = "tls-server-end-point"

# The most PBKDF2 rounds a backend may ask for. PostgreSQL's default is 4096
# and hardened settings stay below 1,000,000; the hash runs on the worker's
# event loop, so a backend asking for more (scramp alone allows 10,000,000:
# about 30 s of CPU on a small host) would stall every session of the worker.
MAX_SCRAM_ITERATIONS = 1_000_000


def tls_server_end_point(der: bytes) -> bytes | None:
    """Channel-binding data for ``tls-server-end-point`` (RFC 5929, section 4.1).

    The hash of the server certificate's DER, with the hash function of the
    certificate's signature, except that MD5 and SHA-1 are replaced by SHA-256.
    None when the signature names no such hash (Ed25519, Ed448): RFC 5929
    defines no binding then, so plain SCRAM-SHA-256 is used instead.
    """
    try:
        cert = x509.load_der_x509_certificate(der)
        algorithm = cert.signature_hash_algorithm
    except (ValueError, UnsupportedAlgorithm):
        return None
    if algorithm is None:
        return None
    if isinstance(algorithm, hashes.MD5 | hashes.SHA1):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(der)
    return digest.finalize()


def md5_response(user: str, secret: str, salt: bytes) -> bytes:
    """``md5`` + md5(md5(password + user) + salt), from a password or stored hash."""
    if is_md5_hash(secret):
        inner = secret[3:]
    else:
        inner = hashlib.md5((secret + user).encode("utf-8")).hexdigest()
    return b"md5" + hashlib.md5(inner.encode("ascii") + salt).hexdigest().encode("ascii")


def is_md5_hash(secret: str) -> bool:
    """A stored ``md5`` + md5(password + user) hash, as PostgreSQL keeps them."""
    return (
        len(secret) == 35
        and secret.startswith("md5")
        and all(c in "0123456789abcdef" for c in secret[3:])
    )


def is_scram_verifier(secret: str) -> bool:
    """A stored ``SCRAM-SHA-256$iter:salt$StoredKey:ServerKey`` verifier.

    PgBouncer can log in with one only by borrowing the client's own SCRAM
    proof; our clients prove themselves with certificates, so a verifier
    cannot answer any challenge and must not be mistaken for a password.
    """
    return secret.startswith("SCRAM-SHA-256$") and secret.count("$") == 2


class PasswordAnswerer:
    """Answers cleartext, MD5 and SCRAM-SHA-256(-PLUS) for one login.

    ``channel_binding`` is the :func:`tls_server_end_point` data of the
    backend's certificate when the link is TLS; with it, SCRAM-SHA-256-PLUS is
    chosen when offered, so a man in the middle that terminates our TLS with
    another certificate cannot relay the exchange. ``cleartext_ok`` is False
    on a plaintext, non-loopback link. ``method`` names what was answered,
    for the log.
    """

    def __init__(
        self,
        user: str,
        secret: str,
        *,
        describe: str,
        channel_binding: bytes | None = None,
        cleartext_ok: bool = False,
    ) -> None:
        self.user = user
        self._secret = secret
        self.describe = describe
        self.channel_binding = channel_binding
        self.cleartext_ok = cleartext_ok
        self.method: str | None = None
        self._scram: ScramClient | None = None
        self._server_proven = False

    def _refuse(self, why: str) -> BackendLoginError:
        return BackendLoginError(
            "28000", f'{self.describe}: cannot log in user "{self.user}": {why}'
        )

    def answer(self, code: int, data: bytes) -> bytes:
        if is_scram_verifier(self._secret) and code in (
            codec.AUTH_CLEARTEXT,
            codec.AUTH_MD5,
            codec.AUTH_SASL,
        ):
            raise self._refuse(
                "the passwords file holds a SCRAM verifier, which cannot answer the "
                "backend; store the plaintext password instead"
            )
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
            if "\0" in self._secret:
                # The password travels as a C string: PostgreSQL would read
                # only the part before the NUL (and codec refuses to build it).
                raise self._refuse(
                    "the stored password contains a NUL character, which a cleartext "
                    "password message cannot carry"
                )
            self.method = "password"
            return codec.password_message(self._secret.encode("utf-8") + b"\0")
        if code == codec.AUTH_MD5:
            if len(data) != 4:
                raise BackendLoginError("08P01", f"{self.describe} sent a malformed MD5 request")
            self.method = "md5"
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
        cb: tuple[str, bytes] | None
        if self.channel_binding is not None and SCRAM_PLUS in offered:
            mechanism, cb = SCRAM_PLUS, (TLS_SERVER_END_POINT, self.channel_binding)
        elif SCRAM in offered:
            # Over TLS scramp then sends the "y" flag: we could bind but the
            # server did not offer it, which a downgrading middleman cannot hide.
            mechanism = SCRAM
            cb = (TLS_SERVER_END_POINT, self.channel_binding) if self.channel_binding else None
        else:
            raise self._refuse(f"no supported SASL mechanism among {', '.join(offered) or 'none'}")
        try:
            self._scram = ScramClient([mechanism], self.user, self._secret, channel_binding=cb)
            first = self._scram.get_client_first()
        except ScramException as exc:
            raise self._refuse(f"SCRAM failed: {exc}") from None
        self.method = mechanism
        return codec.sasl_initial_response(mechanism, first.encode("utf-8"))

    def _sasl_continue(self, data: bytes) -> bytes:
        if self._scram is None:
            raise BackendLoginError("08P01", f"{self.describe} sent SASLContinue out of order")
        try:
            self._scram.set_server_first(data.decode("utf-8"))
            iterations = int(self._scram.iterations)
            if iterations > MAX_SCRAM_ITERATIONS:
                raise self._refuse(
                    f"the backend asks for {iterations} SCRAM iterations; the proxy "
                    f"computes at most {MAX_SCRAM_ITERATIONS}"
                )
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
        self._server_proven = True
        return b""

    def done(self) -> None:
        """At AuthenticationOk: a SCRAM exchange must have ended with the server's proof."""
        if self._scram is not None and not self._server_proven:
            raise BackendLoginError(
                "08P01",
                f'{self.describe} accepted user "{self.user}" without completing SCRAM '
                "(no server signature): it may not be the server it claims to be",
            )
