"""SQLite PSK store: keys encrypted at rest, looked up per handshake.

Each key is sealed with AES-256-GCM under a 32-byte *master key*; the identity is the associated
data, so a row's ciphertext cannot be moved to another identity. The master key comes from (first
match): the ``M2MSEC_MASTER_KEY`` environment variable (64 hex digits), an explicit key file, or the
file ``<database>.key`` beside the database, created with mode 0600 on first use. A check value in the
``meta`` table detects a wrong master key when the store is opened.

Lookups are primary-key reads (a few microseconds), so a store with 1,000,000 identities serves
handshakes directly; keys added by ``m2msec keys add`` are visible to a running gateway at once
(WAL mode lets the CLI write while the gateway reads).

This is the only module of ``m2msec.keys`` that does I/O; ``sqlite3.Error`` never escapes it.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from m2msec.errors import ConfigurationError, Conflict, NotFound, StorageError
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import PSKEntry, check_file_permissions

__all__ = ["MASTER_KEY_ENV", "SQLitePSKStore", "StoredIdentity", "load_master_key"]

MASTER_KEY_ENV = "M2MSEC_MASTER_KEY"
_AAD_PREFIX = b"m2msec-psk-v1\0"
_CHECK_PLAINTEXT = b"m2msec master key check v1"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS psk (
    identity TEXT PRIMARY KEY,
    entity TEXT,
    description TEXT,
    nonce BLOB NOT NULL,
    sealed BLOB NOT NULL,
    created REAL NOT NULL
);
"""


@dataclass(frozen=True)
class StoredIdentity:
    """What ``keys list`` shows: never the key."""

    identity: str
    entity: str | None
    description: str | None
    key_length: int
    created: float


def load_master_key(db_path: Path, key_file: Path | None = None, *, create: bool = True) -> SecretKey:
    """Find (or create) the master key for the store at ``db_path``; see the module docstring."""
    env = os.environ.get(MASTER_KEY_ENV)
    if env:
        key = SecretKey.from_hex(env)
        if len(key) != 32:
            raise ConfigurationError(f"{MASTER_KEY_ENV} must be 64 hex digits (32 bytes)")
        return key
    path = key_file or db_path.with_name(db_path.name + ".key")
    if path.exists():
        check_file_permissions(path)
        try:
            key = SecretKey.from_hex(path.read_text(encoding="ascii").strip())
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"{path}: cannot read master key: {exc}") from None
        if len(key) != 32:
            raise ConfigurationError(f"{path}: master key must be 64 hex digits (32 bytes)")
        return key
    if not create:
        raise ConfigurationError(f"{path}: master key file not found (or set {MASTER_KEY_ENV})")
    key = SecretKey.generate(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(key.reveal().hex() + "\n")
    return key


class SQLitePSKStore:
    """PSK entries in SQLite. Implements :class:`m2msec.keys.table.PSKTable`."""

    def __init__(self, path: str | os.PathLike[str], master_key: SecretKey | None = None,
                 *, master_key_file: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path)
        if master_key is None:
            kf = Path(master_key_file) if master_key_file is not None else None
            master_key = load_master_key(self.path, kf, create=not self.path.exists() or kf is None)
        if len(master_key) != 32:
            raise ConfigurationError("the master key must be 32 bytes")
        self._aead = AESGCM(master_key.reveal())
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
            os.chmod(self.path, 0o600)
            self._check_master_key()
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: cannot open key store: {exc}") from None

    def _check_master_key(self) -> None:
        row = self._db.execute("SELECT value FROM meta WHERE name = 'check'").fetchone()
        if row is None:
            nonce = secrets.token_bytes(12)
            sealed = self._aead.encrypt(nonce, _CHECK_PLAINTEXT, b"check")
            self._db.execute("INSERT INTO meta VALUES ('check', ?)", (nonce + sealed,))
            return
        blob = bytes(row[0])
        try:
            self._aead.decrypt(blob[:12], blob[12:], b"check")
        except InvalidTag:
            raise StorageError(f"{self.path}: the master key does not match this key store") from None

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SQLitePSKStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SQLitePSKStore {self.path}>"

    @staticmethod
    def _aad(identity: str) -> bytes:
        return _AAD_PREFIX + identity.encode("utf-8")

    def _seal(self, entry: PSKEntry) -> tuple[str, str | None, str | None, bytes, bytes, float]:
        nonce = secrets.token_bytes(12)
        sealed = self._aead.encrypt(nonce, entry.key.reveal(), self._aad(entry.identity))
        return (entry.identity, entry.entity, entry.description, nonce, sealed, time.time())

    # -- PSKTable
    def lookup(self, identity: str) -> PSKEntry | None:
        try:
            row = self._db.execute(
                "SELECT entity, description, nonce, sealed FROM psk WHERE identity = ?", (identity,)
            ).fetchone()
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: lookup failed: {exc}") from None
        if row is None:
            return None
        entity, description, nonce, sealed = row
        try:
            key = self._aead.decrypt(nonce, sealed, self._aad(identity))
        except InvalidTag:
            raise StorageError(f"{self.path}: entry {identity!r} fails its integrity check") from None
        return PSKEntry(identity, SecretKey(key), entity, description)

    # -- management
    def add(self, entry: PSKEntry, *, replace: bool = False) -> None:
        verb = "INSERT OR REPLACE" if replace else "INSERT"
        try:
            self._db.execute(f"{verb} INTO psk VALUES (?, ?, ?, ?, ?, ?)", self._seal(entry))
        except sqlite3.IntegrityError:
            raise Conflict(f"identity {entry.identity!r} exists already (use --replace)") from None
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: add failed: {exc}") from None

    def add_many(self, entries: Iterable[PSKEntry], *, replace: bool = False) -> int:
        """Add entries in one transaction: all of them or none. Returns the count."""
        verb = "INSERT OR REPLACE" if replace else "INSERT"
        count = 0
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for entry in entries:
                    self._db.execute(f"{verb} INTO psk VALUES (?, ?, ?, ?, ?, ?)", self._seal(entry))
                    count += 1
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.IntegrityError:
            raise Conflict("an imported identity exists already (use --replace); nothing was imported") from None
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: import failed, nothing was imported: {exc}") from None
        return count

    def remove(self, identity: str) -> None:
        try:
            cur = self._db.execute("DELETE FROM psk WHERE identity = ?", (identity,))
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: remove failed: {exc}") from None
        if cur.rowcount == 0:
            raise NotFound(f"no entry for identity {identity!r}")

    def list(self) -> Iterator[StoredIdentity]:
        try:
            rows = self._db.execute(
                "SELECT identity, entity, description, length(sealed) - 16, created FROM psk ORDER BY identity"
            )
            for identity, entity, description, key_length, created in rows:
                yield StoredIdentity(identity, entity, description, key_length, created)
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: list failed: {exc}") from None

    def __len__(self) -> int:
        try:
            return int(self._db.execute("SELECT count(*) FROM psk").fetchone()[0])
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: count failed: {exc}") from None
