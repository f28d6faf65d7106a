"""Certificate revocation lists for Entity B (TS-0003 §8.1.2.2): loading, checking, reloading.

* :func:`load_crls` reads one or several CRLs, PEM (``-----BEGIN X509 CRL-----`` blocks) or DER (one or
  several concatenated), and refuses data that holds no CRL.
* :class:`CRLSet` answers "is this peer certificate still trusted by these CRLs?" (pure, time injected).
* :class:`CRLFile` is a ``--crl`` file: loaded at start (errors are fatal), polled for changes by the
  gateway's reloader (:mod:`m2msec.gateway.reload`), and watched for ``nextUpdate``: a WARNING when less
  than a margin remains, an ERROR once it has passed. A stale CRL is not ignored: OpenSSL refuses new
  certificate handshakes against it and :mod:`m2msec.gateway.revocation` ends live SAs whose issuer's CRL
  is stale (docs/decisions.md D30); installing a fresh CRL fixes both without a restart.
* :func:`superseded_issuers` refuses a rollback: a reload whose CRL for some issuer is older than the one in
  force (lower cRLNumber, or without cRLNumbers an older thisUpdate) keeps the CRLs in force
  (docs/decisions.md D42): restoring yesterday's file must not un-revoke certificates. A reload whose file no
  longer holds some issuer's CRL keeps that issuer's last CRL in force (:data:`DROPPED_ISSUER_POLICY`), so an
  issuer cannot be rolled back in two steps (drop it, then put its old CRL back); this memory is in the
  process only: a restart forgets it.
* :func:`unsigned_crls` refuses a CRL that no trusted CA certificate (the ``--client-ca`` certificates)
  signed (docs/decisions.md D50): a CRL fetched over plain HTTP is only as good as its signature, and a forged
  one with a huge cRLNumber would otherwise make D42 refuse every genuine CRL of that CA.
"""

from __future__ import annotations

import functools
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm

from m2msec.errors import ConfigurationError
from m2msec.keys.files import file_signature

__all__ = [
    "DEFAULT_CRL_WARNING_MARGIN",
    "DROPPED_ISSUER_POLICY",
    "CRLFile",
    "CRLSet",
    "load_crls",
    "next_update_alerts",
    "superseded_issuers",
    "unsigned_crls",
]

log = logging.getLogger("m2msec.crl")

#: seconds before a CRL's nextUpdate from which a WARNING is logged (docs/decisions.md D30)
DEFAULT_CRL_WARNING_MARGIN = 86400.0

#: what a reload whose file no longer holds an issuer's CRL does with that issuer's CRL in force
#: (docs/decisions.md D51): "keep" it (fail-safe; a restart drops it)
DROPPED_ISSUER_POLICY = "keep"

_MISSING = (-1, -1, -1, -1)
_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----\r?\n.*?-----END X509 CRL-----", re.DOTALL)


def _der_items(data: bytes) -> Iterable[bytes]:
    """Split concatenated DER SEQUENCEs (X.690 §8.1: tag, definite length, contents)."""
    pos = 0
    while pos < len(data):
        if data[pos] != 0x30 or pos + 2 > len(data):
            raise ValueError("not a DER SEQUENCE")
        first = data[pos + 1]
        if first < 0x80:
            header, length = 2, first
        else:
            n = first & 0x7F
            if n == 0 or n > 4 or pos + 2 + n > len(data):
                raise ValueError("bad DER length")
            header, length = 2 + n, int.from_bytes(data[pos + 2:pos + 2 + n], "big")
        end = pos + header + length
        if end > len(data):
            raise ValueError("truncated DER")
        yield data[pos:end]
        pos = end


def _parse_all(crl: x509.CertificateRevocationList) -> None:
    """Read every field the checks below use: cryptography parses them lazily, so a malformed issuer, date, extension
    or entry would otherwise raise ValueError at the first handshake that reads it, not here (issue 21)."""
    crl.issuer.rfc4514_string()
    _crl_order(crl)
    _ = crl.next_update_utc
    for entry in crl:
        _ = entry.serial_number


def load_crls(data: bytes, source: str = "CRL data") -> tuple[x509.CertificateRevocationList, ...]:
    """Every CRL in ``data`` (PEM blocks, or DER).

    Raises:
        ConfigurationError: ``data`` holds no CRL, or a CRL in it does not parse (one line, names ``source``).
    """
    crls: list[x509.CertificateRevocationList] = []
    blocks = _PEM_CRL.findall(data) if b"-----BEGIN" in data else []
    if data.count(b"-----BEGIN X509 CRL-----") != len(blocks):  # a file caught mid-write: not a shorter list
        raise ConfigurationError(f"{source}: a PEM CRL block is truncated")
    try:
        if b"-----BEGIN" in data:
            crls = [x509.load_pem_x509_crl(block + b"\n") for block in blocks]
        elif data.strip():
            crls = [x509.load_der_x509_crl(item) for item in _der_items(data)]
        for crl in crls:
            _parse_all(crl)
    # InvalidVersion, DuplicateExtension: no ValueError (found by scripts/fuzz_parsers.py, issue 21)
    except (ValueError, x509.InvalidVersion, x509.DuplicateExtension) as exc:
        raise ConfigurationError(f"{source}: not a valid CRL ({exc})") from None
    if not crls:
        raise ConfigurationError(f"{source}: holds no CRL (expected PEM '-----BEGIN X509 CRL-----' blocks or DER)")
    return tuple(crls)


