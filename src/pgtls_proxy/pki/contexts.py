"""Build ``ssl.SSLContext`` objects for the client side and the backend side.

A context is immutable once built: any change of certificate, key, CA or CRL
produces a new context for new handshakes, while established sessions keep
theirs. The handshake-failure classifier lives here too, because it depends on
exactly how these contexts are configured.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509

from pgtls_proxy.config import BackendTLSSettings, MetricsTLSSettings, TLSSettings
from pgtls_proxy.errors import KeyPathError
from pgtls_proxy.outcomes import HandshakeResult as HR
from pgtls_proxy.pki.peer import CertificateCapture

ALPN_POSTGRESQL = "postgresql"

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class TLSConfigError(KeyPathError):
    """A certificate, key or CA file cannot be used; ``key`` is the config path."""


def read_passphrase(path: Path | None) -> bytes | None:
    """The key passphrase: first line of the file, without its newline."""
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TLSConfigError(
            "tls.key_passphrase_file", f"cannot read {path}: {exc.strerror or exc}"
        ) from None
    return data.splitlines()[0] if data else b""


def _unreadable(tls: TLSSettings | MetricsTLSSettings, exc: OSError) -> TLSConfigError:
    prefix = "tls" if isinstance(tls, TLSSettings) else "metrics.tls"
    filename = exc.filename
    if filename is None:  # OpenSSL's loader does not say which of the two it was
        filename = tls.cert_file if not os.access(tls.cert_file, os.R_OK) else tls.key_file
    which = "cert_file" if Path(filename) == tls.cert_file else "key_file"
    return TLSConfigError(f"{prefix}.{which}", f"cannot read {filename}: {exc.strerror or exc}")


def _key_error(tls: TLSSettings, passphrase: bytes | None) -> TLSConfigError:
    """Explain why OpenSSL refused the key (its own message is "PEM lib" for all).

    Only the file names go into the message, never the passphrase.
    """
    try:
        data = tls.key_file.read_bytes()
    except OSError as exc:
        return _unreadable(tls, exc)
    if b"ENCRYPTED" in data:
        if tls.key_passphrase_file is None:
            return TLSConfigError(
                "tls.key_passphrase_file",
                f"{tls.key_file} is encrypted; set tls.key_passphrase_file to a file"
                " holding its passphrase",
            )
        if not passphrase:
            return TLSConfigError(
                "tls.key_passphrase_file",
                f"{tls.key_passphrase_file} is empty; it must hold the passphrase of"
                f" {tls.key_file}",
            )
        return TLSConfigError(
            "tls.key_passphrase_file",
            f"the passphrase in {tls.key_passphrase_file} does not decrypt {tls.key_file}",
        )
    return TLSConfigError("tls.key_file", f"{tls.key_file} holds no usable PEM private key")


def _base_server_context(tls: TLSSettings, passphrase: bytes | None) -> ssl.SSLContext:
    """Protocol settings and the server's certificate and key, without client checks."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _VERSIONS[tls.min_version]
    # No renegotiation (TLS 1.2 client-initiated renegotiation is a DoS and a
    # source of confusion), no compression (CRIME).
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    disable_resumption(ctx)
    if tls.ciphers:
        try:
            ctx.set_ciphers(tls.ciphers)
        except ssl.SSLError:
            raise TLSConfigError("tls.ciphers", "no cipher matches this cipher string") from None
    try:
        # Always pass a password callable: with None, OpenSSL would prompt on
        # the controlling terminal for an encrypted key and hang the daemon.
        ctx.load_cert_chain(
            tls.cert_file, tls.key_file, password=lambda: passphrase if passphrase else b""
        )
    except ssl.SSLError as exc:  # before OSError, its base class
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TLSConfigError(
                "tls.key_file",
                f"{tls.key_file} does not hold a private key matching {tls.cert_file}",
            ) from None
        raise _key_error(tls, passphrase) from None
    except OSError as exc:
        raise _unreadable(tls, exc) from None
    ctx.set_alpn_protocols([ALPN_POSTGRESQL])
    return ctx


