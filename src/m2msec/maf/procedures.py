"""The MAF procedures of TS-0003 §8.8.2, without sockets: who may do what with which record.

:class:`MAF` takes the requester's identity (:class:`Requester`, established by the MAF Handshake and nothing
else), a validated request body (:mod:`m2msec.maf.wire`) and the record store, and returns the response body or
raises :class:`~m2msec.maf.wire.MAFProblem`. Time and identifiers are injected.
"""

from __future__ import annotations

import contextlib
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from m2msec.errors import Conflict, HandshakeFailed, MEFError, NotFound, TransportError
from m2msec.identifiers import SUID, CredentialID, CredIDType, KeID, KmID
from m2msec.keys.secret import SecretKey
from m2msec.maf import wire
from m2msec.maf.cache import TTLCache
from m2msec.maf.enrolment import (
    ENROLEE_REFUSED_PROBLEM,
    MEF_UNAVAILABLE_PROBLEM,
    KmIDAssigner,
    RemoteKm,
    definitive,
)
from m2msec.maf.wire import MAFProblem, absolute_id, format_timestamp, parse_timestamp
from m2msec.mef.client import FetchedCredential
from m2msec.store import AsyncKeyStore, ClientRegistration, MAFClient, RegisteredKey

__all__ = [
    "DEFAULT_MAX_KEY_LIFETIME",
    "DEFAULT_MAX_REGISTRATION_LIFETIME",
    "EXPORTER_CONNECTION_LABEL",
    "EXPORTER_CONNECTION_LENGTH",
    "KEY_VALUE_LENGTHS",
    "MAF",
    "MAF_KEY_SUIDS",
    "SINGLE_TARGET_SUIDS",
    "MAFPolicy",
    "Requester",
    "canonical_kmid",
    "client_credential_id",
    "split_exported",
]

#: TS-0003 §10.3.1: the M2M Secure Connection Key export label, 48 bytes, no context (D82)
EXPORTER_CONNECTION_LABEL = "EXPORTER-oneM2M-Connection"
EXPORTER_CONNECTION_LENGTH = 48
#: The SUIDs a MAF Key Registration may carry: MAF-distributed symmetric keys (TS-0004 Table 6.3.4.2.39-1, D81)
MAF_KEY_SUIDS = frozenset({SUID.MAF_SYMMETRIC_SAEF, SUID.MAF_SYMMETRIC_ESPRIM, SUID.MAF_SYMMETRIC_ESDATA_ENCRYPTION,
                           SUID.MAF_SYMMETRIC_ESDATA_SIGNATURE})
#: SAEF and ESPrim keys have exactly one target (TS-0003 Table 8.8.1-1); ESData keys one or more
SINGLE_TARGET_SUIDS = frozenset({SUID.MAF_SYMMETRIC_SAEF, SUID.MAF_SYMMETRIC_ESPRIM})
#: Lengths of a client-supplied keyValue, bytes (D81): at least 128 bits, at most a two-key split of 256-bit keys
KEY_VALUE_LENGTHS = range(16, 65)
#: The longest lifetime the MAF grants a key / a Client Registration; longer requests are shortened (D87)
DEFAULT_MAX_KEY_LIFETIME = 24 * 3600.0
DEFAULT_MAX_REGISTRATION_LIFETIME = 30 * 24 * 3600.0


def canonical_kmid(text: str) -> str:
    """The store id of a KmID: its relative part lowercased (KmIDs are case-insensitive, §10.6) and its MAF-FQDN."""
    kmid = KmID.parse(text)
    return f"{kmid.relative.lower()}@{kmid.maf_fqdn}"


def client_credential_id(kmid: str) -> str:
    """The Credential-ID of a PSK MAF client without a configured AE-ID/CSE-ID: type 11 (symmetric key to the
    MAF) and its KmID (TS-0003 §8.2.2.3 "formed from KmID", docs/decisions.md D83)."""
    return str(CredentialID(CredIDType(11), kmid))


def split_exported(exported: SecretKey) -> tuple[bytes, SecretKey]:
    """KcID = the first 16 bytes of the 48-byte export, Kc = the last 32 (TS-0003 §10.3.1; byte order D82)."""
    raw = exported.reveal()
    if len(raw) != EXPORTER_CONNECTION_LENGTH:
        raise ValueError("the connection exporter gives 48 bytes")
    return raw[:16], SecretKey(raw[16:])