@dataclass(frozen=True)
class CRLSet:
    """The CRLs in force. ``status`` is the revocation half of the live-SA check (time injected)."""

    crls: tuple[x509.CertificateRevocationList, ...] = ()

    @functools.cached_property
    def index(self) -> dict[x509.Name, tuple[frozenset[int], tuple[datetime | None, ...]]]:
        """Issuer -> (revoked serials, nextUpdate of each of its CRLs): one pass per CRL version, not per request
        (a linear scan of a 20,000-entry CRL costs milliseconds)."""
        serials: dict[x509.Name, set[int]] = {}
        updates: dict[x509.Name, list[datetime | None]] = {}
        for crl in self.crls:
            serials.setdefault(crl.issuer, set()).update(r.serial_number for r in crl)
            updates.setdefault(crl.issuer, []).append(crl.next_update_utc)
        return {name: (frozenset(serials[name]), tuple(updates[name])) for name in serials}

    def status(self, cert: x509.Certificate, now: float) -> str | None:
        """Why ``cert`` is no longer trusted by these CRLs, or None when it still is.

        Mirrors OpenSSL's CRL_CHECK on the end-entity certificate (docs/decisions.md D17): no CRL from its
        issuer, a CRL listing its serial, or only stale CRLs (nextUpdate passed) from its issuer.
        """
        mine = self.index.get(cert.issuer)
        if mine is None:
            return f"no CRL from its issuer {cert.issuer.rfc4514_string()!r}"
        revoked, next_updates = mine
        if cert.serial_number in revoked:
            return f"certificate serial {cert.serial_number:#x} is revoked"
        stamp = datetime.fromtimestamp(now, UTC)
        if all(update is not None and update < stamp for update in next_updates):
            return f"the CRL of its issuer {cert.issuer.rfc4514_string()!r} is past its nextUpdate"
        return None


def _crl_order(crl: x509.CertificateRevocationList) -> tuple[int | None, datetime]:
    """(cRLNumber or None, thisUpdate) of ``crl``: what tells that a CRL supersedes another (RFC 5280 §5.2.3)."""
    try:
        number: int | None = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = None
    return number, crl.last_update_utc


def _newest(crls: Iterable[x509.CertificateRevocationList]) -> dict[x509.Name, tuple[int | None, datetime]]:
    out: dict[x509.Name, tuple[int | None, datetime]] = {}
    for crl in crls:
        number, this_update = _crl_order(crl)
        old = out.get(crl.issuer)
        if old is None:
            out[crl.issuer] = (number, this_update)
        else:
            numbers = [n for n in (old[0], number) if n is not None]
            out[crl.issuer] = (max(numbers) if numbers else None, max(old[1], this_update))
    return out


def superseded_issuers(in_force: Iterable[x509.CertificateRevocationList],
                       candidate: Iterable[x509.CertificateRevocationList]) -> list[str]:
    """The issuers (RFC 4514 strings) for which ``candidate`` holds an older CRL than ``in_force``: a lower
    cRLNumber when both CRLs carry one, else an older thisUpdate (docs/decisions.md D42). Equal is not older
    (the same CRL written again)."""
    current = _newest(in_force)
    out: list[str] = []
    for issuer, (number, this_update) in _newest(candidate).items():
        old = current.get(issuer)
        if old is None:
            continue
        old_number, old_update = old
        older = number < old_number if number is not None and old_number is not None else this_update < old_update
        if older:
            out.append(issuer.rfc4514_string())
    return out


def _signed_by(crl: x509.CertificateRevocationList, ca: x509.Certificate) -> bool:
    if ca.subject != crl.issuer:
        return False
    try:
        return crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError, UnsupportedAlgorithm):  # a key type that cannot sign CRLs
        return False


def unsigned_crls(crls: Iterable[x509.CertificateRevocationList],
                  trusted: Iterable[x509.Certificate]) -> list[str]:
    """The issuers (RFC 4514 strings) of the CRLs in ``crls`` that no certificate of ``trusted`` with the CRL's
    issuer name signed (docs/decisions.md D50)."""
    cas = tuple(trusted)
    return [crl.issuer.rfc4514_string() for crl in crls if not any(_signed_by(crl, ca) for ca in cas)]


def _describe(crl: x509.CertificateRevocationList) -> str:
    return f"CRL of {crl.issuer.rfc4514_string()!r}"


