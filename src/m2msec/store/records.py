"""The records the stores hold: MAF clients and registered keys, and the services' JSON documents (CAPIF).

Each record is one row of the generic sealed-record table: ``kind`` + ``id`` (the primary key), an optional
expiry time (indexed, for :meth:`~m2msec.store.base.KeyStore.purge_expired`), the non-secret fields as JSON,
and the key sealed with AES-256-GCM. The associated data (:func:`record_aad`) covers the kind, the id, the
expiry and the JSON, so nobody without the master key can move a key to another record or change who may
retrieve it, its SUID or its lifetime. Reprs never show a key (:class:`~m2msec.keys.secret.SecretKey`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from m2msec.errors import StorageError
from m2msec.keys.sealing import aad_field
from m2msec.keys.secret import SecretKey

__all__ = [
    "DOCUMENT_KINDS",
    "KIND_MAF_CLIENT",
    "KIND_MAF_KEY",
    "KIND_MAF_REGISTRATION",
    "RECORD_FORMAT",
    "ClientRegistration",
    "Document",
    "MAFClient",
    "RegisteredKey",
    "record_aad",
]

KIND_MAF_CLIENT = "maf-client"
KIND_MAF_KEY = "maf-key"
KIND_MAF_REGISTRATION = "maf-registration"
#: The kinds of :class:`Document` records (the CCF's, issue 18; the MEF's, issue 20): none of them is a MAF kind
DOCUMENT_KINDS = frozenset({"capif-invoker", "capif-provider", "capif-service", "capif-security", "capif-credential",
                            "capif-outbox",
                            "capif-subscription", "capif-aefpsk", "capif-ca", "capif-revoked",
                            "mef-enrolee", "mef-target", "mef-ke"})
#: Format of the sealed record rows (the prefix of :func:`record_aad`)
RECORD_FORMAT = 1


def record_aad(kind: str, record_id: str, expires: float | None, meta: str) -> bytes:
    """Associated data of a sealed record: every column but the nonce and the sealed key itself."""
    when = None if expires is None else float(expires).hex()
    return (f"m2msec-record-v{RECORD_FORMAT}\0".encode() + aad_field(kind) + aad_field(record_id)
            + aad_field(when) + aad_field(meta))


def _dump(fields: dict[str, Any]) -> str:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def _load(meta: str, kind: str, record_id: str) -> dict[str, Any]:
    try:
        fields = json.loads(meta)
    except (ValueError, RecursionError):  # RecursionError: a deeply nested document (json raises no ValueError)
        raise StorageError(f"{kind} record {record_id!r} is damaged") from None
    if not isinstance(fields, dict):
        raise StorageError(f"{kind} record {record_id!r} is damaged")
    return fields


@dataclass(frozen=True)
class MAFClient:
    """A MAF client: KmID → Km, the client's identity and its registration (TS-0003 §8.8.2.3)."""

    kmid: str
    km: SecretKey
    identity: str
    expires: float | None = None
    labels: tuple[str, ...] = ()
    admin_fqdn: str | None = None
    status: str = "active"
    reg_id: str | None = None

    kind = KIND_MAF_CLIENT

    @property
    def record_id(self) -> str:
        return self.kmid

    def meta(self) -> str:
        return _dump({"identity": self.identity, "labels": list(self.labels), "adminFQDN": self.admin_fqdn,
                      "status": self.status, "regID": self.reg_id})

    @classmethod
    def from_row(cls, record_id: str, key: SecretKey | None, expires: float | None, meta: str) -> MAFClient:
        f = _load(meta, KIND_MAF_CLIENT, record_id)
        if key is None:
            raise StorageError(f"{KIND_MAF_CLIENT} record {record_id!r} is damaged")
        return cls(record_id, key, str(f["identity"]), expires, tuple(f["labels"]), f["adminFQDN"], str(f["status"]),
                   f["regID"])

    def expired(self, now: float) -> bool:
        return self.expires is not None and self.expires <= now


@dataclass(frozen=True)
class RegisteredKey:
    """A key registered at the MAF (TS-0003 §8.8.2.7): RelativeKeyID → Kc and who may retrieve it."""

    relative_key_id: str
    kc: SecretKey
    source_id: str
    suid: int
    target_ids: tuple[str, ...]
    expires: float
    labels: tuple[str, ...] = ()
    admin_fqdn: str | None = None

    kind = KIND_MAF_KEY

    @property
    def record_id(self) -> str:
        return self.relative_key_id

    def meta(self) -> str:
        return _dump({"source": self.source_id, "SUID": self.suid, "targetIDs": list(self.target_ids),
                      "labels": list(self.labels), "adminFQDN": self.admin_fqdn})

    @classmethod
    def from_row(cls, record_id: str, key: SecretKey | None, expires: float | None, meta: str) -> RegisteredKey:
        f = _load(meta, KIND_MAF_KEY, record_id)
        if expires is None or key is None:
            raise StorageError(f"{KIND_MAF_KEY} record {record_id!r} is damaged")
        return cls(record_id, key, str(f["source"]), int(f["SUID"]), tuple(f["targetIDs"]), expires,
                   tuple(f["labels"]), f["adminFQDN"])

    def expired(self, now: float) -> bool:
        return self.expires <= now


@dataclass(frozen=True)
class ClientRegistration:
    """A MAF Client Registration (TS-0003 §8.8.2.3): one per client identity, holding no key."""

    owner: str
    reg_id: str
    expires: float
    labels: tuple[str, ...] = ()
    admin_fqdn: str | None = None

    kind = KIND_MAF_REGISTRATION

    @property
    def record_id(self) -> str:
        return self.owner

    def meta(self) -> str:
        return _dump({"regID": self.reg_id, "labels": list(self.labels), "adminFQDN": self.admin_fqdn})

    @classmethod
    def from_row(cls, record_id: str, key: SecretKey | None, expires: float | None, meta: str) -> ClientRegistration:
        f = _load(meta, KIND_MAF_REGISTRATION, record_id)
        if expires is None or key is not None:
            raise StorageError(f"{KIND_MAF_REGISTRATION} record {record_id!r} is damaged")
        return cls(record_id, str(f["regID"]), expires, tuple(f["labels"]), f["adminFQDN"])

    def expired(self, now: float) -> bool:
        return self.expires <= now


@dataclass(frozen=True)
class Document:
    """A service's JSON object (a CAPIF invoker, provider, published API, security context...) under ``kind`` and
    ``record_id``, with at most one sealed key (an AEFPSK, the CA's private key in DER) and an optional expiry. The
    object and the key are bound together by the record's associated data: changing either without the master key
    makes the record fail its integrity check."""

    kind: str
    record_id: str
    body: dict[str, Any]
    key: SecretKey | None = None
    expires: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in DOCUMENT_KINDS:
            raise StorageError(f"unknown document kind {self.kind!r}")
        if not isinstance(self.body, dict):
            raise StorageError(f"a {self.kind} document must be a JSON object")

    def meta(self) -> str:
        return _dump(self.body)

    @classmethod
    def from_row(cls, kind: str, record_id: str, key: SecretKey | None, expires: float | None,
                 meta: str) -> Document:
        return cls(kind, record_id, _load(meta, kind, record_id), key, expires)
