"""The MEF's procedures (TS-0003 §8.3.2.1): the Enrolment Exchange, fetchCredentials, and provisioning.

Records (store Documents, docs/store.md):

- ``mef-enrolee`` (id: the KpmID, or the identity an enrolee certificate gives): key Kpm (PSK enrolees), body
  ``{enroleeID, credential, targets: [{id, suids}], lifetime, status}``; §9.2's Enrolment Target Identities and
  Enrolment Expiry.
- ``mef-target`` (id: the Enrolment-Target-ID, an FQDN; also the PSK identity a PSK target uses): key its PSK (PSK
  targets), body ``{kind, credential}``: how a target authenticates to the MEF (D185: no Ker).
- ``mef-ke`` (id: hex RelativeKeID): key Ke, expiry the Ke's, body ``{enrolee, enroleeID}``.

Every time comes from the injected ``clock``. Refusals are :class:`~m2msec.mef.wire.MEFProblem` (docs/mef.md).
"""

from __future__ import annotations

import base64
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Final, Literal

from m2msec.errors import Conflict, IdentifierError, NotFound
from m2msec.identifiers import SUID, KeID
from m2msec.keys.secret import SecretKey
from m2msec.mef import kdf
from m2msec.mef.wire import EnrolmentRequest, EnrolmentResponse, FetchResponse, Instruction, MEFProblem
from m2msec.store import AsyncKeyStore, KeyStore
from m2msec.store.records import Document

__all__ = [
    "DEFAULT_ENROLMENT_LIFETIME",
    "KIND_ENROLEE",
    "KIND_KE",
    "KIND_TARGET",
    "MEF",
    "TARGET_KIND_SUIDS",
    "Enrolee",
    "EnrolmentTarget",
    "FetchedKey",
    "Target",
    "add_enrolee",
    "add_target",
    "enrolees",
    "revoke_enrolee",
    "revoke_target",
    "targets",
]

log = logging.getLogger("m2msec.mef")

KIND_ENROLEE: Final = "mef-enrolee"
KIND_TARGET: Final = "mef-target"
KIND_KE: Final = "mef-ke"
#: D191: an enrolee's Enrolment Expiry (§9.2) when provisioning gives none: Ke lives this long, seconds
DEFAULT_ENROLMENT_LIFETIME: Final = 86400.0
#: D192: which SUIDs a target of each kind may fetch (§8.3.2.1 "authorise"): Km for a MAF (21, seed 004 §8.x.2),
#: Kpsa for a CSE/AE (22, §8.2.2.1); 23-25 have no consumer yet and are refused
TARGET_KIND_SUIDS: Final[dict[str, frozenset[int]]] = {"maf": frozenset({21}), "cse": frozenset({22}),
                                                        "ae": frozenset({22})}
_SUID_TEXT = re.compile(r"[0-9]{1,3}")
Credential = Literal["psk", "certificate"]


@dataclass(frozen=True)
class EnrolmentTarget:
    target_id: str
    suids: tuple[int, ...]


@dataclass(frozen=True)
class Enrolee:
    record_id: str
    enrolee_id: str
    credential: Credential
    targets: tuple[EnrolmentTarget, ...]
    lifetime: float
    status: str = "active"
    kpm: SecretKey | None = field(default=None, repr=False)

    @classmethod
    def from_document(cls, doc: Document) -> Enrolee:
        b = doc.body
        targets = tuple(EnrolmentTarget(t["id"], tuple(t["suids"])) for t in b["targets"])
        return cls(doc.record_id, b["enroleeID"], b["credential"], targets, float(b["lifetime"]), b["status"],
                   doc.key)

    def document(self) -> Document:
        body = {"enroleeID": self.enrolee_id, "credential": self.credential, "lifetime": self.lifetime,
                "status": self.status, "targets": [{"id": t.target_id, "suids": list(t.suids)} for t in self.targets]}
        return Document(KIND_ENROLEE, self.record_id, body, self.kpm)


@dataclass(frozen=True)
class Target:
    target_id: str
    kind: str
    credential: Credential
    psk: SecretKey | None = field(default=None, repr=False)

    @classmethod
    def from_document(cls, doc: Document) -> Target:
        return cls(doc.record_id, doc.body["kind"], doc.body["credential"], doc.key)

    def document(self) -> Document:
        return Document(KIND_TARGET, self.target_id, {"kind": self.kind, "credential": self.credential}, self.psk)


@dataclass(frozen=True)
class FetchedKey:
    credential: SecretKey = field(repr=False)
    enrolee_id: str
    expires: float


def _check_targets(targets: Iterable[EnrolmentTarget]) -> tuple[EnrolmentTarget, ...]:
    out = []
    for t in targets:
        target_id = kdf.normalize_target_id(t.target_id)
        allowed = set().union(*TARGET_KIND_SUIDS.values())
        bad = [s for s in t.suids if s not in allowed]
        if not t.suids or bad:
            raise IdentifierError(f"target {target_id}: SUIDs must be among {sorted(allowed)}")
        out.append(EnrolmentTarget(target_id, tuple(sorted(set(t.suids)))))
    return tuple(out)