def next_update_alerts(crls: Iterable[x509.CertificateRevocationList], now: float,
                       margin: float) -> list[tuple[int, str]]:
    """(log level, message) for each CRL whose nextUpdate is near (WARNING) or past (ERROR)."""
    out: list[tuple[int, str]] = []
    for crl in crls:
        if crl.next_update_utc is None:
            continue
        left = crl.next_update_utc.timestamp() - now
        when = f"{crl.next_update_utc:%Y-%m-%dT%H:%M:%SZ}"
        if left <= 0:
            out.append((logging.ERROR, f"{_describe(crl)} passed its nextUpdate {when}: certificate clients of "
                                       "that CA are refused until a fresh CRL is installed"))
        elif left < margin:
            out.append((logging.WARNING, f"{_describe(crl)} reaches its nextUpdate {when} in {int(left)} s: "
                                         "install a fresh CRL before then"))
    return out


def _issuer(crl: x509.CertificateRevocationList) -> str:
    return crl.issuer.rfc4514_string()


def _dropped(in_force: Iterable[x509.CertificateRevocationList],
             candidate: Iterable[x509.CertificateRevocationList]) -> tuple[x509.CertificateRevocationList, ...]:
    """The CRLs in force whose issuer ``candidate`` holds no CRL for: kept in force (D51)."""
    issuers = {crl.issuer for crl in candidate}
    return tuple(crl for crl in in_force if crl.issuer not in issuers)


class CRLFile:
    """A CRL file (``--crl``): PEM or DER, one or several CRLs; reloaded by :meth:`poll` when it changes.

    A reload that fails (missing, unreadable, no CRL in it) keeps the CRLs in force and logs an ERROR:
    dropping them would stop every certificate client, and older CRLs only lack recent revocations. So does a
    file holding, for some issuer, an older CRL than the one in force (:func:`superseded_issuers`, D42), and a
    file holding a CRL that no certificate of ``trusted`` (the client CAs) signed (:func:`unsigned_crls`, D50).
    An issuer whose CRL a reloaded file no longer holds keeps its last CRL in force (D51, until a restart).
    """

    def __init__(self, path: str | Path, *, trusted: Iterable[x509.Certificate],
                 warning_margin: float = DEFAULT_CRL_WARNING_MARGIN, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self.trusted = tuple(trusted)
        self.warning_margin = warning_margin
        self.clock = clock
        self.generation = 0
        self._lock = threading.Lock()
        self._signature, crls = self._load()
        self.crls = CRLSet(crls)
        _ = self.crls.index  # built here (start, or the reloader's worker thread), not on the event loop
        self._alerted: set[tuple[bytes, int]] = set()
        self._failed: tuple[int, int, int, int] | None = None
        self._alert()

    def _stat(self) -> tuple[int, int, int, int]:
        return file_signature(self.path)

    def _load(self) -> tuple[tuple[int, int, int, int], tuple[x509.CertificateRevocationList, ...]]:
        try:
            signature = self._stat()
            data = self.path.read_bytes()
        except OSError as exc:
            raise ConfigurationError(f"{self.path}: cannot read CRL file: {exc.strerror or exc}") from None
        crls = load_crls(data, str(self.path))
        unsigned = unsigned_crls(crls, self.trusted)
        if unsigned:
            raise ConfigurationError(
                f"{self.path}: holds a CRL not signed by any client CA certificate, for issuer(s) "
                f"{'; '.join(repr(i) for i in unsigned)}")
        return signature, crls

    def _alert(self) -> None:
        for level, message in next_update_alerts(self.crls.crls, self.clock(), self.warning_margin):
            key = (message.encode(), level)
            if key not in self._alerted:
                self._alerted.add(key)
                log.log(level, "%s: %s", self.path, message)

    def poll(self) -> None:
        """Reload when the file changed; log nextUpdate warnings. Never raises."""
        with self._lock:
            try:
                signature = self._stat()
            except OSError:
                signature = _MISSING
            if signature != self._signature and signature != self._failed:
                try:
                    loaded, crls = self._load()
                    older = superseded_issuers(self.crls.crls, crls)
                    if older:
                        raise ConfigurationError(
                            f"{self.path}: holds an older CRL (lower cRLNumber or older thisUpdate) than the one "
                            f"in force for issuer(s) {'; '.join(repr(i) for i in older)}; install a CRL at "
                            "least as recent")
                    kept = _dropped(self.crls.crls, crls)
                    if kept:
                        log.warning("%s: no longer holds a CRL for issuer(s) %s; their last CRL stays in force "
                                    "until a restart", self.path, "; ".join(repr(_issuer(c)) for c in kept))
                        crls = crls + kept
                    self._signature = loaded
                except ConfigurationError as exc:
                    self._failed = signature
                    log.error("CRLs not reloaded, the previous ones stay in use: %s", exc)
                else:
                    self._failed = None
                    new = CRLSet(crls)
                    _ = new.index
                    self.crls = new
                    self.generation += 1
                    log.info("reloaded %d CRL(s) from %s", len(crls), self.path, extra={"event": "crls_reloaded"})
            self._alert()

    def __repr__(self) -> str:
        return f"<CRLFile {self.path} {len(self.crls.crls)} CRLs>"
