"""The MAF client (TS-0003 §8.8): the MAF Handshake and every procedure of docs/maf.md as a typed method.

:class:`MAFClient` keeps one MAF Handshake (a mutually authenticated TLS connection: TLS-PSK with KmID/Km, or
certificates, the MAF's FQDN certificate checked) and sends HTTP/1.1 JSON requests over it, one after the other;
a connection the MAF closed is replaced by a new handshake at the next request. Every request has a deadline
(``timeout``). Refusals raise :class:`~m2msec.errors.MAFError` (status + problem name).

Key Registration without ``keyValue`` (:meth:`MAFClient.register_key` with ``key=None``) computes Kc from the
client's own export of ``EXPORTER-oneM2M-Connection`` on the connection that carries the request (KcID = first
16 bytes, Kc = last 32) and refuses an answer whose ``relativeKeyID`` is not ``hex(KcID)``; the MAF accepts one
such key per handshake, so a second one runs on a fresh handshake.

Lazy Client Registration: key procedures need an active registration. The client registers once (before the
first key procedure, :data:`DEFAULT_REGISTRATION_LIFETIME`), remembers the registration and its expiry, and
registers again before it expires or when the MAF answers ``not-registered`` / ``registration-expired``.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from m2msec import http1
from m2msec.errors import ConfigurationError, IdentifierError, MAFError
from m2msec.identifiers import KmID, validate_fqdn
from m2msec.keys.secret import SecretKey
from m2msec.maf.client_wire import (
    KC_EXPORT_LENGTH,
    MAF_PREFIX,
    RegisteredKey,
    Registration,
    RetrievedKey,
    check_relative_key_id,
    decode_json,
    encode_json,
    format_timestamp,
    optional_members,
    problem_from,
    registered_key_from,
    registration_from,
    retrieved_key_from,
    split_exported,
)
from m2msec.saef import EXPORTER_CONNECTION_LABEL
from m2msec.service_client import KeptConnection, ServiceConnection, check_fqdn_peer, psk_or_certificate_config
from m2msec.tls.engine import ClientConfig, SessionInfo, TLSContext
from m2msec.tls.profiles import CipherProfile

__all__ = [
    "DEFAULT_MAF_TIMEOUT",
    "DEFAULT_REGISTRATION_LIFETIME",
    "REGISTRATION_RENEW_MARGIN",
    "MAFClient",
    "MAFCredentials",
    "RegisteredKey",
    "Registration",
    "RetrievedKey",
]

log = logging.getLogger("m2msec.maf.client")

#: seconds the lazy Client Registration asks for (the MAF may grant less); docs/decisions.md D90
DEFAULT_REGISTRATION_LIFETIME: Final = 86400.0
#: seconds before its expiry a remembered registration is renewed rather than used (D90)
REGISTRATION_RENEW_MARGIN: Final = 60.0
#: seconds one MAF exchange (handshake, or one request and its answer) may take
DEFAULT_MAF_TIMEOUT: Final = 5.0
#: largest answer body accepted from a MAF (its own requests are capped at 64 KiB)
MAX_ANSWER_BODY = 256 * 1024
#: problems after which the lazy registration registers again and retries once
_REREGISTER = frozenset({"not-registered", "registration-expired"})

T = TypeVar("T")


@dataclass(frozen=True)
class MAFCredentials:
    """Where the MAF is known by (``maf_fqdn``) and how to authenticate to it: ``kmid`` + ``km`` (TLS-PSK), or
    ``chain_pem`` + ``private_key_pem`` + ``trust_anchors_pem`` (the MAF's certificate must be an FQDN
    certificate for ``maf_fqdn``). ``admin_fqdn`` is sent as ``adminFQDN`` (default: ``maf_fqdn``)."""

    maf_fqdn: str
    kmid: str | None = None
    km: SecretKey | None = field(default=None, repr=False)
    chain_pem: bytes | None = None
    private_key_pem: bytes | None = field(default=None, repr=False)
    trust_anchors_pem: bytes | None = None
    admin_fqdn: str | None = None
    profiles: tuple[CipherProfile, ...] | None = None
    #: with ``kmid`` a KeID of this MEF-FQDN and ``km`` = §10.3.7 KDF(Ke, 21, MAF-FQDN): a remotely provisioned
    #: Km; the first Client Registration answers the KmID to use instead (docs/maf.md "Enrolees of a MEF")
    mef_fqdn: str | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "maf_fqdn", validate_fqdn(self.maf_fqdn, role="MAF-FQDN"))
            if self.admin_fqdn is not None:
                validate_fqdn(self.admin_fqdn, role="adminFQDN")
        except IdentifierError as exc:
            raise ConfigurationError(str(exc)) from None
        psk = self.kmid is not None or self.km is not None
        cert = self.chain_pem is not None or self.private_key_pem is not None
        if psk == cert:
            raise ConfigurationError("a MAF credential is a KmID with its Km, or a certificate with its key")
        if psk:
            if self.kmid is None or self.km is None:
                raise ConfigurationError("give the KmID and the Km together")
            try:
                kmid = KmID.parse(self.kmid)
            except IdentifierError as exc:
                raise ConfigurationError(f"KmID: {exc}") from None
            if self.mef_fqdn is not None and kmid.maf_fqdn == self.mef_fqdn.lower().rstrip("."):
                pass  # a KeID (same syntax as a KmID, §10.3.4/§10.3.5): exchanged at Client Registration
            elif kmid.maf_fqdn != self.maf_fqdn:
                raise ConfigurationError(f"the KmID {self.kmid!r} is not of the MAF {self.maf_fqdn!r}")
        elif self.chain_pem is None or self.private_key_pem is None or not self.trust_anchors_pem:
            raise ConfigurationError("a certificate MAF credential needs the chain, its key and the MAF's "
                                     "trust anchors")

    @property
    def admin(self) -> str:
        return self.admin_fqdn or self.maf_fqdn

    @property
    def is_keid(self) -> bool:
        """True while the PSK identity is a KeID of ``mef_fqdn`` (before the MAF assigned a KmID)."""
        return (self.kmid is not None and self.mef_fqdn is not None
                and KmID.parse(self.kmid).maf_fqdn == self.mef_fqdn.lower().rstrip("."))

    def client_config(self) -> ClientConfig:
        return psk_or_certificate_config(self.maf_fqdn, psk_identity=self.kmid, psk=self.km,
                                         chain_pem=self.chain_pem, private_key_pem=self.private_key_pem,
                                         trust_anchors_pem=self.trust_anchors_pem, profiles=self.profiles)


def check_maf_peer(session: SessionInfo, maf_fqdn: str) -> None:
    """TS-0003 §8.8.2.2: the MAF authenticated by the Km (PSK), or by a verified FQDN certificate for its FQDN.

    Raises: HandshakeFailed: anything else."""
    check_fqdn_peer(session, maf_fqdn, service="MAF", psk_name="Km")


def _export_kc(conn: ServiceConnection) -> tuple[bytes, SecretKey]:
    """(KcID, Kc) of ``conn``'s MAF Handshake; the MAF takes one exporter-derived key per handshake."""
    conn.exported_key_used = True
    return split_exported(conn.export(EXPORTER_CONNECTION_LABEL, KC_EXPORT_LENGTH))