@dataclass(frozen=True)
class Requester:
    """Who sent a request, from the MAF Handshake: an absolute AE-ID/CSE-ID or a Credential-ID."""

    identity: str
    #: the canonical KmID of a PSK requester (its client record is re-checked on every request)
    kmid: str | None = None
    #: on a KeID session (docs/maf.md "Enrolees of a MEF"): Km and the EnroleeID the MEF answered (D194)
    fetched: FetchedCredential | None = None
    #: the KeID of that session (Client Registration asks the MEF about it again, D210)
    keid: KeID | None = None


@dataclass(frozen=True)
class MAFPolicy:
    maf_fqdn: str
    #: the service provider of the identities the MAF serves (SP-relative ids are made absolute with it)
    sp_id: str
    #: what Configuration Retrieval tells clients: the administrating FQDN and the MAF's HTTP port
    admin_fqdn: str | None = None
    http_port: int | None = None
    max_key_lifetime: float = DEFAULT_MAX_KEY_LIFETIME
    max_registration_lifetime: float = DEFAULT_MAX_REGISTRATION_LIFETIME


class MAF:
    """The procedures (TS-0003 §8.8.2.3 to §8.8.2.10) over an :class:`~m2msec.store.AsyncKeyStore`."""

    def __init__(self, store: AsyncKeyStore, policy: MAFPolicy, *, clock: Callable[[], float] = time.time,
                 new_reg_id: Callable[[], str] = lambda: secrets.token_hex(8),
                 remote: RemoteKm | None = None) -> None:
        self.store = store
        #: KeID sessions: Km from the MEF (None: this MAF serves no MEF's enrolees)
        self.remote = remote
        self._assigner = KmIDAssigner(store, policy.maf_fqdn, policy.sp_id)
        self.policy = policy
        self.clock = clock
        self._new_reg_id = new_reg_id
        self._clients: TTLCache[str, MAFClient | None] = TTLCache(lambda: self.clock())
        self._registrations: TTLCache[str, ClientRegistration | None] = TTLCache(lambda: self.clock())

    async def client(self, kmid: str) -> MAFClient | None:
        """The client record of ``kmid`` (read at most once per :data:`~m2msec.maf.cache.CACHE_TTL`, D74)."""
        hit, client = self._clients.get(kmid)
        if not hit:
            client = await self.store.get_client(kmid)
            if client is not None:  # KmIDs nobody holds never fill the cache and flush the real clients out
                self._clients.put(kmid, client)
        return client

    def cached_client(self, kmid: str) -> tuple[bool, MAFClient | None]:
        """(True, the client record of ``kmid``) when :meth:`client` would answer without reading the store."""
        return self._clients.get(kmid)

    async def _registration_of(self, identity: str) -> ClientRegistration | None:
        hit, reg = self._registrations.get(identity)
        if not hit:
            reg = await self.store.get_registration(identity)
            self._registrations.put(identity, reg)
        return reg

    async def _put_registration(self, reg: ClientRegistration) -> None:
        self._registrations.drop(reg.owner)
        await self.store.put_registration(reg)
        self._registrations.put(reg.owner, reg)

    # -- helpers
    def _check_maf(self, maf_fqdn: str) -> None:
        if maf_fqdn.lower().rstrip(".") != self.policy.maf_fqdn:
            raise MAFProblem(400, "maf-fqdn-mismatch", "mafFQDN names another MAF")

    def _expiry(self, text: str, longest: float) -> float:
        now = self.clock()
        when = parse_timestamp(text)
        if when <= now:
            raise MAFProblem(400, "bad-expiration-time", "expirationTime is not in the future")
        return min(when, float(int(now + longest)))

    def _targets(self, suid: int, target_ids: Sequence[str] | None) -> tuple[str, ...]:
        targets = tuple(dict.fromkeys(absolute_id(t, self.policy.sp_id, "a targetID") for t in target_ids or ()))
        if suid in SINGLE_TARGET_SUIDS and len(targets) != 1:
            raise MAFProblem(400, "bad-target-ids", f"a key with SUID {suid} has exactly one targetID")
        if not targets:
            raise MAFProblem(400, "bad-target-ids", f"a key with SUID {suid} needs at least one targetID")
        return targets

    async def requester_of_kmid(self, kmid: str) -> Requester:
        """The requester behind a PSK MAF Handshake with ``kmid``; 403 once the client is revoked or expired."""
        client = await self.client(kmid)
        if client is None or client.status != "active" or client.expired(self.clock()):
            raise MAFProblem(403, "client-revoked", "this MAF client's credential is no longer valid")
        identity = absolute_id(client.identity, self.policy.sp_id) if client.identity else client_credential_id(kmid)
        return Requester(identity, kmid)

    async def _registration(self, who: Requester) -> ClientRegistration:
        reg = await self._registration_of(who.identity)
        if reg is None or reg.expired(self.clock()):
            raise MAFProblem(403, "not-registered", "the key procedures need an active MAF Client Registration "
                             "(docs/decisions.md D88)")
        return reg

    async def _own_registration(self, who: Requester, reg_id: str, *, live: bool = True) -> ClientRegistration:
        """The requester's registration ``reg_id`` (404 otherwise); with ``live``, 410 once it has expired."""
        reg = await self._registration_of(who.identity)
        if reg is None or not _same_reg_id(reg.reg_id, reg_id):
            raise MAFProblem(404, "unknown-registration", "no such MAF Client Registration of this client")
        if live and reg.expired(self.clock()):
            raise MAFProblem(410, "registration-expired", "this MAF Client Registration has expired")
        return reg

    # -- §8.8.2.3 to §8.8.2.6 Client Registration
    async def register_client(self, who: Requester,
                              req: wire.ClientRegistrationRequest) -> wire.ClientRegistrationResponse:
        self._check_maf(req.mafFQDN)
        expires = self._expiry(req.expirationTime, self.policy.max_registration_lifetime)
        assigned = None
        if who.fetched is not None:  # a KeID session: the Enrolee gets its KmID (§8.8.2.3, §10.7; D194)
            fresh = await self._recheck(who)
            expires = min(expires, float(int(who.fetched.expires)), float(int(fresh.expires)))
            assigned, replaced = await self._assigner.assign(fresh, who.identity, expires)
            for kmid in replaced:
                self._clients.drop(kmid)
        reg = ClientRegistration(who.identity, self._new_reg_id(), expires, tuple(req.labels or ()), req.adminFQDN)
        await self._put_registration(reg)  # a new registration of the same client replaces the last one
        return wire.ClientRegistrationResponse(mafClientRegID=reg.reg_id, expirationTime=format_timestamp(expires),
                                               mafClientID=who.identity, adminFQDN=req.adminFQDN, labels=req.labels,
                                               assignedSymmKeyID=assigned)

    async def _recheck(self, who: Requester) -> FetchedCredential:
        """D210: the MEF asked again (never the cache) before a KmID is assigned; its refusal is 403
        ``enrolee-refused`` (``enrolee-revoked`` also revokes the KmIDs assigned to the EnroleeID), no answer 503."""
        if self.remote is None or who.keid is None or who.fetched is None:
            raise MAFProblem(403, ENROLEE_REFUSED_PROBLEM, "this MAF serves no MEF's enrolees")
        try:
            fresh = await self.remote.recheck(who.keid)
        except MEFError as exc:
            if not definitive(exc):
                raise MAFProblem(503, MEF_UNAVAILABLE_PROBLEM, "the MEF cannot confirm this KeID now; retry later")\
                    from None
            if exc.problem == "enrolee-revoked":
                for kmid in await self._assigner.revoke(who.identity):
                    self._clients.drop(kmid)
            raise MAFProblem(403, ENROLEE_REFUSED_PROBLEM, "the MEF no longer provisions this KeID") from None
        except (TransportError, HandshakeFailed):
            raise MAFProblem(503, MEF_UNAVAILABLE_PROBLEM, "the MEF cannot confirm this KeID now; retry later")\
                from None
        self._assigner.check(who.fetched, fresh, who.identity)
        return fresh

    async def client_config(self, who: Requester, reg_id: str, maf_fqdn: str) -> wire.ClientConfigResponse:
        self._check_maf(maf_fqdn)
        reg = await self._own_registration(who, reg_id)
        admin = reg.admin_fqdn or self.policy.admin_fqdn or self.policy.maf_fqdn
        return wire.ClientConfigResponse(mafClientCfg=wire.MAFClientCfg(
            mafClientRegCfg=wire.ClientRegCfg(fqdn=self.policy.maf_fqdn, adminFQDN=admin,
                                              expirationTime=format_timestamp(reg.expires),
                                              labels=list(reg.labels) or None, httpPort=self.policy.http_port),
            mafKeyRegCfg=wire.KeyRegCfg(adminFQDN=admin, SUID=int(SUID.MAF_SYMMETRIC_SAEF)),
        ))

    async def update_registration(self, who: Requester, reg_id: str,
                                  req: wire.RegistrationUpdateRequest) -> wire.RegistrationUpdateResponse:
        self._check_maf(req.mafFQDN)
        if req.expirationTime is None and req.labels is None:
            raise MAFProblem(400, "bad-request", "give expirationTime, labels or both")
        reg = await self._own_registration(who, reg_id)
        out = wire.RegistrationUpdateResponse()
        if req.expirationTime is not None:
            reg = replace(reg, expires=self._expiry(req.expirationTime, self.policy.max_registration_lifetime))
            out.expirationTime = format_timestamp(reg.expires)
        if req.labels is not None:
            reg = replace(reg, labels=tuple(req.labels))
            out.labels = req.labels
        await self._put_registration(reg)
        return out

    async def deregister_client(self, who: Requester, reg_id: str, maf_fqdn: str) -> None:
        self._check_maf(maf_fqdn)
        await self._own_registration(who, reg_id, live=False)  # an expired registration may still be removed
        self._registrations.drop(who.identity)
        try:
            await self.store.delete_registration(who.identity)
        except NotFound:
            pass  # a concurrent de-registration: the outcome is the same

    # -- §8.8.2.7 to §8.8.2.10 keys
    async def register_key(self, who: Requester, req: wire.KeyRegistrationRequest,
                           export: Callable[[], SecretKey]) -> wire.KeyRegistrationResponse:
        """Key Registration; ``export`` gives the 48-byte ``EXPORTER-oneM2M-Connection`` output of the MAF
        Handshake carrying this request (called only when the request has no keyValue)."""
        self._check_maf(req.mafFQDN)
        if req.SUID not in MAF_KEY_SUIDS:
            raise MAFProblem(400, "bad-suid", "SUID must be a MAF-distributed symmetric key usage: 32, 33, 34 or 35")
        targets = self._targets(req.SUID, req.targetIDs)
        expires = self._expiry(req.expirationTime, self.policy.max_key_lifetime)
        await self._registration(who)
        if req.keyValue is None:
            kc_id, kc = split_exported(export())
            relative: str | None = kc_id.hex()  # RelativeKeyID = hexBinary(KcID), §10.3.5 (D81)
        else:
            raw = wire.decode_key_value(req.keyValue)
            if len(raw) not in KEY_VALUE_LENGTHS:
                raise MAFProblem(400, "bad-key-value", "keyValue must be 16 to 64 bytes")
            kc, relative = SecretKey(raw), None  # the store draws an unused RelativeKeyID (D71)
        try:
            key = await self.store.register_key(kc, source_id=who.identity, suid=req.SUID, target_ids=targets,
                                                expires=expires, labels=tuple(req.labels or ()),
                                                admin_fqdn=req.adminFQDN, relative_key_id=relative)
        except Conflict:
            raise MAFProblem(409, "key-exists", "this MAF Handshake's exported key is registered already: one "
                             "exported key per handshake, reconnect for another") from None
        await self._not_revoked_since(who, key.relative_key_id)
        return wire.KeyRegistrationResponse(relativeKeyID=key.relative_key_id, expirationTime=format_timestamp(expires),
                                            sourceMAFClientID=who.identity, adminFQDN=req.adminFQDN, SUID=req.SUID,
                                            targetIDs=list(targets), labels=req.labels)

    async def _not_revoked_since(self, who: Requester, relative_key_id: str) -> None:
        """After storing a key of a PSK requester: its client record read again from the store, not the D74 cache.
        ``maf clients revoke`` (another process) marks the client revoked, then deletes its keys; a key stored after
        that deletion by a request that saw the client active is found here and deleted (403 ``client-revoked``)."""
        if who.kmid is None:
            return
        self._clients.drop(who.kmid)
        try:
            await self.requester_of_kmid(who.kmid)
        except MAFProblem:
            with contextlib.suppress(NotFound):
                await self.store.delete_key(relative_key_id)
            raise

    async def _key(self, relative_key_id: str) -> RegisteredKey:
        rkid = relative_key_id.lower()
        key = await self.store.get_key(rkid) if _valid_relative_key_id(rkid) else None
        if key is None:
            raise MAFProblem(404, "unknown-key", "no key with this RelativeKeyID")
        return key

    async def retrieve_key(self, who: Requester, relative_key_id: str) -> wire.KeyRetrievalResponse:
        """Key Retrieval: only a target of the key gets it, and only before it expires (§8.8.2.8)."""
        await self._registration(who)
        key = await self._key(relative_key_id)
        if who.identity not in key.target_ids:
            raise MAFProblem(403, "not-a-target", "the requester is not a target of this key")
        if key.expired(self.clock()):
            raise MAFProblem(410, "key-expired", "this key's lifetime has ended")
        return wire.KeyRetrievalResponse(expirationTime=format_timestamp(key.expires),
                                         sourceMAFClientID=key.source_id, adminFQDN=key.admin_fqdn or "",
                                         SUID=key.suid, keyValue=wire.encode_key_value(key.kc.reveal()),
                                         labels=list(key.labels) or None)

    async def _own_key(self, who: Requester, relative_key_id: str, maf_fqdn: str) -> RegisteredKey:
        self._check_maf(maf_fqdn)
        await self._registration(who)
        key = await self._key(relative_key_id)
        if key.source_id != who.identity:
            raise MAFProblem(403, "not-the-source", "only the client that registered this key may change it")
        return key

    async def update_key(self, who: Requester, relative_key_id: str,
                         req: wire.KeyUpdateRequest) -> wire.KeyUpdateResponse:
        if req.expirationTime is None and req.labels is None and req.targetIDs is None:
            raise MAFProblem(400, "bad-request", "give expirationTime, labels, targetIDs or several")
        key = await self._own_key(who, relative_key_id, req.mafFQDN)
        if key.expired(self.clock()):
            raise MAFProblem(410, "key-expired", "this key's lifetime has ended")
        out = wire.KeyUpdateResponse()
        if req.expirationTime is not None:
            key = replace(key, expires=self._expiry(req.expirationTime, self.policy.max_key_lifetime))
            out.expirationTime = format_timestamp(key.expires)
        if req.labels is not None:
            key = replace(key, labels=tuple(req.labels))
            out.labels = req.labels
        if req.targetIDs is not None:
            key = replace(key, target_ids=self._targets(key.suid, req.targetIDs))
            out.targetIDs = list(key.target_ids)
        try:
            await self.store.update_key(key)
        except NotFound:
            raise MAFProblem(404, "unknown-key", "no key with this RelativeKeyID") from None
        await self._not_revoked_since(who, key.relative_key_id)
        return out

    async def deregister_key(self, who: Requester, relative_key_id: str, maf_fqdn: str) -> None:
        key = await self._own_key(who, relative_key_id, maf_fqdn)
        try:
            await self.store.delete_key(key.relative_key_id)
        except NotFound:
            pass

    # -- administration (``m2msec maf clients``), not reachable over the API
    async def revoke_client(self, kmid: str) -> int:
        """Mark a client revoked and delete the keys it registered; how many keys were deleted."""
        client = await self.store.get_client(kmid)
        if client is None:
            raise NotFound(f"no MAF client {kmid!r}")
        self._clients.drop(kmid)
        await self.store.update_client(replace(client, status="revoked"))
        self._clients.drop(kmid)
        return await self.store.delete_keys_of(self.client_identity(client))

    def client_identity(self, client: MAFClient) -> str:
        return absolute_id(client.identity, self.policy.sp_id) if client.identity else client_credential_id(
            client.kmid)


def _same_reg_id(ours: str, theirs: str) -> bool:
    # compare_digest refuses str with non-ASCII characters (TypeError, a 500): compare the UTF-8 bytes
    return secrets.compare_digest(ours.encode(), theirs.encode(errors="surrogatepass"))


def _valid_relative_key_id(text: str) -> bool:
    """``sec:relKeyID`` syntax (TS-0003 §12.2), bounded: anything else is an unknown key, never a query."""
    return 0 < len(text) <= 64 and all(c.isascii() and (c.isalnum() or c in "._-") for c in text)