# -- provisioning (the CLI and tests; synchronous, on the store)
def add_enrolee(store: KeyStore, record_id: str, *, enrolee_id: str, targets: Iterable[EnrolmentTarget],
                kpm: SecretKey | None, lifetime: float = DEFAULT_ENROLMENT_LIFETIME) -> Enrolee:
    """Provision an enrolee: PSK (``kpm``, ``record_id`` = KpmID) or certificate (``kpm`` None, ``record_id`` = its
    certificate identity). Raises IdentifierError (bad target/SUID), Conflict (the id is taken, by an enrolee or a
    target: the MEF Handshake could not tell them apart)."""
    if not lifetime > 0:
        raise IdentifierError("an Enrolment Expiry must be a positive number of seconds")
    if store.get_document(KIND_TARGET, identity_key(record_id)) is not None:
        raise Conflict(f"{record_id!r} is an Enrolment Target's identity")
    enrolee = Enrolee(record_id, enrolee_id, "psk" if kpm is not None else "certificate", _check_targets(targets),
                      lifetime, kpm=kpm)
    store.put_document(enrolee.document())
    return enrolee


def add_target(store: KeyStore, target_id: str, kind: str, psk: SecretKey | None) -> Target:
    """Provision an Enrolment Target's credential to the MEF (PSK identity = its target ID, or an FQDN certificate
    for it). Raises IdentifierError, Conflict."""
    if kind not in TARGET_KIND_SUIDS:
        raise IdentifierError(f"a target kind is one of {', '.join(TARGET_KIND_SUIDS)}")
    target = Target(kdf.normalize_target_id(target_id), kind, "psk" if psk is not None else "certificate", psk)
    if any(identity_key(d.record_id) == target.target_id for d in store.documents(KIND_ENROLEE)):
        raise Conflict(f"{target.target_id!r} is an enrolee's identity")
    store.put_document(target.document())
    return target


def enrolees(store: KeyStore) -> list[Enrolee]:
    return [Enrolee.from_document(d) for d in store.documents(KIND_ENROLEE)]


def targets(store: KeyStore) -> list[Target]:
    return [Target.from_document(d) for d in store.documents(KIND_TARGET)]


def revoke_enrolee(store: KeyStore, record_id: str) -> None:
    """Mark an enrolee revoked: its MEF Handshakes fail and every KeID it obtained is refused (``enrolee-revoked``)
    until purged at its expiry. Raises NotFound."""
    doc = store.get_document(KIND_ENROLEE, record_id)
    if doc is None:
        raise NotFound(f"no enrolee {record_id!r}")
    revoked = Document(doc.kind, doc.record_id, {**doc.body, "status": "revoked"}, doc.key, doc.expires)
    store.put_document(revoked, expect=doc)


def revoke_target(store: KeyStore, target_id: str) -> None:
    """Delete a target's credential: it can no longer authenticate to the MEF. Raises NotFound."""
    store.delete_document(KIND_TARGET, kdf.normalize_target_id(target_id))


def identity_key(identity: str) -> str:
    """D198: the form in which an enrolee's and a target's identities must differ: an FQDN as it enters §10.3.7
    (:func:`~m2msec.mef.kdf.normalize_target_id`), anything else as it is."""
    try:
        return kdf.normalize_target_id(identity)
    except IdentifierError:
        return identity


def parse_suid(text: str) -> int:
    """A fetchCredentials SUID path segment; 400 ``bad-suid`` unless an m2m:suid of TS-0004."""
    if not _SUID_TEXT.fullmatch(text):
        raise MEFProblem("bad-suid", "the SUID is not an m2m:suid (a decimal integer of TS-0004)")
    try:
        return int(SUID(int(text)))
    except ValueError:
        raise MEFProblem("bad-suid", "the SUID is not defined by TS-0004 Table 6.3.4.2.39-1") from None


