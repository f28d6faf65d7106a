"""The MEF's two clients: the Enrolee (:func:`enrol`) and an Enrolment Target (:class:`MEFFetcher`).

Both run a MEF Handshake (TS-0003 §8.3.2.1): TLS-PSK with (KpmID, Kpm) or the target's PSK, or mutual
certificates with the MEF's FQDN certificate checked for ``mef_fqdn``. Every step has a deadline (``timeout``);
refusals raise :class:`MEFRefused` (a :class:`~m2msec.errors.MEFError`: status + problem name), an unreachable MEF
:class:`~m2msec.errors.TransportError`. Keys are :class:`~m2msec.keys.secret.SecretKey` (never in a repr).

- :func:`enrol`: exports ``EXPORTER-oneM2M-Bootstrap`` (48 bytes) on its own side, runs the Enrolment Exchange
  (``POST /mef/v1/enrolment`` then ``/enrolment/done``), and checks the MEF's KeID is its own (constant time).
  :meth:`Enrolment.credential` derives the §10.3.7 key for (SUID, target).
- :class:`MEFFetcher`: ``GET /mef/v1/fetchCredentials/<KeID>/<SUID>`` on one kept connection, replaced once when
  the MEF closed it (as :class:`m2msec.maf.client.MAFClient`).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from m2msec import http1
from m2msec.cli.common import parse_hostport
from m2msec.errors import ConfigurationError, IdentifierError, MEFError, TransportError
from m2msec.identifiers import KeID, validate_fqdn
from m2msec.keys.secret import SecretKey
from m2msec.maf.client_wire import decode_json, encode_json, parse_timestamp
from m2msec.mef import kdf
from m2msec.mef.wire import API_PREFIX, PROBLEM_TYPE_PREFIX
from m2msec.service_client import KeptConnection, ServiceConnection, check_fqdn_peer, psk_or_certificate_config
from m2msec.tls.engine import ClientConfig, SessionInfo, TLSContext
from m2msec.tls.profiles import CipherProfile

__all__ = ["DEFAULT_MEF_TIMEOUT", "Enrolment", "FetchedCredential", "MEFCredentials", "MEFFetcher", "MEFRefused",
           "check_distinct_fqdns", "enrol", "keid_of"]

#: seconds one MEF step (handshake, or one request and its answer) may take (D195, as the MAF's D93)
DEFAULT_MEF_TIMEOUT: Final = 5.0
MAX_ANSWER_BODY: Final = 64 * 1024


class MEFRefused(MEFError):
    """The MEF refused the request: ``status`` and ``problem`` (e.g. 404 ``unknown-keid``), or (``status`` 0)
    answered off contract."""


def check_distinct_fqdns(mef_fqdn: str, maf_fqdns: Iterable[str]) -> None:
    """D189: a KeID and a MAF Key Identifier have the same syntax (§10.3.4/§10.3.5); only the FQDN tells them
    apart, so the MEF-FQDN must differ from every MAF-FQDN. Raises ConfigurationError."""
    mef = mef_fqdn.lower().rstrip(".")
    for maf in maf_fqdns:
        if maf.lower().rstrip(".") == mef:
            raise ConfigurationError(f"the MEF-FQDN {mef!r} is also a MAF-FQDN: KeIDs and MAF key identifiers "
                                     "could not be told apart")


def keid_of(identity: str, mef_fqdn: str) -> KeID | None:
    """The KeID a ``psk_identity`` names when it is one of the MEF at ``mef_fqdn`` (lowercase FQDN), else None:
    how a target's PSK resolver tells a remotely provisioned identity from its other ones (D189)."""
    try:
        keid = KeID.parse(identity)
    except (IdentifierError, ValueError):
        return None
    return keid if keid.mef_fqdn == mef_fqdn else None


@dataclass(frozen=True)
class MEFCredentials:
    """How to authenticate to the MEF: ``psk_identity`` + ``psk`` (an enrolee's KpmID/Kpm, or a target's ID and
    PSK), or ``chain_pem`` + ``private_key_pem`` + ``trust_anchors_pem`` (the MEF's FQDN certificate's CAs)."""

    psk_identity: str | None = None
    psk: SecretKey | None = field(default=None, repr=False)
    chain_pem: bytes | None = None
    private_key_pem: bytes | None = field(default=None, repr=False)
    trust_anchors_pem: bytes | None = None
    profiles: tuple[CipherProfile, ...] | None = None

    def __post_init__(self) -> None:
        psk = self.psk_identity is not None or self.psk is not None
        cert = self.chain_pem is not None or self.private_key_pem is not None
        if psk == cert:
            raise ConfigurationError("a MEF credential is a PSK identity with its key, or a certificate with its key")
        if psk and (self.psk_identity is None or self.psk is None):
            raise ConfigurationError("give the PSK identity and the key together")
        if cert and (self.chain_pem is None or self.private_key_pem is None or not self.trust_anchors_pem):
            raise ConfigurationError("a certificate MEF credential needs the chain, its key and the MEF's trust "
                                     "anchors")

    def client_config(self, mef_fqdn: str) -> ClientConfig:
        return psk_or_certificate_config(mef_fqdn, psk_identity=self.psk_identity, psk=self.psk,
                                         chain_pem=self.chain_pem, private_key_pem=self.private_key_pem,
                                         trust_anchors_pem=self.trust_anchors_pem, profiles=self.profiles)


