"""The key-store interface: one sealed-record table, typed accessors for MAF records.

A :class:`KeyStore` keeps records (:mod:`m2msec.store.records`) in one table ``sealed_record`` (kind, id,
expires, meta, nonce, sealed) plus ``store_meta`` (the master-key check value). Backends
(:mod:`m2msec.store.sqlite`, :mod:`m2msec.store.postgres`) only supply :meth:`KeyStore._run`, which runs one
statement in its own transaction (written with ``?`` placeholders) and maps the database's errors onto
:class:`~m2msec.errors.StorageError` / :class:`~m2msec.errors.Conflict`; every rule lives here, once, so both
backends keep the same contract (tests/store/test_contract.py).

Keys are sealed with :mod:`m2msec.keys.sealing` (AES-256-GCM under the 32-byte master key, the scheme of
``m2msec keys``). A record that fails its integrity check is an error, never a key: :class:`StorageError`, and
an ERROR log line naming the kind and id only. Whether a record has expired is the caller's decision to act on
(:meth:`MAFClient.expired`, :meth:`RegisteredKey.expired`); :meth:`KeyStore.purge_expired` removes them.

Methods are synchronous and thread-safe (one lock per store); :class:`m2msec.store.aio.AsyncKeyStore` runs
them off the event loop.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from m2msec.errors import ConfigurationError, Conflict, IdentifierError, NotFound, StorageError
from m2msec.keys.sealing import AEAD, open_check, open_sealed, seal, seal_check
from m2msec.keys.secret import SecretKey
from m2msec.store.records import (
    KIND_MAF_CLIENT,
    KIND_MAF_KEY,
    KIND_MAF_REGISTRATION,
    ClientRegistration,
    Document,
    MAFClient,
    RegisteredKey,
    record_aad,
)

__all__ = ["ALLOCATION_ATTEMPTS", "RELATIVE_KEY_ID_BYTES", "KeyStore", "Row", "random_relative_key_id"]

log = logging.getLogger("m2msec.store")

#: Length of a RelativeKeyID the store allocates (hex of this many random bytes, the size of a KcID,
#: TS-0003 §10.3.5): 128 bits, so concurrent MAF instances practically never draw the same one; the
#: database's primary key settles it when they do (docs/decisions.md D71).
RELATIVE_KEY_ID_BYTES = 16
#: How many ids :meth:`KeyStore.register_key` draws before giving up with :class:`Conflict` (D71).
ALLOCATION_ATTEMPTS = 8
_CHECK_PLAINTEXT = b"m2msec record store check v1"

Row = tuple[Any, ...]
_R = TypeVar("_R", MAFClient, RegisteredKey, ClientRegistration)


def random_relative_key_id() -> str:
    return secrets.token_hex(RELATIVE_KEY_ID_BYTES)


def _storable(record_id: str) -> bool:
    """Whether every backend can hold ``record_id`` as TEXT: UTF-8 (no lone surrogate, which JSON's ``\\ud800``
    decodes to) and no NUL (PostgreSQL refuses it, SQLite would keep an id no other backend could)."""
    if "\0" in record_id:
        return False
    try:
        record_id.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class KeyStore(ABC):
    """Sealed records in a SQL database. Subclasses open the connection, create the schema, then call
    :meth:`_open_check`."""

    #: short backend name ("sqlite", "postgresql")
    backend = ""

    def __init__(self, master_key: SecretKey, *, clock: Callable[[], float] = time.time,
                 new_id: Callable[[], str] = random_relative_key_id,
                 cipher: Callable[[bytes], AEAD] = AESGCM) -> None:
        if len(master_key) != 32:
            raise ConfigurationError("the master key must be 32 bytes")
        self._aead = cipher(master_key.reveal())
        self._clock = clock
        self._new_id = new_id
        self._lock = threading.Lock()

    # -- backend
    @abstractmethod
    def _run(self, sql: str, params: Sequence[object] = ()) -> tuple[list[Row], int]:
        """Run one statement in its own transaction; its rows (if any) and rowcount. A unique-key violation
        raises :class:`Conflict`, any other database error :class:`StorageError` (no parameter values)."""

    @abstractmethod
    def close(self) -> None: ...

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the store is, for messages (a path, a URL without its password)."""

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.location}>"

    def _exec(self, sql: str, params: Sequence[object] = ()) -> tuple[list[Row], int]:
        with self._lock:
            return self._run(sql, params)

    def _open_check(self) -> None:
        """Store the check value of a new store, or check the master key against it (StorageError). Records
        without a check value (only the record table copied to a new database, or the value deleted) get one only
        if the master key opens one of them: a check value made blindly would bless a wrong master key."""
        rows, _ = self._exec("SELECT value FROM store_meta WHERE name = 'check'")
        if not rows:
            sample, _ = self._exec("SELECT kind, id, expires, meta, nonce, sealed FROM sealed_record LIMIT 1")
            if sample:
                kind, record_id, expires, meta, nonce, sealed = sample[0]
                aad = record_aad(kind, record_id, None if expires is None else float(expires), meta)
                if open_sealed(self._aead, bytes(nonce), bytes(sealed), aad) is None:
                    raise StorageError(f"{self.location}: the master key does not match this key store (it has "
                                       f"no check value, and the key opens none of its records)")
            self._exec("INSERT INTO store_meta (name, value) VALUES ('check', ?) ON CONFLICT (name) DO NOTHING",
                       (seal_check(self._aead, _CHECK_PLAINTEXT),))
            rows, _ = self._exec("SELECT value FROM store_meta WHERE name = 'check'")
        plain = open_check(self._aead, bytes(rows[0][0])) if rows else None
        if plain is None:
            raise StorageError(f"{self.location}: the master key does not match this key store")
        if plain != _CHECK_PLAINTEXT:
            raise StorageError(f"{self.location}: key store written by a newer m2msec (unknown format)")

    # -- generic sealed records
    def _sealed_row(self, kind: str, record_id: str, expires: float | None, meta: str,
                    key: SecretKey | None) -> tuple[bytes, bytes]:
        if expires is not None and math.isnan(expires):  # SQLite would store NULL, PostgreSQL a never-expiring NaN
            raise StorageError(f"{kind} record {record_id!r}: its expiry time is not a number")
        plain = key.reveal() if key is not None else b""
        return seal(self._aead, plain, record_aad(kind, record_id, expires, meta))

    def _insert(self, kind: str, record_id: str, expires: float | None, meta: str, key: SecretKey | None) -> None:
        if not _storable(record_id):
            raise IdentifierError(f"{kind} id {record_id!r} is not valid UTF-8 text without NUL")
        nonce, sealed = self._sealed_row(kind, record_id, expires, meta, key)
        self._exec("INSERT INTO sealed_record (kind, id, expires, meta, nonce, sealed) VALUES (?, ?, ?, ?, ?, ?)",
                   (kind, record_id, expires, meta, nonce, sealed))

    def _replace(self, kind: str, record_id: str, expires: float | None, meta: str, key: SecretKey | None,
                 expect_meta: str | None = None) -> None:
        if not _storable(record_id):
            raise NotFound(f"no {kind} record {record_id!r}")
        nonce, sealed = self._sealed_row(kind, record_id, expires, meta, key)
        if expect_meta is None:
            _, count = self._exec("UPDATE sealed_record SET expires = ?, meta = ?, nonce = ?, sealed = ? "
                                  "WHERE kind = ? AND id = ?", (expires, meta, nonce, sealed, kind, record_id))
        else:  # compare-and-swap: only over the version the caller read
            _, count = self._exec("UPDATE sealed_record SET expires = ?, meta = ?, nonce = ?, sealed = ? "
                                  "WHERE kind = ? AND id = ? AND meta = ?",
                                  (expires, meta, nonce, sealed, kind, record_id, expect_meta))
            if count == 0 and self._get_row(kind, record_id) is not None:
                raise Conflict(f"the {kind} record {record_id!r} changed meanwhile")
        if count == 0:
            raise NotFound(f"no {kind} record {record_id!r}")

    def _get(self, cls: type[_R], record_id: str) -> _R | None:
        row = self._get_row(cls.kind, record_id)
        return None if row is None else cls.from_row(record_id, *row)

    def _get_row(self, kind: str, record_id: str) -> tuple[SecretKey | None, float | None, str] | None:
        """The (key, expiry, meta) of one record, its integrity checked; None when there is none."""
        if not _storable(record_id):
            return None  # no record can have it
        rows, _ = self._exec("SELECT expires, meta, nonce, sealed FROM sealed_record WHERE kind = ? AND id = ?",
                             (kind, record_id))
        if not rows:
            return None
        return self._opened(kind, record_id, *rows[0])

    def _opened(self, kind: str, record_id: str, expires: object, meta: str, nonce: object,
                sealed: object) -> tuple[SecretKey | None, float | None, str]:
        when = None if expires is None else float(expires)  # type: ignore[arg-type]
        plain = open_sealed(self._aead, bytes(nonce), bytes(sealed),  # type: ignore[call-overload]
                            record_aad(kind, record_id, when, meta))
        if plain is None:
            log.error("%s: %s record %r fails its integrity check (changed without the master key); refused",
                      self.location, kind, record_id)
            raise StorageError(f"{kind} record {record_id!r} fails its integrity check")
        return (SecretKey(plain) if plain else None), when, meta

    # -- the services' JSON documents (CAPIF)
    def put_document(self, document: Document, *, replace: bool = False, expect: Document | None = None) -> None:
        """Store ``document``: a new record (``Conflict`` when its id exists), or with ``replace`` an existing one
        (``NotFound`` when there is none). With ``expect`` (implies ``replace``): only if the record still holds
        ``expect``'s body, else ``Conflict`` (compare-and-swap: an update based on a stale read never lands)."""
        if expect is not None and (expect.kind, expect.record_id) != (document.kind, document.record_id):
            raise StorageError("expect must be the same record")
        if replace or expect is not None:
            self._replace(document.kind, document.record_id, document.expires, document.meta(), document.key,
                          None if expect is None else expect.meta())
        else:
            self._insert(document.kind, document.record_id, document.expires, document.meta(), document.key)

    def get_document(self, kind: str, record_id: str) -> Document | None:
        row = self._get_row(kind, record_id)
        return None if row is None else Document.from_row(kind, record_id, *row)

    def delete_document(self, kind: str, record_id: str) -> None:
        self._delete(kind, record_id)

    def documents(self, kind: str) -> list[Document]:
        """Every document of ``kind``, by id (each one's integrity checked)."""
        rows, _ = self._exec("SELECT id, expires, meta, nonce, sealed FROM sealed_record WHERE kind = ? ORDER BY id",
                             (kind,))
        return [Document.from_row(kind, str(r[0]), *self._opened(kind, str(r[0]), *r[1:])) for r in rows]

    def _delete(self, kind: str, record_id: str) -> None:
        if not _storable(record_id):
            raise NotFound(f"no {kind} record {record_id!r}")
        _, count = self._exec("DELETE FROM sealed_record WHERE kind = ? AND id = ?", (kind, record_id))
        if count == 0:
            raise NotFound(f"no {kind} record {record_id!r}")

    def ids(self, kind: str) -> list[str]:
        """The ids of every record of ``kind``, sorted (never a key)."""
        rows, _ = self._exec("SELECT id FROM sealed_record WHERE kind = ? ORDER BY id", (kind,))
        return [str(r[0]) for r in rows]

    def purge_expired(self) -> int:
        """Delete every record whose expiry time is at or before the clock's now; how many were deleted."""
        _, count = self._exec("DELETE FROM sealed_record WHERE expires IS NOT NULL AND expires <= ?",
                              (float(self._clock()),))
        return count

    # -- MAF clients (KmID -> Km)
    def register_client(self, client: MAFClient) -> None:
        """Add a client; :class:`Conflict` if its KmID exists."""
        try:
            self._insert(KIND_MAF_CLIENT, client.kmid, client.expires, client.meta(), client.km)
        except Conflict:
            raise Conflict(f"MAF client {client.kmid!r} exists already") from None

    def get_client(self, kmid: str) -> MAFClient | None:
        return self._get(MAFClient, kmid)

    def update_client(self, client: MAFClient) -> None:
        """Replace a client's record (every field); :class:`NotFound` if it does not exist."""
        self._replace(KIND_MAF_CLIENT, client.kmid, client.expires, client.meta(), client.km)

    def delete_client(self, kmid: str) -> None:
        self._delete(KIND_MAF_CLIENT, kmid)

    # -- registered keys (RelativeKeyID -> Kc)
    def register_key(self, kc: SecretKey, *, source_id: str, suid: int, target_ids: Sequence[str],
                     expires: float, labels: Sequence[str] = (), admin_fqdn: str | None = None,
                     relative_key_id: str | None = None, attempts: int = ALLOCATION_ATTEMPTS) -> RegisteredKey:
        """Store a key under ``relative_key_id`` (:class:`Conflict` if it is taken) or, without one, under a
        previously unused id the store draws (TS-0003 §8.8.2.7); returns the record as stored."""
        for _ in range(1 if relative_key_id is not None else attempts):
            rkid = relative_key_id if relative_key_id is not None else self._new_id()
            record = RegisteredKey(rkid, kc, source_id, int(suid), tuple(target_ids), float(expires),
                                   tuple(labels), admin_fqdn)
            try:
                self._insert(KIND_MAF_KEY, rkid, record.expires, record.meta(), kc)
            except Conflict:
                continue
            return record
        if relative_key_id is not None:
            raise Conflict(f"RelativeKeyID {relative_key_id!r} is taken")
        raise Conflict(f"no unused RelativeKeyID after {attempts} attempts")

    def get_key(self, relative_key_id: str) -> RegisteredKey | None:
        return self._get(RegisteredKey, relative_key_id)

    def update_key(self, key: RegisteredKey) -> None:
        """Replace a registered key's record (every field); :class:`NotFound` if it does not exist."""
        self._replace(KIND_MAF_KEY, key.relative_key_id, key.expires, key.meta(), key.kc)

    def delete_key(self, relative_key_id: str) -> None:
        self._delete(KIND_MAF_KEY, relative_key_id)

    def delete_keys_of(self, source_id: str) -> int:
        """Delete every registered key whose source is ``source_id`` (a revoked client's keys); how many."""
        count = 0
        for rkid in self.ids(KIND_MAF_KEY):
            try:
                key = self.get_key(rkid)
            except StorageError:
                continue  # a damaged record is nobody's key
            if key is not None and key.source_id == source_id:
                try:
                    self.delete_key(rkid)
                    count += 1
                except NotFound:
                    pass
        return count

    # -- MAF Client Registrations (one per client identity, TS-0003 §8.8.2.3)
    def put_registration(self, registration: ClientRegistration) -> None:
        """Add or replace the registration of ``registration.owner`` (a new Client Registration replaces the
        previous one of the same client)."""
        try:
            self._insert(KIND_MAF_REGISTRATION, registration.owner, registration.expires, registration.meta(), None)
        except Conflict:
            self._replace(KIND_MAF_REGISTRATION, registration.owner, registration.expires, registration.meta(), None)

    def get_registration(self, owner: str) -> ClientRegistration | None:
        return self._get(ClientRegistration, owner)

    def delete_registration(self, owner: str) -> None:
        self._delete(KIND_MAF_REGISTRATION, owner)
