"""One client connection, start to finish.

negotiate (plaintext) -> TLS handshake -> StartupMessage -> rules -> backend
login -> relay -> audit. The protocol and the policy are decided by the pure
layers (:mod:`pgtls_proxy.wire`, :mod:`pgtls_proxy.pki`); this module moves
bytes, keeps time, counts, and closes everything in ``finally``.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
import socket
import ssl
import time

import trio
from cryptography import x509

from pgtls_proxy import audit as audit_mod
from pgtls_proxy.addresses import format_addr
from pgtls_proxy.admission import Ticket
from pgtls_proxy.audit import AuditRecord
from pgtls_proxy.backend import BackendUnavailable, open_backend, run_login
from pgtls_proxy.backend_pool import PoolKey
from pgtls_proxy.cancel import CancelTarget
from pgtls_proxy.cancel_delivery import deliver_cancel
from pgtls_proxy.config import BackendSettings
from pgtls_proxy.logsetup import LOGGER_NAME, SessionLog
from pgtls_proxy.netio import ByteStream, PlainStream, StreamClosed, TLSStream
from pgtls_proxy.outcomes import HandshakeResult, Outcome, Phase
from pgtls_proxy.pki import peer
from pgtls_proxy.pki import rules as rules_mod
from pgtls_proxy.pki.contexts import ALPN_POSTGRESQL, classify_handshake_error
from pgtls_proxy.pki.identity import CertIdentity
from pgtls_proxy.relay import Side, relay_session
from pgtls_proxy.runtime import Runtime, Snapshot
from pgtls_proxy.wire import codec, proxyproto
from pgtls_proxy.wire.auth import PasswordAnswerer
from pgtls_proxy.wire.errors import ProtocolError
from pgtls_proxy.wire.frontend import NEED_DATA, StartupReader, check_no_trailing_data
from pgtls_proxy.wire.login import Authenticator, BackendLoginError, LoginResult
from pgtls_proxy.wire.messages import (
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
)

_logger = logging.getLogger(f"{LOGGER_NAME}.session")
TLS_RECORD_HANDSHAKE = 0x16

# Backend refusals of a login that the client's own request causes, so they
# count as the client's ``startup_error``, never in
# ``pgtls_backend_connect_errors_total``: a database that does not exist
# (3D000), one that accepts no connections (55000, template0), no CONNECT
# privilege on it (42501), and startup ``options`` naming an unknown setting
# (42704) or a bad value (22023). Refusals of the login itself (28000, 28P01:
# a role or secret the operator configured) and capacity (53300) stay
# backend errors: they are what an operator must hear about.
CLIENT_CAUSED_LOGIN_ERRORS = frozenset({"3D000", "55000", "42501", "42704", "22023"})


class _Done(Exception):
    """Ends a connection early; the outcome is already recorded."""


# A log line to write: level, %-format and its arguments, formatted by the
# logger like every other line.
LogLine = tuple[int, str, tuple[object, ...]]


class Refusal(Exception):
    """Ends a connection before the relay; :meth:`Session.run` carries it out.

    In this order: count the handshake ``result`` (unless the handshake was
    counted already), write ``log``, record ``outcome`` and ``error`` for the
    audit record and ``pgtls_sessions_total``, and send the client a FATAL
    ErrorResponse ``sqlstate`` / ``message``, or close without a word when
    ``sqlstate`` is None.
    """

    def __init__(
        self,
        outcome: Outcome,
        error: str,
        *,
        result: HandshakeResult | None = None,
        log: LogLine | None = None,
        sqlstate: str | None = None,
        message: str = "",
    ) -> None:
        super().__init__(error)
        self.outcome = outcome
        self.error = error
        self.result = result
        self.log = log
        self.sqlstate = sqlstate
        self.message = message


def _source_ip(addr: object) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    if isinstance(addr, tuple) and addr:
        try:
            return ipaddress.ip_address(addr[0])
        except ValueError:
            pass
    return ipaddress.ip_address("127.0.0.1")


async def _read_packet(stream: PlainStream | TLSStream, reader: StartupReader) -> object:
    """Read exactly one startup-phase packet (never a byte more)."""
    while True:
        event = reader.next_event()
        if event is not NEED_DATA:
            return event
        data = await stream.recv_some(reader.bytes_needed())
        reader.receive_data(data)


def _auth_method(authenticator: Authenticator | None) -> str:
    """How the proxy got into the backend, for the log: an operator's first question."""
    method = authenticator.method if isinstance(authenticator, PasswordAnswerer) else None
    # No password asked: the backend trusts the proxy's address or certificate.
    return method or "trust-or-cert"