def _check_mef_peer(session: SessionInfo, mef_fqdn: str) -> None:
    """§8.3.2.1: the MEF authenticated by the PSK, or by a verified FQDN certificate for ``mef_fqdn`` (§10.1.3)."""
    check_fqdn_peer(session, mef_fqdn, service="MEF", psk_name="PSK")


def _message(method: str, path: str, mef_fqdn: str, body: dict[str, Any] | None) -> http1.Message:
    headers = [("host", mef_fqdn), ("accept", "application/json")]
    data = b""
    if body is not None:
        data = encode_json(body)
        headers.append(("content-type", "application/json"))
    return http1.Message(headers=headers, body=data, method=method, target=API_PREFIX + path)


def _refusal(status: int, body: bytes) -> MEFRefused:
    """The problem name of a refusal (the ``type`` after ``urn:m2msec:mef:``, else ``http-<status>``)."""
    name = f"http-{status}"
    try:
        kind = decode_json(body).get("type")
    except Exception:
        kind = None
    if isinstance(kind, str) and kind.startswith(PROBLEM_TYPE_PREFIX) and len(kind) <= 120:
        suffix = kind.removeprefix(PROBLEM_TYPE_PREFIX)
        if suffix and all(c.isalnum() or c == "-" for c in suffix):
            name = suffix
    return MEFRefused(status, name)


def _broken(what: str) -> MEFRefused:
    return MEFRefused(0, "broken-answer", f"the MEF's answer breaks the contract: {what}")


def _key(text: object) -> SecretKey:
    if not isinstance(text, str):
        raise _broken("credential missing")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise _broken("credential is not base64") from None
    if len(raw) != kdf.KE_LENGTH:
        raise _broken("credential is not 32 bytes")
    return SecretKey(raw)


