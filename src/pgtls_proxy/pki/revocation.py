"""CRLs: reading, verifying, remembering, and the policy of ``tls.revocation``.

``strict`` is enforced by OpenSSL during the handshake: the CRLs are loaded
into the server context with ``VERIFY_CRL_CHECK_CHAIN``, which demands a
current CRL from the issuer of every certificate of the verified chain and
sends the client the alert that names the failure. Measured with OpenSSL 3.0:
it also looks the trust anchor up in the anchor's own CRL. That CRL is
required anyway for the certificate just below the anchor, so the extra look
changes nothing unless a root lists its own serial (then everything under it
is refused, as PostgreSQL does) or a self-signed client certificate is itself
the anchor (it then needs a CRL it signed).

``lenient`` (refuse what a loaded CRL lists, tolerate missing or stale CRLs)
cannot be said with OpenSSL's flags, so it is checked after the handshake,
here, against the chain OpenSSL verified.

Every CRL's signature is checked when it is loaded, against the CAs of
``tls.client_ca_file``. One that fails is not loaded at all, so in strict mode
its issuer has no CRL and the handshake fails closed as ``crl_unavailable``,
and in lenient mode it cannot lift or add revocations. A CRL whose issuer is
not in the bundle (an intermediate that clients send themselves) is kept; its
signature is checked against the real issuer during each chain check, by
OpenSSL in strict mode and below in lenient mode.

A file that fails to read, parse or verify keeps the CRLs it held the last
time it loaded, so an operator's half-written file never lifts revocations.

CRLs only move forward. Anyone who can write a CRL file could otherwise copy
an older CRL, validly signed by the same CA, over the current one and lift
the revocations made since. So the loader remembers, for each CA whose
signature it verified, the newest CRL this process has loaded (its high-water
mark, across reloads, rewrites and files that go away and come back), and
only a newer CRL replaces it: a higher cRLNumber, or a later thisUpdate when
either CRL has no number or both have the same one. An older CRL is a broken
CRL: it is ignored, the newer one stays in force, and the problem is
reported once per change. Two CRLs of one CA at once (``crl_files`` and
``crl_dir``, two files in ``crl_dir``) are ordered the same way. A CA with no
CRL file left has no CRL (removing a file is an operator's decision that
strict mode turns into a refusal), but a file that comes back cannot bring
an older CRL with it.

The memory is the process's: a freshly started process takes the CRLs it
finds. Strict mode bounds what an old file can do then, because a CRL past
its ``nextUpdate`` is refused (docs/revoking-a-client.md). CRLs whose issuer
is not in ``tls.client_ca_file`` cannot be ordered at load time (a forged one
would look newer), so they keep the behaviour above; ``check`` warns about
them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from pgtls_proxy.config import TLSSettings
from pgtls_proxy.pki.chain import build_chain, is_self_signed, public_key_der

_PEM_BEGIN = b"-----BEGIN X509 CRL-----"
_PEM_END = b"-----END X509 CRL-----"


class CRLFileError(Exception):
    """A CRL file cannot be used; the message names the file for the operator."""


@dataclass(frozen=True, slots=True)
class CRLSource:
    """One CRL file and the config key that brought it in (for messages)."""

    key: str
    path: Path


@dataclass(frozen=True, slots=True)
class LoadedCRL:
    """A parsed CRL whose signature verified (or whose issuer we cannot see yet)."""

    source: CRLSource
    crl: x509.CertificateRevocationList
    issuer: str
    # The client_ca_file CA whose key verified the signature; None when the
    # issuer is not in the bundle and the check waits for a real chain.
    signer_key: bytes | None
    last_update: datetime
    next_update: datetime | None
    revoked_serials: frozenset[int]
    # The cRLNumber extension; None when the CRL has none.
    number: int | None = None

    @property
    def order_key(self) -> tuple[x509.Name, bytes] | None:
        """The CA whose CRLs are ordered against each other; None when unverified."""
        if self.signer_key is None:
            return None
        return (self.crl.issuer, self.signer_key)

    def describe(self) -> str:
        """Number and date, for messages that compare two CRLs."""
        number = "no cRLNumber" if self.number is None else f"cRLNumber {self.number}"
        return f"{number}, thisUpdate {self.last_update:%Y-%m-%d %H:%M:%S} UTC"

    def is_current(self, now: datetime) -> bool:
        """Inside its validity: issued already, and ``nextUpdate`` not yet reached."""
        if self.last_update > now:
            return False
        return self.next_update is None or now < self.next_update


@dataclass(frozen=True, slots=True)
class CRLProblem:
    """A CRL file that failed to load; ``kept`` when its previous content stays.

    ``older`` marks a CRL that loaded but is older than the one in force for
    its CA (see the module's docstring); ``repeated`` one that this loader
    reported already, unchanged since, so it is neither logged nor counted
    again.
    """

    source: CRLSource
    message: str
    kept: bool = False
    older: bool = False
    repeated: bool = False

    def __str__(self) -> str:
        suffix = "; the CRL loaded before from this file stays in force" if self.kept else ""
        return f"{self.message}{suffix}"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of a lenient chain check."""

    label: str | None = None  # "revoked", or None to let the client in
    problems: tuple[str, ...] = ()
    revoked: x509.Certificate | None = None


def crl_sources(tls: TLSSettings) -> list[CRLSource]:
    """Every CRL file the config names; ``crl_dir`` entries in sorted order.

    Hidden files in ``crl_dir`` are skipped: editors and atomic writers
    (``pki revoke`` among them) use them as temporary files.
    """
    sources = [CRLSource(f"tls.crl_files[{i}]", path) for i, path in enumerate(tls.crl_files)]
    if tls.crl_dir is not None:
        try:
            entries = sorted(tls.crl_dir.iterdir())
        except OSError:
            entries = []
        sources.extend(
            CRLSource("tls.crl_dir", p)
            for p in entries
            if not p.name.startswith(".") and p.is_file()
        )
    return sources


def crl_number(crl: x509.CertificateRevocationList) -> int | None:
    """The cRLNumber extension (RFC 5280 5.2.3), or None when the CRL has none."""
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return None


def compare_crls(a: LoadedCRL, b: LoadedCRL) -> int | None:
    """1 when ``a`` is newer than ``b``, -1 when older, 0 when it is the same CRL.

    The cRLNumber decides when both have one and they differ (RFC 5280: it
    increases with every CRL a CA issues); otherwise thisUpdate. None when
    neither tells them apart but their content differs: same number, same
    thisUpdate, different entries (a CA that re-signed without counting up).
    """
    if a.number is not None and b.number is not None and a.number != b.number:
        return 1 if a.number > b.number else -1
    if a.last_update != b.last_update:
        return 1 if a.last_update > b.last_update else -1
    return 0 if a.crl == b.crl else None


def parse_crls(data: bytes) -> list[x509.CertificateRevocationList]:
    """CRLs of a PEM file (one or several blocks) or one DER CRL; ValueError if none."""
    if b"-----BEGIN" not in data:
        return [x509.load_der_x509_crl(data)]
    out = []
    for block in data.split(_PEM_END)[:-1]:
        start = block.find(_PEM_BEGIN)
        if start >= 0:
            out.append(x509.load_pem_x509_crl(block[start:] + _PEM_END + b"\n"))
    if not out:
        raise ValueError("no X509 CRL block in this PEM file")
    return out


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except TypeError:  # a key type that cannot sign
        return False


def _signer(crl: x509.CertificateRevocationList, cas: Sequence[x509.Certificate]) -> bytes | None:
    """The key of the CA that signed ``crl``; None if no CA of that name is known.

    Raises CRLFileError when CAs of that name exist but none of their keys
    verifies the signature (a forged, corrupted or wrongly signed CRL).
    """
    named = [ca for ca in cas if ca.subject == crl.issuer]
    if not named:
        return None
    for ca in named:
        if _signed_by(crl, ca):
            return public_key_der(ca)
    raise CRLFileError(
        f"the signature of the CRL of {crl.issuer.rfc4514_string()} does not verify"
        " against that CA's key in tls.client_ca_file"
    )


def load_crl_file(source: CRLSource, cas: Sequence[x509.Certificate]) -> tuple[LoadedCRL, ...]:
    """Read, parse and verify every CRL of one file; CRLFileError names the file."""
    path = source.path
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CRLFileError(f"cannot read CRL file {path}: {exc.strerror or exc}") from None
    try:
        crls = parse_crls(data)
    except ValueError as exc:
        raise CRLFileError(f"{path} is not a valid PEM or DER CRL ({exc})") from None
    loaded = []
    for crl in crls:
        try:
            signer = _signer(crl, cas)
        except CRLFileError as exc:
            raise CRLFileError(f"{path}: {exc}") from None
        loaded.append(
            LoadedCRL(
                source=source,
                crl=crl,
                issuer=crl.issuer.rfc4514_string(),
                signer_key=signer,
                last_update=crl.last_update_utc,
                next_update=crl.next_update_utc,
                revoked_serials=frozenset(entry.serial_number for entry in crl),
                number=crl_number(crl),
            )
        )
    return tuple(loaded)


class CRLLoader:
    """Loads the configured CRLs and remembers the last good content of each file.

    One loader lives as long as the process, across rebuilds of the TLS
    state, so a file that turns bad keeps its previous CRLs in force. A file
    that is no longer configured, or gone from ``crl_dir``, is forgotten;
    the newest CRL of each CA is not (see the module's docstring).
    """

    def __init__(self) -> None:
        self._last_good: dict[Path, tuple[LoadedCRL, ...]] = {}
        self._newest: dict[tuple[x509.Name, bytes], LoadedCRL] = {}
        # (file, the ignored CRL's signature, the kept CRL's signature) of the
        # older CRLs reported by the last load: reported once, not per reload.
        self._older_reported: set[tuple[Path, bytes, bytes]] = set()

    def load(
        self, tls: TLSSettings, cas: Sequence[x509.Certificate]
    ) -> tuple[tuple[LoadedCRL, ...], tuple[CRLProblem, ...]]:
        if tls.revocation == "off":
            return (), ()
        good: dict[Path, tuple[LoadedCRL, ...]] = {}
        problems: list[CRLProblem] = []
        if tls.crl_dir is not None and not tls.crl_dir.is_dir():
            problems.append(
                CRLProblem(
                    CRLSource("tls.crl_dir", tls.crl_dir), f"{tls.crl_dir}: no such directory"
                )
            )
        for source in crl_sources(tls):
            try:
                good[source.path] = load_crl_file(source, cas)
            except CRLFileError as exc:
                previous = self._last_good.get(source.path)
                problems.append(CRLProblem(source, str(exc), kept=previous is not None))
                if previous is not None:
                    good[source.path] = previous
        self._last_good = good
        crls = self._only_forward(itertools.chain.from_iterable(good.values()), problems)
        return crls, tuple(problems)

    def seed(self, crls: Iterable[LoadedCRL]) -> None:
        """Remember ``crls`` as the last good content of the files they name.

        A worker started from the supervisor's copy of the files calls this,
        so a CRL file that is broken on disk keeps that copy in force, and the
        copy's CRLs count as loaded: an older CRL on disk does not replace
        them (CRLs only move forward, across a worker's restart too).
        """
        good: dict[Path, list[LoadedCRL]] = {}
        for item in crls:
            good.setdefault(item.source.path, []).append(item)
            key = item.order_key
            if key is None:
                continue
            best = self._newest.get(key)
            order = None if best is None else compare_crls(item, best)
            if best is None or (order is not None and order > 0):
                self._newest[key] = item
        self._last_good = {path: tuple(items) for path, items in good.items()}

    def forget_reports(self) -> None:
        """Report the older CRLs of the last load again (its build failed unreported)."""
        self._older_reported = set()

    def _only_forward(
        self, offered: Iterable[LoadedCRL], problems: list[CRLProblem]
    ) -> tuple[LoadedCRL, ...]:
        """One CRL per verified CA, never older than the newest one loaded before.

        CRLs of unverified issuers pass through as they are. The newest
        stays in force while any file still offers a CRL of its CA.
        """
        unordered: list[LoadedCRL] = []
        by_ca: dict[tuple[x509.Name, bytes], list[LoadedCRL]] = {}
        for item in offered:
            key = item.order_key
            if key is None:
                unordered.append(item)
            else:
                by_ca.setdefault(key, []).append(item)
        in_force: list[LoadedCRL] = []
        reported: set[tuple[Path, bytes, bytes]] = set()
        for key, items in by_ca.items():
            best = self._newest.get(key)
            for item in items:
                # The same CRL again takes over too, with the file it is in now.
                order = None if best is None else compare_crls(item, best)
                if best is None or (order is not None and order >= 0):
                    best = item
            assert best is not None
            self._newest[key] = best
            in_force.append(best)
            for item in items:
                order = compare_crls(item, best)
                if order == 0:
                    continue  # the CRL in force, or the same CRL once more
                memo = (item.source.path, item.crl.signature, best.crl.signature)
                reported.add(memo)
                problems.append(_older_problem(item, best, memo in self._older_reported))
        self._older_reported = reported
        return (*unordered, *in_force)


def _older_problem(item: LoadedCRL, best: LoadedCRL, repeated: bool) -> CRLProblem:
    same = compare_crls(item, best) is None
    where = "" if best.source.path == item.source.path else f" from {best.source.path}"
    what = (
        "has the same cRLNumber and thisUpdate as, but other entries than,"
        if same
        else "is older than"
    )
    return CRLProblem(
        item.source,
        f"{item.source.path}: the CRL of {item.issuer} ({item.describe()}) {what} the CRL"
        f" in force ({best.describe()}{where}); ignored, CRLs only move forward",
        older=True,
        repeated=repeated,
    )


@dataclass(slots=True)
class RevocationChecker:
    """The loaded CRLs and the policy to apply with them, for one TLS state."""

    mode: str
    crls: tuple[LoadedCRL, ...] = ()
    cas: tuple[x509.Certificate, ...] = ()
    problems: tuple[CRLProblem, ...] = ()
    _by_issuer: dict[x509.Name, list[LoadedCRL]] = field(default_factory=dict, repr=False)
    # Signatures of CRLs whose issuer is not in the bundle, checked once per key.
    _verified: dict[tuple[int, bytes], bool] = field(default_factory=dict, repr=False)
    _reported: set[str] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        for item in self.crls:
            self._by_issuer.setdefault(item.crl.issuer, []).append(item)

    @property
    def openssl_crl_check(self) -> bool:
        return self.mode == "strict"

    def pem_for_openssl(self) -> list[str]:
        """The CRLs OpenSSL enforces: all of them in strict mode, none otherwise."""
        if self.mode != "strict":
            return []
        return [c.crl.public_bytes(Encoding.PEM).decode("ascii") for c in self.crls]

    def chain_for(self, leaf: x509.Certificate) -> list[x509.Certificate]:
        """The client's chain rebuilt from the CA bundle, when OpenSSL's is not at hand."""
        return build_chain(leaf, self.cas)

    def issuers_without_crl(self) -> list[x509.Certificate]:
        """CAs of the bundle that no loaded CRL speaks for (strict refuses what they issued)."""
        return [ca for ca in self.cas if not self._by_issuer.get(ca.subject)]

    def _is_anchor(self, cert: x509.Certificate) -> bool:
        return cert in self.cas or is_self_signed(cert)

    def _crl_of(self, cert: x509.Certificate, issuer: x509.Certificate | None) -> LoadedCRL | None:
        """The newest CRL whose signature proves it comes from ``cert``'s issuer."""
        if issuer is None:
            return None
        key = public_key_der(issuer)
        best: LoadedCRL | None = None
        for item in self._by_issuer.get(cert.issuer, ()):
            if item.signer_key is None:
                if not self._signature_ok(item, issuer, key):
                    continue
            elif item.signer_key != key:
                continue
            if best is None or item.last_update > best.last_update:
                best = item
        return best

    def _signature_ok(self, item: LoadedCRL, issuer: x509.Certificate, key: bytes) -> bool:
        memo = (id(item), key)
        if memo not in self._verified:
            self._verified[memo] = _signed_by(item.crl, issuer)
        return self._verified[memo]

    def check_chain(
        self, chain: Sequence[x509.Certificate], now: datetime | None = None
    ) -> Verdict:
        """Lenient check of every certificate below the trust anchor.

        ``chain`` runs from the leaf up; its last element is the anchor when
        it is in the bundle or self-signed. Strict and off always pass here:
        OpenSSL has already applied strict during the handshake.
        """
        if self.mode != "lenient" or not chain:
            return Verdict()
        now = now or datetime.now(UTC)
        below = list(chain[:-1]) if self._is_anchor(chain[-1]) else list(chain)
        problems: list[str] = []
        for depth, cert in enumerate(below):
            issuer = chain[depth + 1] if depth + 1 < len(chain) else None
            item = self._crl_of(cert, issuer)
            issuer_name = cert.issuer.rfc4514_string()
            if item is None:
                problems.append(f"no CRL for issuer {issuer_name}")
                continue
            if not item.is_current(now):
                problems.append(
                    f"the CRL of {issuer_name} ({item.source.path}) is outside its validity"
                )
            if cert.serial_number in item.revoked_serials:
                return Verdict("revoked", tuple(problems), cert)
        return Verdict(None, tuple(problems))

    def first_report(self, problem: str) -> bool:
        """True the first time a lenient problem is seen, so the log says it once."""
        if problem in self._reported:
            return False
        self._reported.add(problem)
        return True

    def next_updates(self) -> dict[str, datetime]:
        """Each issuer's latest ``nextUpdate``: when its CRLs go stale.

        The caller publishes it (the ``crl_next_update`` gauge); pki/ only
        decides, so it stays free of the metrics library.
        """
        latest: dict[str, datetime] = {}
        for item in self.crls:
            if item.next_update is not None:
                seen = latest.get(item.issuer)
                if seen is None or item.next_update > seen:
                    latest[item.issuer] = item.next_update
        return latest


def load_revocation(
    tls: TLSSettings,
    cas: Iterable[x509.Certificate],
    loader: CRLLoader | None = None,
) -> RevocationChecker:
    """Load every CRL the config names; problems are returned, not raised."""
    cas = tuple(cas)
    crls, problems = (loader or CRLLoader()).load(tls, cas)
    return RevocationChecker(tls.revocation, crls, cas, problems)