class Session:
    """State of one connection; :meth:`run` is the whole life cycle."""

    def __init__(
        self,
        rt: Runtime,
        sock: socket.socket,
        peer: object,
        *,
        proxy_protocol: bool = False,
        ticket: Ticket | None = None,
    ) -> None:
        self.rt = rt
        self.state: Snapshot = rt.state  # snapshot: a reload does not touch us
        self.cfg = self.state.config
        self.metrics = rt.metrics
        self.sid = secrets.token_hex(4)
        self.raw = PlainStream(sock)
        self.client: PlainStream | TLSStream = self.raw
        self.backend_stream: ByteStream | None = None
        # Set when the backend's pool may keep this backend session afterwards.
        self.pool_key: PoolKey | None = None
        self.backend_login: LoginResult | None = None
        self.backend_opened = 0.0
        self.source = _source_ip(peer)
        self.audit = AuditRecord(
            session=self.sid,
            client_addr=format_addr(peer),  # type: ignore[arg-type]
        )
        self.log = SessionLog(_logger, {"session": self.sid})
        self.phase = Phase.NEGOTIATION
        # Written into the audit record and pgtls_sessions_total at the end.
        self.outcome = Outcome.CLIENT_ERROR
        self.handshake_counted = False
        self.cancel_key: tuple[int, bytes] | None = None
        self.active_backend: str | None = None
        self.identity: CertIdentity | None = None
        self.proxy_protocol = proxy_protocol
        # Our place among the pending connections, until the limits are checked.
        self.ticket = ticket
        self.counted = False  # in rt.connections (the sessions max_connections limits)
        # Refused or evicted by admission: no lingering over a socket we shed.
        self.close_at_once = False

    # ------------------------------------------------------------ outcome helpers

    def _handshake_result(self, result: HandshakeResult) -> None:
        if not self.handshake_counted:
            self.handshake_counted = True
            self.metrics.handshake_by_result[result].inc()

    async def _fatal(self, sqlstate: str, message: str, *, detail: str | None = None) -> None:
        """Send a FATAL ErrorResponse to the client (best effort)."""
        try:
            with trio.move_on_after(2):
                await self.client.send_all(
                    codec.error_response("FATAL", sqlstate, message, detail=detail)
                )
        except (StreamClosed, OSError):
            pass

    async def _refuse(self, refusal: Refusal) -> None:
        """Carry out a :class:`Refusal`: count, log, record, tell the client."""
        if refusal.result is not None:
            self._handshake_result(refusal.result)
        if refusal.log is not None:
            level, msg, args = refusal.log
            self.log.log(level, msg, *args)
        self.outcome = refusal.outcome
        self.audit.error = refusal.error
        if refusal.sqlstate is not None:
            await self._fatal(refusal.sqlstate, refusal.message)

    # ------------------------------------------------------------ life cycle

    async def run(self) -> None:
        cfg = self.cfg
        self.log.debug("C: connection from %s", self.audit.client_addr)
        lingering = True
        try:
            try:
                with trio.move_on_after(cfg.limits.startup_timeout) as scope:
                    await self._startup()
                if scope.cancelled_caught:
                    raise self._startup_timed_out()
            except Refusal as refusal:
                await self._refuse(refusal)
                return
            except _Done:
                return
            lingering = False
            await self._relay()
        except Exception as exc:  # a bug must not take the server down
            relaying = self.phase is Phase.RELAY
            self.outcome = Outcome.COMPLETED if relaying else Outcome.STARTUP_ERROR
            self.audit.error = self.audit.error or f"internal error: {exc!r}"
            self.log.exception("P: unexpected error in session")
        finally:
            if self.ticket is not None and self.ticket.evicted:
                # Made room for a newcomer (limits.max_pending).
                self.close_at_once = True
                self.outcome = Outcome.CLIENT_ERROR
                self.audit.error = "evicted: too many pending connections"
            with trio.CancelScope(shield=True):
                await self._close(lingering and not self.close_at_once)
                self._finish()

    def _startup_timed_out(self) -> Refusal:
        timeout = self.cfg.limits.startup_timeout
        phase = self.phase
        log: LogLine = (logging.INFO, "P: startup timed out in phase %s", (phase,))
        if phase is Phase.HANDSHAKE:
            return Refusal(Outcome.CLIENT_ERROR, "timeout", result=HandshakeResult.TIMEOUT, log=log)
        if phase is Phase.NEGOTIATION:
            return Refusal(
                Outcome.CLIENT_ERROR,
                "timeout before TLS",
                result=HandshakeResult.TIMEOUT,
                log=log,
            )
        if phase is Phase.BACKEND:
            backend = self.audit.backend or "?"
            self.metrics.backend_connect_errors.labels(backend).inc()
            msg = f'backend "{backend}" did not complete the login within {timeout:g}s'
            return Refusal(Outcome.BACKEND_ERROR, msg, log=log, sqlstate="08006", message=msg)
        return Refusal(
            Outcome.STARTUP_ERROR,
            "startup timeout",
            log=log,
            sqlstate="08P01",
            message=f"startup not completed within {timeout:g}s",
        )

    async def _startup(self) -> None:
        if self.proxy_protocol:
            await self._read_proxy_header()
        negotiation = await self._negotiate()
        await self._handshake(negotiation)
        startup = await self._read_startup()
        backend, user = await self._decide(startup)
        await self._check_limits()
        await self._connect_backend(backend, startup, user)

    # ------------------------------------------------------------ phase 0: PROXY header

    async def _read_proxy_header(self) -> None:
        """Take the real client address from a PROXY v1/v2 header.

        A missing, malformed or oversized header closes the connection without
        a word: whoever sent it is not the load balancer we trust.
        """
        buf = b""
        try:
            with trio.fail_after(self.cfg.tls.handshake_timeout):
                while True:
                    parsed = proxyproto.parse_proxy_header(buf)
                    if parsed is not None:
                        break
                    buf += await self.raw.recv_some(proxyproto.bytes_needed(buf))
        except (proxyproto.ProxyProtocolError, StreamClosed, trio.TooSlowError) as exc:
            reason = "timeout" if isinstance(exc, trio.TooSlowError) else str(exc) or "closed"
            raise Refusal(
                Outcome.CLIENT_ERROR,
                f"bad PROXY header: {reason}",
                result=HandshakeResult.ABORTED,
                log=(logging.WARNING, "C: no valid PROXY header (%s); closing", (reason,)),
            ) from None
        header, _consumed = parsed
        if header.source is not None:
            self.source = ipaddress.ip_address(header.source[0])
            self.audit.client_addr = format_addr(header.source)
            self.log.debug("C: PROXY header: client %s", self.audit.client_addr)
            if self.ticket is not None and not self.ticket.move(self.source, str(self.source)):
                # Counted and logged by admission; no word to a client over its share.
                self.handshake_counted = True
                self.close_at_once = True
                raise Refusal(Outcome.CLIENT_ERROR, "too many pending connections from its address")

    # ------------------------------------------------------------ phase 1: plaintext

    async def _negotiate(self) -> str:
        """Answer SSLRequest/GSSENCRequest; return "sslrequest" or "direct"."""
        cfg = self.cfg
        reader = StartupReader(inside_tls=False)
        first_packet = True
        while True:
            if first_packet:
                head = await self.raw.peek(1)
                if not head:
                    raise Refusal(Outcome.CLIENT_ERROR, "aborted", result=HandshakeResult.ABORTED)
                if head[0] == TLS_RECORD_HANDSHAKE and cfg.tls.direct_ssl:
                    return "direct"
            first_packet = False
            try:
                event = await _read_packet(self.raw, reader)
            except ProtocolError as exc:
                raise Refusal(
                    Outcome.CLIENT_ERROR,
                    exc.message,
                    result=HandshakeResult.ABORTED,
                    log=(logging.INFO, "C: protocol violation before TLS: %s", (exc.message,)),
                    sqlstate=None if exc.close_silently else exc.sqlstate,
                    message=exc.message,
                ) from None
            except StreamClosed:
                raise Refusal(
                    Outcome.CLIENT_ERROR, "aborted", result=HandshakeResult.ABORTED
                ) from None
            if isinstance(event, SSLRequest):
                try:
                    check_no_trailing_data(b"x" if self.raw.buffered() else b"")
                except ProtocolError as exc:
                    raise Refusal(
                        Outcome.CLIENT_ERROR,
                        exc.message,
                        result=HandshakeResult.ABORTED,
                        log=(logging.WARNING, "C: %s; closing without TLS", (exc.message,)),
                    ) from None
                await self.raw.send_all(b"S")
                return "sslrequest"
            if isinstance(event, GSSENCRequest):
                await self.raw.send_all(b"N")
                continue
            if isinstance(event, CancelRequest):
                await self._cancel(event, via_tls=False)
                raise _Done("cancel")
            if isinstance(event, StartupMessage):
                self.audit.requested_user = event.user
                self.audit.database = event.database
                raise Refusal(
                    Outcome.CLIENT_ERROR,
                    "plaintext_rejected",
                    result=HandshakeResult.PLAINTEXT_REJECTED,
                    log=(logging.INFO, "C: plaintext StartupMessage refused", ()),
                    sqlstate="28000",
                    message="TLS is required: connect with sslmode=require or stricter "
                    "and a client certificate",
                )

    # ------------------------------------------------------------ phase 2: TLS

    async def _handshake(self, negotiation: str) -> None:
        self.phase = Phase.HANDSHAKE
        self.audit.negotiation = negotiation
        tls = TLSStream.wrap(self.raw.sock, self.state.server_context, server_side=True)
        self.client = tls
        ssl_obj = tls.ssl_object
        started = time.perf_counter()
        try:
            with trio.fail_after(self.cfg.tls.handshake_timeout):
                await tls.handshake()
        except trio.TooSlowError:
            seen = self._presented(ssl_obj)
            raise self._refused(HandshakeResult.TIMEOUT, "not finished in time", seen) from None
        except (ssl.SSLError, OSError) as exc:
            result = classify_handshake_error(exc)
            detail = getattr(exc, "verify_message", None) or getattr(exc, "reason", None) or exc
            raise self._refused(result, str(detail), self._presented(ssl_obj)) from None
        self._presented(ssl_obj)  # forget it: the handshake verified it
        lenient = self.state.revocation.mode == "lenient"
        chain = peer.verified_chain(ssl_obj) if lenient else None
        peer.release(ssl_obj, self.state.established_context)
        der = ssl_obj.getpeercert(binary_form=True)
        if negotiation == "direct" and ssl_obj.selected_alpn_protocol() != ALPN_POSTGRESQL:
            why = f"direct TLS without ALPN {ALPN_POSTGRESQL!r}"
            raise self._refused(HandshakeResult.NO_ALPN, why, der)
        if der is None:  # CERT_REQUIRED makes this unreachable; fail closed anyway
            raise self._refused(HandshakeResult.NO_CERTIFICATE, "no certificate", None)
        try:
            identity = CertIdentity.from_der(der)
        except ValueError as exc:
            raise self._refused(HandshakeResult.BAD_CERTIFICATE, str(exc), None) from None
        self.identity = identity
        self.audit.subject = identity.subject
        self.audit.cert_serial = identity.serial_hex
        self.audit.cert_fingerprint_sha256 = identity.fingerprint_sha256
        self.audit.tls_version = ssl_obj.version()
        if lenient:
            await self._check_revocation(der, chain)
        self._handshake_result(HandshakeResult.OK)
        self.metrics.handshake_time[negotiation].observe(time.perf_counter() - started)
        self.metrics.client_cert_expiry.observe(
            max(0.0, identity.not_after.timestamp() - time.time())
        )
        self.log.debug(
            "C: TLS %s established, subject=%s serial=%s",
            ssl_obj.version(),
            identity.subject,
            identity.serial_hex,
        )

    def _presented(self, ssl_obj: ssl.SSLSocket) -> bytes | None:
        """The certificate the client sent in this handshake, if it was seen."""
        capture = self.state.capture
        return capture.take(ssl_obj) if capture is not None else None

    def _refused(
        self,
        result: HandshakeResult,
        reason: str,
        der: bytes | None,
        *,
        sqlstate: str | None = None,
        message: str = "",
    ) -> Refusal:
        """A refused handshake, logged on one line: who, which certificate, why.

        OpenSSL does not hand out a certificate it refused; ``der`` is what
        :mod:`pgtls_proxy.pki.peer` saw in the handshake, when it saw one.
        The audit ``error`` is the handshake ``result``.
        """
        if der is None:
            sent = "no client certificate seen"
        else:
            try:
                seen = CertIdentity.from_der(der)
            except ValueError:
                sent = "an unparsable client certificate"
            else:
                self.audit.subject = seen.subject
                self.audit.cert_serial = seen.serial_hex
                self.audit.cert_fingerprint_sha256 = seen.fingerprint_sha256
                sent = f"subject={seen.subject!r} serial={seen.serial_hex}"
        return Refusal(
            Outcome.CLIENT_ERROR,
            str(result),
            result=result,
            log=(
                logging.INFO,
                "C: TLS handshake refused: %s (%s) client=%s %s",
                (result, reason, self.audit.client_addr, sent),
            ),
            sqlstate=sqlstate,
            message=message,
        )

    async def _check_revocation(self, der: bytes, chain_der: list[bytes] | None) -> None:
        """Lenient revocation, after the handshake (strict ran inside OpenSSL).

        A refusal here comes after the client finished its handshake, so no
        TLS alert can carry it; a FATAL ErrorResponse tells libpq instead.
        """
        checker = self.state.revocation
        if chain_der:
            chain = [x509.load_der_x509_certificate(item) for item in chain_der]
        else:
            chain = checker.chain_for(x509.load_der_x509_certificate(der))
        verdict = checker.check_chain(chain)
        if verdict.problems:
            self.metrics.crl_problems.inc()
            for problem in verdict.problems:
                if checker.first_report(problem):
                    self.log.warning("P: lenient revocation lets clients in despite: %s", problem)
        if verdict.label is None:
            return
        which = "certificate"
        if verdict.revoked is not None and verdict.revoked != chain[0]:
            which = f"issuing CA {verdict.revoked.subject.rfc4514_string()}"
        raise self._refused(
            HandshakeResult(verdict.label),
            f"{which} listed in a CRL",
            der,
            sqlstate="28000",
            message=f"certificate revoked: the {which} is listed in a CRL",
        )

    # ------------------------------------------------------------ phase 3: startup

    async def _read_startup(self) -> StartupMessage:
        self.phase = Phase.STARTUP
        reader = StartupReader(inside_tls=True)
        try:
            event = await _read_packet(self.client, reader)
        except ProtocolError as exc:
            raise Refusal(
                Outcome.STARTUP_ERROR,
                exc.message,
                log=(logging.INFO, "C: bad startup packet inside TLS: %s", (exc.message,)),
                sqlstate=exc.sqlstate,
                message=exc.message,
            ) from None
        except StreamClosed:
            raise Refusal(Outcome.CLIENT_ERROR, "client closed before StartupMessage") from None
        if isinstance(event, CancelRequest):
            await self._cancel(event, via_tls=True)
            self.audit.event = "cancel"
            raise _Done("cancel")
        assert isinstance(event, StartupMessage)
        self.audit.requested_user = event.user
        self.audit.database = event.database
        return event

    # ------------------------------------------------------------ phase 4: policy

    async def _decide(self, startup: StartupMessage) -> tuple[BackendSettings, str]:
        cfg = self.cfg
        assert self.identity is not None
        identities = self.identity.values(cfg.identity.field)
        self.audit.identity = identities[0] if identities else None
        decision = rules_mod.evaluate(
            cfg.rules,
            identities,
            startup.user,
            startup.database,
            self.source,
            cfg.identity.on_user_mismatch,
        )
        if isinstance(decision, rules_mod.Deny):
            self.metrics.denied_by_reason[decision.reason].inc()
            raise Refusal(
                Outcome.DENIED,
                decision.reason,
                log=(
                    logging.INFO,
                    "P: denied (%s): identity=%r user=%r database=%r",
                    (decision.reason, self.audit.identity, startup.user, startup.database),
                ),
                sqlstate="28000",
                message=decision.message,
            )
        self.audit.identity = decision.identity
        self.audit.user = decision.user
        backend = rules_mod.route(cfg.backends, decision.backend, startup.database)
        if backend is None:
            msg = f'no backend serves database "{startup.database}"'
            # The client asked for it: a startup_error, not a backend's.
            log: LogLine = (logging.INFO, "P: %s", (msg,))
            raise Refusal(Outcome.STARTUP_ERROR, msg, log=log, sqlstate="3D000", message=msg)
        self.audit.backend = backend.name
        return backend, decision.user

    # ------------------------------------------------------------ limits

    async def _check_limits(self) -> None:
        """From here to its end this is a session: it counts, no longer as pending.

        The moment docs/reference.md names: after the rules decided, before the backend is
        contacted. A refused client stays pending until it is gone.
        """
        if self.rt.connections >= self.cfg.limits.max_connections:
            msg = "sorry, too many clients already"
            log: LogLine = (logging.INFO, "P: %s (limits.max_connections)", (msg,))
            raise Refusal(Outcome.STARTUP_ERROR, msg, log=log, sqlstate="53300", message=msg)
        self.rt.connections += 1
        self.counted = True
        if self.ticket is not None:
            self.ticket.release()

    # ------------------------------------------------------------ phase 5: backend

    async def _login_backend(
        self, backend: BackendSettings, startup: StartupMessage, describe: str
    ) -> tuple[LoginResult, bytes, Authenticator | None]:
        """A new backend session: connect, log in as the mapped user."""
        try:
            stream = await open_backend(backend, self.state.backend_contexts.get(backend.name))
        except BackendUnavailable as exc:
            self.metrics.backend_connect_errors.labels(backend.name).inc()
            msg = f"could not connect to {describe}: {exc}"
            log: LogLine = (logging.WARNING, "S: %s", (msg,))
            raise Refusal(
                Outcome.BACKEND_ERROR, msg, log=log, sqlstate="08006", message=msg
            ) from None
        self.backend_stream = stream
        authenticator = self.rt.authenticator_for(backend, startup.user, stream)
        try:
            result, extra = await run_login(stream, startup, authenticator, describe)
        except BackendLoginError as exc:
            msg = (
                f'{describe} refused login of user "{startup.user}": {exc.message}'
                if exc.from_backend
                else exc.message
            )
            if exc.from_backend and exc.sqlstate in CLIENT_CAUSED_LOGIN_ERRORS:
                # What the client asked for is wrong, not the backend: no alert.
                outcome, level = Outcome.STARTUP_ERROR, logging.INFO
            else:
                self.metrics.backend_connect_errors.labels(backend.name).inc()
                outcome, level = Outcome.BACKEND_ERROR, logging.WARNING
            raise Refusal(
                outcome,
                msg,
                log=(level, "S: %s (SQLSTATE %s)", (msg, exc.sqlstate)),
                sqlstate=exc.sqlstate,
                message=msg,
            ) from None
        return result, extra, authenticator

    async def _connect_backend(
        self, backend: BackendSettings, startup: StartupMessage, user: str
    ) -> None:
        self.phase = Phase.BACKEND
        describe = f'backend "{backend.name}"'
        if user != startup.user:
            startup = startup.with_user(user)
        pool = self.rt.pool
        pool_key = PoolKey(backend, startup) if backend.pool.size and pool is not None else None
        taken = pool.take(pool_key) if pool_key is not None and pool is not None else None
        if taken is not None:
            self.backend_stream, result, self.backend_opened = taken
            extra = b""
            self.audit.backend_reused = True
            authenticator: Authenticator | None = None
        else:
            result, extra, authenticator = await self._login_backend(backend, startup, describe)
            self.backend_opened = time.monotonic()
        self.pool_key = pool_key
        self.backend_login = result
        out = [*result.before_auth, codec.authentication_ok(), *result.to_client]
        if result.backend_pid is not None and result.backend_key is not None:
            pid, key = self.rt.cancels.register(
                CancelTarget(backend, result.backend_pid, result.backend_key)
            )
            self.cancel_key = (pid, key)
            out.append(codec.backend_key_data(pid, key))
        out.append(result.ready_for_query)
        if extra:
            out.append(extra)
        await self.client.send_all(b"".join(out))
        self.phase = Phase.RELAY
        self.active_backend = backend.name
        self.metrics.sessions_active.labels(backend.name).inc()
        self.log.info(
            "P: session open: identity=%r user=%r database=%r backend=%s backend_auth=%s",
            self.audit.identity,
            user,
            startup.database,
            backend.name,
            "reused" if self.audit.backend_reused else _auth_method(authenticator),
        )

    # ------------------------------------------------------------ phase 6: relay

    async def _relay(self) -> None:
        assert self.backend_stream is not None
        result = await relay_session(
            self.client,
            self.backend_stream,
            self.metrics.bytes_c2b,
            self.metrics.bytes_b2c,
            keep_backend=self.pool_key is not None,
        )
        self.audit.bytes_in = result.bytes_in
        self.audit.bytes_out = result.bytes_out
        self.outcome = Outcome.COMPLETED
        if result.terminated and await self._keep_backend():
            self.log.debug("P: relay ended by Terminate; backend session kept")
            return
        if result.ended_by == Side.CLIENT:
            # The client vanished without Terminate, or sent it; either way
            # tell the backend we are done so it frees the session at once.
            try:
                with trio.move_on_after(1):
                    await self.backend_stream.send_all(codec.terminate())
            except (StreamClosed, OSError):
                pass
        if result.error:
            self.log.info("P: relay ended by %s: %s", result.ended_by, result.error)
        else:
            self.log.debug("P: relay ended by %s", result.ended_by)

    async def _keep_backend(self) -> bool:
        """Offer the idle backend session to the pool; True when it took it."""
        pool, key, login, stream = (
            self.rt.pool,
            self.pool_key,
            self.backend_login,
            self.backend_stream,
        )
        if pool is None or key is None or login is None or stream is None or self.rt.draining:
            return False
        # The cancel key dies with this session: a late CancelRequest from
        # this client must not reach the next client's query.
        if self.cancel_key is not None:
            self.rt.cancels.unregister(*self.cancel_key)
            self.cancel_key = None
        if not await pool.give_back(key, stream, login, self.backend_opened):
            return False
        self.backend_stream = None
        return True

    # ------------------------------------------------------------ cancel

    async def _cancel(self, request: CancelRequest, *, via_tls: bool) -> None:
        self.audit.event = "cancel"
        self.outcome = Outcome.COMPLETED
        if not via_tls:
            self.handshake_counted = True  # no handshake took place
            if not self.cfg.limits.plaintext_cancel:
                self.metrics.cancel_by_result["refused"].inc()
                self.log.info("C: plaintext CancelRequest refused (limits.plaintext_cancel)")
                self.audit.error = "plaintext cancel refused"
                return
        outcome = await deliver_cancel(self.rt, request)
        self.audit.backend = outcome.backend
        self.audit.error = outcome.error
        via = " by the worker that owns the key" if outcome.handed_off else ""
        if outcome.result == "forwarded":
            self.log.info("C: CancelRequest delivered%s to backend %s", via, outcome.backend)
        elif outcome.result == "unknown_key":
            self.log.info("C: CancelRequest dropped%s: no session has that key", via)
        else:
            self.log.info("C: CancelRequest not delivered%s: %s", via, outcome.error)

    # ------------------------------------------------------------ teardown

    async def _close(self, lingering: bool) -> None:
        if self.backend_stream is not None:
            await self.backend_stream.aclose()
        if lingering:
            await self.client.linger_close(0.5)
        else:
            await self.client.aclose()

    def _finish(self) -> None:
        if self.counted:
            self.rt.connections -= 1
            self.counted = False
        if self.cancel_key is not None:
            self.rt.cancels.unregister(*self.cancel_key)
        if self.active_backend is not None:
            self.metrics.sessions_active.labels(self.active_backend).dec()
        self.audit.outcome = self.outcome
        if self.audit.event == "session":
            self.metrics.session_by_outcome[self.outcome].inc()
        audit_mod.write(self.audit, self.cfg.logging.audit)