def disable_resumption(ctx: ssl.SSLContext) -> None:
    """No session resumption and no server-side session cache, for TLS 1.2 and 1.3.

    Resumption must stay off: a resumed session skips the verification of
    the client's certificate, so a certificate revoked since (or a CRL
    changed since) would not be looked at again. A database connection lives
    long, so a full handshake per connection costs little.

    Python's ``ssl`` cannot call ``SSL_CTX_set_session_cache_mode``, and
    either setting alone is not enough (measured with OpenSSL 3.0):

    * ``OP_NO_TICKET`` alone stops TLS 1.2 tickets, but under TLS 1.3 it makes
      OpenSSL issue stateful tickets: every session goes into the server's
      cache (up to 20,480 of them, about 11 KB each), none is ever resumed.
    * ``num_tickets = 0`` alone stops TLS 1.3 tickets, but TLS 1.2 clients
      still get stateless tickets and resume with them.

    Together no ticket is issued in either version and nothing is cached
    (``session_stats()["number"]`` stays 0). TLS 1.2 session IDs are not
    cached either: OpenSSL does not store a session that has no session id
    context while client certificates are verified, and Python sets none.
    ``tests/pki/test_session_cache.py`` holds all of this to account.
    """
    ctx.options |= ssl.OP_NO_TICKET
    if ctx.protocol == ssl.PROTOCOL_TLS_SERVER:
        ctx.num_tickets = 0


def load_server_certificates(tls: TLSSettings) -> list[x509.Certificate]:
    """``tls.cert_file``: the server certificate first, then its intermediates."""
    try:
        data = tls.cert_file.read_bytes()
    except OSError as exc:
        raise TLSConfigError(
            "tls.cert_file", f"cannot read {tls.cert_file}: {exc.strerror or exc}"
        ) from None
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TLSConfigError("tls.cert_file", f"{tls.cert_file} holds no PEM certificate") from None


def load_client_cas(tls: TLSSettings) -> list[x509.Certificate]:
    """``tls.client_ca_file``: the CAs trusted to issue client certificates."""
    path = tls.client_ca_file
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TLSConfigError(
            "tls.client_ca_file", f"cannot read {path}: {exc.strerror or exc}"
        ) from None
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        raise TLSConfigError("tls.client_ca_file", f"{path} holds no PEM certificate") from None


def server_context(
    tls: TLSSettings,
    crl_pem: Iterable[str] = (),
    *,
    crl_check: bool = False,
    capture: CertificateCapture | None = None,
) -> ssl.SSLContext:
    """The context that terminates client connections.

    ``crl_pem`` are CRLs in PEM form; with ``crl_check`` OpenSSL demands a
    current CRL for every certificate of the chain (``strict`` in docs/reference.md).
    ``capture`` records the certificate of clients that OpenSSL refuses.
    """
    ctx = _base_server_context(tls, read_passphrase(tls.key_passphrase_file))
    try:
        ctx.load_verify_locations(cafile=str(tls.client_ca_file))
    except ssl.SSLError as exc:
        raise TLSConfigError(
            "tls.client_ca_file", f"{tls.client_ca_file} holds no usable CA ({exc.reason})"
        ) from None
    except OSError as exc:
        raise TLSConfigError(
            "tls.client_ca_file", f"cannot read {tls.client_ca_file}: {exc.strerror or exc}"
        ) from None
    crl_bundle = "".join(crl_pem)
    if crl_bundle:
        # ``cadata`` takes certificates only; OpenSSL loads CRLs from a file.
        with tempfile.NamedTemporaryFile("w", suffix=".pem", encoding="ascii") as tmp:
            tmp.write(crl_bundle)
            tmp.flush()
            ctx.load_verify_locations(cafile=tmp.name)
    if crl_check:
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.verify_mode = ssl.CERT_REQUIRED
    if capture is not None:
        capture.install(ctx)
    return ctx


def established_context(tls: TLSSettings) -> ssl.SSLContext:
    """The twin a connection moves to once its handshake is done (see ``peer.release``).

    Same certificate and protocol settings, no message callback, no CA store:
    nothing is verified after the handshake.
    """
    return _base_server_context(tls, read_passphrase(tls.key_passphrase_file))


