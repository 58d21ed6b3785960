"""What OpenSSL knows about a client's certificates that ``ssl`` does not hand out.

Two gaps of Python's ``ssl`` matter to an operator:

* When OpenSSL refuses a client certificate, the exception carries the reason
  but not the certificate, and ``getpeercert()`` is empty because OpenSSL
  only stores a peer certificate that verified. The log line of a refused
  client should still say whose certificate it was. OpenSSL's message
  callback sees every handshake message after decryption (TLS 1.3 encrypts
  the client's Certificate message), so :class:`CertificateCapture` keeps the
  first certificate of the client's Certificate message, per connection.
  Once the handshake is done the connection moves to a twin context without
  the callback (see :func:`release`), so relayed records cost nothing extra.
* Lenient revocation needs the chain OpenSSL verified. Python 3.13 has
  ``get_verified_chain()``; 3.10 to 3.12 have the same call on the internal
  ``_sslobj``. :func:`verified_chain` uses whichever exists and returns None
  otherwise (the caller then rebuilds the chain from the CA bundle).

Both lean on interfaces CPython keeps for its own tests; each use is guarded
and degrades to "not known" rather than failing a handshake.
"""

from __future__ import annotations

import _ssl
import ssl
import weakref
from collections.abc import Callable
from typing import Any

_HANDSHAKE = 22
_CERTIFICATE = 11
_TLS13 = 0x0304

MessageCallback = Callable[[Any, str, int, int, int, bytes], None]


def first_certificate(message: bytes, version: int) -> bytes | None:
    """The DER of the first certificate in a TLS Certificate handshake message.

    TLS 1.3 (RFC 8446 4.4.2) puts a request context before the list and
    extensions after each entry; TLS 1.2 (RFC 5246 7.4.2) is a bare list.
    Returns None for an empty list (no certificate) or a malformed message.
    """
    body = message[4:]  # msg_type (1) + length (3)
    pos = 0
    if version == _TLS13:
        if not body:
            return None
        pos = 1 + body[0]
    if len(body) < pos + 6:
        return None
    pos += 3  # certificate_list length
    length = int.from_bytes(body[pos : pos + 3], "big")
    pos += 3
    der = body[pos : pos + length]
    return der if length and len(der) == length else None


class CertificateCapture:
    """Remembers the leaf certificate each connection sent, until it is taken."""

    def __init__(self) -> None:
        self._seen: weakref.WeakKeyDictionary[Any, bytes] = weakref.WeakKeyDictionary()

    def _on_message(
        self, conn: Any, direction: str, version: int, content_type: int, msg_type: int, data: bytes
    ) -> None:
        # Runs inside OpenSSL: it must be cheap and must never raise, or the
        # exception would surface from the next read or write on the socket.
        if content_type != _HANDSHAKE or msg_type != _CERTIFICATE or direction != "read":
            return
        try:
            der = first_certificate(data, version)
            if der is not None:
                self._seen[conn] = der
        except Exception:
            pass

    def install(self, ctx: ssl.SSLContext) -> bool:
        """Watch handshakes made with ``ctx``; False when this Python cannot."""
        # The raw descriptor of the C type, not ssl.SSLContext's wrapper, which
        # would turn every argument into an enum member on each call.
        descriptor = getattr(_ssl._SSLContext, "_msg_callback", None)
        if descriptor is None:
            return False
        try:
            descriptor.__set__(ctx, self._on_message)
        except (AttributeError, TypeError):
            return False
        return True

    def take(self, conn: ssl.SSLSocket) -> bytes | None:
        """The DER leaf ``conn`` presented, if one was seen; forgets it."""
        return self._seen.pop(conn, None)


def release(conn: ssl.SSLSocket, established: ssl.SSLContext | None) -> None:
    """Move a finished handshake to the twin context that has no callback.

    CPython re-reads the callback from the new context (``SSL_set_SSL_CTX``
    plus ``SSL_set_msg_callback``); OpenSSL keeps the keys and the session.
    """
    if established is not None:
        try:
            conn.context = established
        except (AttributeError, TypeError, ValueError):
            pass


def verified_chain(conn: ssl.SSLSocket) -> list[bytes] | None:
    """DER certificates of the chain OpenSSL verified, leaf first, when exposed."""
    getter = getattr(conn, "get_verified_chain", None)
    if getter is None:
        getter = getattr(getattr(conn, "_sslobj", None), "get_verified_chain", None)
    if getter is None:
        return None
    try:
        chain = getter()
    except (AttributeError, ValueError, ssl.SSLError):
        return None
    if not chain:
        return None
    out = []
    for cert in chain:
        if isinstance(cert, bytes):
            out.append(cert)
        else:
            out.append(cert.public_bytes(_ssl.ENCODING_DER))
    return out