def _str(obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise _broken(f"{key} missing")
    return value


def _when(obj: dict[str, Any]) -> float:
    try:
        return parse_timestamp(obj.get("lifetime"))
    except MEFError:
        raise
    except Exception:
        raise _broken("lifetime is not an m2m:timestamp") from None


@dataclass(frozen=True)
class Enrolment:
    """What the Enrolee holds after the Enrolment Exchange: KeID, Ke (never in a repr), its EnroleeID, when Ke
    expires (Unix seconds) and the MEF's instructions (targets and their SUIDs, MAF enrolment, remote management)."""

    keid: KeID
    ke: SecretKey = field(repr=False)
    enrolee_id: str
    expires: float
    instructions: tuple[dict[str, Any], ...] = ()

    def credential(self, suid: int, target_id: str) -> SecretKey:
        """TS-0003 §10.3.7: the usage-constrained key for (SUID, Enrolment-Target-ID): Km for a MAF with SUID 21,
        Kpsa for a CSE with SUID 22. Raises IdentifierError for a bad SUID or target ID."""
        return kdf.usage_constrained_key(self.ke, suid, target_id)


async def enrol(mef_address: str, credentials: MEFCredentials, *, mef_fqdn: str, maf_enrolment: bool = False,
                remote_management: bool = False, timeout: float = DEFAULT_MEF_TIMEOUT) -> Enrolment:
    """The Enrolee's side of the MEF Handshake and the Enrolment Exchange (TS-0003 §8.3.2.1) with the MEF at
    ``mef_address`` (``HOST:PORT``) known as ``mef_fqdn``.

    Raises: MEFRefused (refusal, or a KeID that is not ours), TransportError, HandshakeFailed, ConfigurationError."""
    try:
        mef_fqdn = validate_fqdn(mef_fqdn, role="MEF-FQDN")
    except IdentifierError as exc:
        raise ConfigurationError(str(exc)) from None
    host, port = parse_hostport(mef_address)
    if not timeout > 0:
        raise ConfigurationError("the MEF timeout must be positive")
    context = TLSContext.client(credentials.client_config(mef_fqdn))
    channel = await ServiceConnection.open(host, port, context, service="MEF", timeout=timeout,
                                           check_peer=lambda s: _check_mef_peer(s, mef_fqdn),
                                           max_body=MAX_ANSWER_BODY)
    try:
        relative, ke = kdf.split_bootstrap(channel.export(kdf.EXPORTER_BOOTSTRAP_LABEL, kdf.BOOTSTRAP_EXPORT_LENGTH))
        body = {"certificateEnrolment": False, "mafEnrolment": maf_enrolment, "remoteManagement": remote_management}
        try:
            async with asyncio.timeout(timeout):
                resp = await channel.exchange(_message("POST", "/enrolment", mef_fqdn, body))
                if resp.status != 201:
                    raise _refusal(resp.status, resp.body)
                obj = decode_json(resp.body)
                done = await channel.exchange(_message("POST", "/enrolment/done", mef_fqdn, {}))
        except (http1.HTTPError, ConnectionError, TimeoutError) as exc:
            what = "no answer in time" if isinstance(exc, TimeoutError) else "no valid answer"
            raise TransportError(f"{what} from the MEF at {host}:{port}") from None
        if done.status != 204:
            raise _refusal(done.status, done.body)
    finally:
        channel.close()
    try:
        keid = KeID.parse(_str(obj, "keID"))
    except (IdentifierError, ValueError):
        raise _broken("keID is not a KeID") from None
    # the MEF's KeID must be the one our own export gives: else we share no Ke with it (constant time)
    if keid.mef_fqdn != mef_fqdn or not hmac.compare_digest(keid.relative_ke_id, relative):
        raise MEFRefused(0, "keid-mismatch", "the MEF's KeID is not the one this Enrolee exported: no shared Ke")
    instructions = obj.get("instructions", [])
    if not isinstance(instructions, list) or not all(isinstance(i, dict) for i in instructions):
        raise _broken("instructions is not a list of objects")
    return Enrolment(keid, ke, _str(obj, "enroleeID"), _when(obj), tuple(instructions))


@dataclass(frozen=True)
class FetchedCredential:
    """fetchCredentials' answer: the usage-constrained key, the EnroleeID to bind it to, its expiry."""

    credential: SecretKey = field(repr=False)
    enrolee_id: str
    expires: float


class MEFFetcher:
    """An Enrolment Target's client of the MEF at ``mef_address`` (``HOST:PORT``): one kept MEF Handshake (its own
    ``credentials``, D185), requests one after the other, each bounded by ``timeout``; a connection the MEF closed
    is replaced by one new handshake. Use as ``async with`` or call :meth:`close`."""

    def __init__(self, mef_address: str, credentials: MEFCredentials, *, mef_fqdn: str,
                 timeout: float = DEFAULT_MEF_TIMEOUT, clock: Callable[[], float] = time.time) -> None:
        if not timeout > 0:
            raise ConfigurationError("the MEF timeout must be positive")
        try:
            self.mef_fqdn = validate_fqdn(mef_fqdn, role="MEF-FQDN")
        except IdentifierError as exc:
            raise ConfigurationError(str(exc)) from None
        self.host, self.port = parse_hostport(mef_address)
        self.timeout = timeout
        self.clock = clock
        self._kept = KeptConnection(self.host, self.port, TLSContext.client(credentials.client_config(self.mef_fqdn)),
                                    service="MEF", timeout=timeout,
                                    check_peer=lambda s: _check_mef_peer(s, self.mef_fqdn), max_body=MAX_ANSWER_BODY)

    def __repr__(self) -> str:
        return f"<MEFFetcher {self.mef_fqdn} at {self.host}:{self.port}>"

    async def __aenter__(self) -> MEFFetcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._kept.close()

    async def fetch(self, keid: KeID | str, suid: int) -> FetchedCredential:
        """``GET fetchCredentials/<KeID>/<SUID>``. Raises MEFRefused (e.g. 404 ``unknown-keid``, 403
        ``not-the-target``, 403 ``suid-not-allowed``, 410 ``ke-expired``), TransportError, HandshakeFailed."""
        path = f"/fetchCredentials/{urllib.parse.quote(str(keid), safe='@')}/{int(suid)}"
        msg = _message("GET", path, self.mef_fqdn, None)
        resp, _ = await self._kept.request(msg)
        if resp.status != 200:
            raise _refusal(resp.status, resp.body)
        obj = decode_json(resp.body)
        if obj.get("status") is not True:
            raise _broken("status is not true")
        return FetchedCredential(_key(obj.get("credential")), _str(obj, "enroleeID"), _when(obj))