def backend_context(tls: BackendTLSSettings, key_prefix: str) -> ssl.SSLContext:
    """The context the proxy uses as a TLS client of a backend."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION
    if tls.mode in ("verify-ca", "verify-full"):
        try:
            ctx.load_verify_locations(cafile=str(tls.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise TLSConfigError(
                f"{key_prefix}.ca_file", f"cannot load {tls.ca_file}: {exc}"
            ) from None
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = tls.mode == "verify-full"
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if tls.cert_file is not None and tls.key_file is not None:
        try:
            ctx.load_cert_chain(tls.cert_file, tls.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise TLSConfigError(
                f"{key_prefix}.cert_file", f"cannot load {tls.cert_file}: {exc}"
            ) from None
    ctx.set_alpn_protocols([ALPN_POSTGRESQL])
    return ctx


def metrics_context(tls: MetricsTLSSettings) -> ssl.SSLContext:
    """The metrics endpoint's context: TLS 1.2+, a client certificate from its own CA.

    The scraper's CA is separate from ``tls.client_ca_file``: a database
    client's certificate is no licence to read the metrics.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION
    disable_resumption(ctx)  # every scrape is a fresh handshake: no cache to grow
    try:
        ctx.load_cert_chain(tls.cert_file, tls.key_file, password=lambda: b"")
    except ssl.SSLError as exc:  # before OSError, its base class
        if exc.reason == "KEY_VALUES_MISMATCH":
            raise TLSConfigError(
                "metrics.tls.key_file",
                f"{tls.key_file} does not hold a private key matching {tls.cert_file}",
            ) from None
        raise TLSConfigError(
            "metrics.tls.key_file",
            f"cannot load {tls.cert_file} with {tls.key_file} ({exc.reason or exc})",
        ) from None
    except OSError as exc:
        raise _unreadable(tls, exc) from None
    try:
        ctx.load_verify_locations(cafile=str(tls.client_ca_file))
    except ssl.SSLError as exc:
        raise TLSConfigError(
            "metrics.tls.client_ca_file",
            f"{tls.client_ca_file} holds no usable CA ({exc.reason})",
        ) from None
    except OSError as exc:
        raise TLSConfigError(
            "metrics.tls.client_ca_file",
            f"cannot read {tls.client_ca_file}: {exc.strerror or exc}",
        ) from None
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


# ------------------------------------------------------------ failure classification

# OpenSSL X509_V_ERR_* codes (x509_vfy.h).
_VERIFY_CODES: dict[int, HR] = {
    2: HR.UNKNOWN_CA,  # unable to get issuer certificate
    3: HR.CRL_UNAVAILABLE,  # unable to get CRL
    7: HR.BAD_CERTIFICATE,  # certificate signature failure
    8: HR.CRL_UNAVAILABLE,  # CRL signature failure
    9: HR.NOT_YET_VALID,
    10: HR.EXPIRED,
    11: HR.CRL_UNAVAILABLE,  # CRL not yet valid
    12: HR.CRL_UNAVAILABLE,  # CRL has expired
    13: HR.BAD_CERTIFICATE,
    14: HR.BAD_CERTIFICATE,
    15: HR.CRL_UNAVAILABLE,
    16: HR.CRL_UNAVAILABLE,
    18: HR.UNKNOWN_CA,  # self-signed leaf
    19: HR.UNKNOWN_CA,  # self-signed in chain
    20: HR.UNKNOWN_CA,  # unable to get local issuer
    21: HR.UNKNOWN_CA,
    23: HR.REVOKED,
    24: HR.BAD_CERTIFICATE,  # invalid CA
    26: HR.BAD_CERTIFICATE,  # unsupported purpose (EKU without clientAuth)
    28: HR.BAD_CERTIFICATE,  # rejected
    32: HR.BAD_CERTIFICATE,  # key usage does not include signing
    33: HR.CRL_UNAVAILABLE,  # unable to get CRL issuer
    35: HR.CRL_UNAVAILABLE,  # key usage does not include CRL signing
    36: HR.CRL_UNAVAILABLE,  # unhandled critical CRL extension
}

_REASONS: dict[str, HR] = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": HR.NO_CERTIFICATE,
    "NO_SHARED_CIPHER": HR.PROTOCOL_VERSION,
    "UNSUPPORTED_PROTOCOL": HR.PROTOCOL_VERSION,
    "VERSION_TOO_LOW": HR.PROTOCOL_VERSION,
    "WRONG_VERSION_NUMBER": HR.PROTOCOL_VERSION,
    "NO_PROTOCOLS_AVAILABLE": HR.PROTOCOL_VERSION,
    "NO_SUITABLE_SIGNATURE_ALGORITHM": HR.PROTOCOL_VERSION,
    "NO_APPLICATION_PROTOCOL": HR.NO_ALPN,
    "UNEXPECTED_EOF_WHILE_READING": HR.ABORTED,
    "HTTP_REQUEST": HR.PROTOCOL_VERSION,
}


def classify_handshake_error(exc: BaseException) -> HR:
    """Map a server-side handshake exception to the ``result`` label of docs/reference.md."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _VERIFY_CODES.get(exc.verify_code, HR.BAD_CERTIFICATE)
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return HR.ABORTED
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or ""
        if reason in _REASONS:
            return _REASONS[reason]
        if reason.startswith("TLSV1_ALERT") or reason.startswith("SSLV3_ALERT"):
            # The client gave up on us (e.g. it does not trust our certificate).
            return HR.ABORTED
        return HR.BAD_CERTIFICATE if "CERTIFICATE" in reason else HR.PROTOCOL_VERSION
    if isinstance(exc, ConnectionError | OSError):
        return HR.ABORTED
    return HR.ABORTED