class MAFClient:
    """A client of the MAF at ``host:port`` (see the module docstring). Use as ``async with``, or call
    :meth:`close`. ``clock`` (Unix seconds) decides expirations and lifetimes."""

    def __init__(self, host: str, port: int, credentials: MAFCredentials, *, timeout: float = DEFAULT_MAF_TIMEOUT,
                 clock: Callable[[], float] = time.time,
                 registration_lifetime: float = DEFAULT_REGISTRATION_LIFETIME,
                 on_kmid: Callable[[str], None] | None = None) -> None:
        if not timeout > 0:
            raise ConfigurationError("the MAF timeout must be positive")
        self.host, self.port = host, port
        self.credentials = credentials
        self.timeout = timeout
        self.clock = clock
        self.registration_lifetime = registration_lifetime
        self.registration: Registration | None = None
        self._kept = KeptConnection(host, port, TLSContext.client(credentials.client_config()), service="MAF",
                                    timeout=timeout, check_peer=lambda s: check_maf_peer(s, self.maf_fqdn),
                                    max_body=MAX_ANSWER_BODY)
        #: called with the KmID the MAF assigned to a KeID client, for a caller that keeps it with Km
        self.on_kmid = on_kmid

    def __repr__(self) -> str:
        return f"<MAFClient {self.credentials.maf_fqdn} at {self.host}:{self.port}>"

    async def __aenter__(self) -> MAFClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def maf_fqdn(self) -> str:
        return self.credentials.maf_fqdn

    async def close(self) -> None:
        await self._kept.close()

    # -- one request over the kept MAF Handshake
    async def _request(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                       expect: int = 200, exported_key: bool = False
                       ) -> tuple[http1.Message, tuple[bytes, SecretKey] | None]:
        """Send one request; returns the answer (status ``expect``) and, with ``exported_key``, the (KcID, Kc) of
        the connection that carried it. A reused connection the MAF had closed is replaced once."""
        headers = [("host", self.maf_fqdn), ("accept", "application/json")]
        data = b""
        if body is not None:
            data = encode_json(body)
            headers.append(("content-type", "application/json"))
        msg = http1.Message(headers=headers, body=data, method=method, target=MAF_PREFIX + path)
        if exported_key:
            resp, kc = await self._kept.request(msg, fresh=lambda conn: conn.exported_key_used, on_answer=_export_kc)
        else:
            resp, kc = await self._kept.request(msg)
        if resp.status != expect:
            raise problem_from(resp.status, resp.body)
        return resp, kc

    async def _json(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                    expect: int = 200) -> dict[str, Any]:
        resp, _ = await self._request(method, path, body, expect=expect)
        return decode_json(resp.body)

    def _expiry(self, lifetime: float | None, expiration: float | None) -> str:
        if expiration is None:
            if lifetime is None or not lifetime > 0:
                raise ConfigurationError("a lifetime must be positive")
            expiration = self.clock() + lifetime
        return format_timestamp(expiration)

    def _fqdn_query(self) -> str:
        return "?" + urllib.parse.urlencode({"mafFQDN": self.maf_fqdn})

    @staticmethod
    def _segment(value: str) -> str:
        return urllib.parse.quote(value, safe="")

    # -- Client Registration procedures (§8.8.2.3 - §8.8.2.6)
    async def register(self, *, lifetime: float | None = None, expiration: float | None = None,
                       labels: Sequence[str] | None = None) -> Registration:
        """Client Registration; the registration is remembered for the key procedures."""
        body = {"mafFQDN": self.maf_fqdn,
                "expirationTime": self._expiry(lifetime or self.registration_lifetime, expiration),
                "adminFQDN": self.credentials.admin, **optional_members(labels=labels)}
        reg = registration_from(await self._json("POST", "/registrations", body, expect=201))
        self.registration = reg
        if self.credentials.is_keid:
            await self._take_kmid(reg.assigned_symm_key_id)
        return reg

    async def _take_kmid(self, assigned: str | None) -> None:
        """After a Client Registration with (KeID, Km): later MAF Handshakes use (KmID, Km) (§8.8.2.3, D194)."""
        try:
            kmid = KmID.parse(assigned or "")
        except IdentifierError:
            raise MAFError(0, "bad-response", "the MAF assigned no valid KmID (assignedSymmKeyID) to this "
                           "KeID client") from None
        if kmid.maf_fqdn != self.maf_fqdn:
            raise MAFError(0, "bad-response", "the KmID the MAF assigned is not of its MAF-FQDN")
        self.credentials = dataclasses.replace(self.credentials, kmid=str(assigned), mef_fqdn=None)
        self._kept.context = TLSContext.client(self.credentials.client_config())
        await self.close()  # the KeID session ends; the next request runs a MAF Handshake with the KmID
        log.info("the MAF %s assigned a KmID; using it from now on", self.maf_fqdn)
        if self.on_kmid is not None:
            self.on_kmid(str(assigned))

    async def configuration(self, reg_id: str | None = None) -> dict[str, Any]:
        """Client Configuration Retrieval: the ``mafClientCfg`` object."""
        reg_id = reg_id or self._reg_id()
        obj = await self._json("GET", f"/registrations/{self._segment(reg_id)}{self._fqdn_query()}")
        cfg = obj.get("mafClientCfg")
        if not isinstance(cfg, dict):
            raise MAFError(0, "bad-response", "the MAF's answer breaks the contract: no mafClientCfg")
        return cfg

    async def update_registration(self, reg_id: str | None = None, *, lifetime: float | None = None,
                                  expiration: float | None = None,
                                  labels: Sequence[str] | None = None) -> dict[str, Any]:
        """Client Registration Update: the fields as stored."""
        reg_id = reg_id or self._reg_id()
        body: dict[str, Any] = {"mafFQDN": self.maf_fqdn, **optional_members(labels=labels)}
        if lifetime is not None or expiration is not None:
            body["expirationTime"] = self._expiry(lifetime, expiration)
        return await self._json("PATCH", f"/registrations/{self._segment(reg_id)}", body)

    async def deregister(self, reg_id: str | None = None) -> None:
        """Client De-Registration (the remembered registration when ``reg_id`` is None)."""
        reg_id = reg_id or self._reg_id()
        await self._request("DELETE", f"/registrations/{self._segment(reg_id)}{self._fqdn_query()}", expect=204)
        if self.registration is not None and self.registration.reg_id == reg_id:
            self.registration = None

    def _reg_id(self) -> str:
        if self.registration is None:
            raise ConfigurationError("no Client Registration to act on")
        return self.registration.reg_id

    async def ensure_registered(self) -> Registration:
        """The remembered registration, or a new one when there is none or it is about to expire."""
        reg = self.registration
        if reg is None or reg.expiration - REGISTRATION_RENEW_MARGIN <= self.clock():
            reg = await self.register()
        return reg

    async def _registered(self, call: Callable[[], Awaitable[T]]) -> T:
        await self.ensure_registered()
        try:
            return await call()
        except MAFError as exc:
            if exc.problem not in _REREGISTER:
                raise
        log.info("the MAF %s asks for a new Client Registration", self.maf_fqdn)
        await self.register()
        return await call()

    # -- key procedures (§8.8.2.7 - §8.8.2.10)
    async def register_key(self, *, suid: int, target_ids: Sequence[str] | None, lifetime: float | None = None,
                           expiration: float | None = None, key: SecretKey | None = None,
                           labels: Sequence[str] | None = None) -> RegisteredKey:
        """Key Registration. Without ``key``, Kc comes from this client's MAF Handshake (returned in ``kc``)."""
        if key is not None and not 16 <= len(key) <= 64:
            raise ConfigurationError("a registered key value is 16 to 64 bytes")

        async def call() -> RegisteredKey:
            body: dict[str, Any] = {
                "mafFQDN": self.maf_fqdn, "expirationTime": self._expiry(lifetime, expiration),
                "adminFQDN": self.credentials.admin, "SUID": suid,
                **optional_members(labels=labels, targetIDs=target_ids)}
            if key is not None:
                body["keyValue"] = base64.b64encode(key.reveal()).decode("ascii")
            resp, exported = await self._request("POST", "/keys", body, expect=201, exported_key=key is None)
            obj = decode_json(resp.body)
            if exported is None:
                return registered_key_from(obj)
            kc_id, kc = exported
            granted = registered_key_from(obj, kc)
            if granted.relative_key_id != kc_id.hex():
                raise MAFError(0, "bad-response", "the MAF's relativeKeyID is not hex(KcID) of our MAF Handshake")
            return granted

        return await self._registered(call)

    async def retrieve_key(self, relative_key_id: str) -> RetrievedKey:
        """Key Retrieval (the caller checks the SUID its use expects)."""
        rel = check_relative_key_id(relative_key_id)
        return retrieved_key_from(rel, await self._registered(lambda: self._json("GET", f"/keys/{rel}")))

    async def update_key(self, relative_key_id: str, *, lifetime: float | None = None,
                         expiration: float | None = None, labels: Sequence[str] | None = None,
                         target_ids: Sequence[str] | None = None) -> dict[str, Any]:
        """Key Registration Update: the fields changed."""
        rel = check_relative_key_id(relative_key_id)
        body: dict[str, Any] = {"mafFQDN": self.maf_fqdn, **optional_members(labels=labels, targetIDs=target_ids)}
        if lifetime is not None or expiration is not None:
            body["expirationTime"] = self._expiry(lifetime, expiration)
        return await self._registered(lambda: self._json("PATCH", f"/keys/{rel}", body))

    async def deregister_key(self, relative_key_id: str) -> None:
        """Key De-Registration."""
        rel = check_relative_key_id(relative_key_id)

        async def call() -> None:
            await self._request("DELETE", f"/keys/{rel}{self._fqdn_query()}", expect=204)

        await self._registered(call)