class MEF:
    """The MEF's procedures over an :class:`AsyncKeyStore`."""

    def __init__(self, store: AsyncKeyStore, mef_fqdn: str, *, max_credential_lifetime: float = 86400.0,
                 remote_management_uri: str = "", clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.mef_fqdn = mef_fqdn
        self.max_credential_lifetime = max_credential_lifetime
        self.remote_management_uri = remote_management_uri
        self.clock = clock

    def __repr__(self) -> str:
        return f"<MEF {self.mef_fqdn}>"

    async def enrolee(self, record_id: str) -> Enrolee | None:
        doc = await self.store.get_document(KIND_ENROLEE, record_id)
        return None if doc is None else Enrolee.from_document(doc)

    async def target(self, target_id: str) -> Target | None:
        doc = await self.store.get_document(KIND_TARGET, target_id)
        return None if doc is None else Target.from_document(doc)

    # -- the Enrolment Exchange (§8.3.2.1 steps 1-5)
    async def enrol(self, identity: str, credential: Credential, request: EnrolmentRequest,
                    export: Callable[[], SecretKey]) -> EnrolmentResponse:
        enrolee = await self.enrolee(identity)
        if enrolee is None or enrolee.credential != credential:
            raise MEFProblem("not-an-enrolee", "this MEF Handshake credential is not an enrolee's")
        if enrolee.status != "active":
            raise MEFProblem("enrolee-revoked", "this enrolee is revoked")
        relative, ke = kdf.split_bootstrap(export())
        keid = kdf.key_id(relative, self.mef_fqdn)
        expires = self.clock() + enrolee.lifetime
        doc = Document(KIND_KE, relative.hex(), {"enrolee": enrolee.record_id, "enroleeID": enrolee.enrolee_id},
                       ke, expires)
        try:
            await self.store.put_document(doc)
        except Conflict:  # a second Enrolment Exchange on the same MEF Handshake: the same Ke, its FIRST expiry
            first = await self.store.get_document(KIND_KE, relative.hex())
            if first is None or first.expires is None or first.body.get("enrolee") != enrolee.record_id:
                raise MEFProblem("storage-unavailable", "the Enrolment Key could not be stored") from None
            expires = first.expires
        log.info("enrolee %s (%s) enrolled: KeID %s", enrolee.record_id, enrolee.enrolee_id, keid)
        return EnrolmentResponse(keID=str(keid), lifetime=_timestamp(expires), enroleeID=enrolee.enrolee_id,
                                 instructions=self._instructions(enrolee, request))

    def _instructions(self, enrolee: Enrolee, request: EnrolmentRequest) -> list[Instruction]:
        out = [Instruction(instructionType="enrolmentTarget", targetID=t.target_id, suids=list(t.suids))
               for t in enrolee.targets]
        if request.mafEnrolment:
            out += [Instruction(instructionType="mafEnrolment", credentialType="symmetric", mafFQDN=t.target_id)
                    for t in enrolee.targets if int(SUID.RSPF_SYMMETRIC_MAF) in t.suids]
        if request.remoteManagement and self.remote_management_uri:
            out.append(Instruction(instructionType="remoteManagement", uri=self.remote_management_uri))
        return out

    # -- fetchCredentials (§8.3.2.1 "Use of Remotely Provisioned Credential")
    async def fetch(self, identity: str, credential: Credential, keid_text: str, suid_text: str) -> FetchedKey:
        suid = parse_suid(suid_text)
        try:
            keid = KeID.parse(keid_text)
        except (IdentifierError, ValueError):
            raise MEFProblem("unknown-keid", "no Enrolment Key has this KeID") from None
        target = await self.target(identity)
        if target is None or target.credential != credential:
            raise MEFProblem("not-the-target", "the requester is not an Enrolment Target")
        ke_doc = await self.store.get_document(KIND_KE, keid.relative_ke_id.hex()) \
            if keid.mef_fqdn == self.mef_fqdn else None
        if ke_doc is None or ke_doc.key is None or ke_doc.expires is None:
            raise self._refused(keid, target, MEFProblem("unknown-keid", "no Enrolment Key has this KeID"))
        # the target must be one of the KeID's before it learns anything of the KeID's state (expiry, revocation)
        enrolee = await self.enrolee(str(ke_doc.body.get("enrolee")))
        entry = None if enrolee is None else next((t for t in enrolee.targets if t.target_id == target.target_id),
                                                  None)
        if enrolee is None or entry is None:
            raise self._refused(keid, target, MEFProblem("not-the-target",
                                                         "the requester is not an Enrolment Target of this KeID"))
        now = self.clock()
        if ke_doc.expires <= now:
            raise self._refused(keid, target, MEFProblem("ke-expired", "the Enrolment Key has expired"))
        if enrolee.status != "active":
            raise self._refused(keid, target, MEFProblem("enrolee-revoked", "the KeID's enrolee is revoked"))
        if suid not in entry.suids or suid not in TARGET_KIND_SUIDS[target.kind]:
            raise self._refused(keid, target, MEFProblem("suid-not-allowed",
                                                         f"SUID {suid} is not allowed for this target"))
        key = kdf.usage_constrained_key(ke_doc.key, suid, target.target_id)
        expires = min(ke_doc.expires, now + self.max_credential_lifetime)
        log.info("fetchCredentials: KeID %s SUID %d for target %s", keid, suid, target.target_id)
        return FetchedKey(key, enrolee.enrolee_id, expires)

    @staticmethod
    def _refused(keid: KeID, target: Target, problem: MEFProblem) -> MEFProblem:
        log.warning("fetchCredentials refused: KeID %s, target %s: %s", keid, target.target_id, problem.name)
        return problem

    def fetch_response(self, fetched: FetchedKey) -> FetchResponse:
        return FetchResponse(status=True, credential=base64.b64encode(fetched.credential.reveal()).decode("ascii"),
                             enroleeID=fetched.enrolee_id, lifetime=_timestamp(fetched.expires))


def _timestamp(when: float) -> str:
    from m2msec.maf.wire import format_timestamp

    return format_timestamp(when)
