"""SQLite PSK store: keys encrypted at rest, looked up per handshake.

Each key is sealed with AES-256-GCM under a 32-byte *master key*; the identity is the associated
data, so a row's ciphertext cannot be moved to another identity. The master key comes from (first
match, :data:`MASTER_KEY_PRECEDENCE`): an explicit key file (``--master-key-file``), the
``M2MSEC_MASTER_KEY`` environment variable (64 hex digits), or the file ``<database>.key`` beside the
database. A key file is created (mode 0600 from the start) only for a new store: an existing store whose
key file is missing is refused, since a fresh key could not read it. A check value in the ``meta`` table
detects a wrong master key when the store is opened.

The database file is created with mode 0600 (:data:`DB_FILE_MODE`) and, like every file holding keys, is
refused when the group or others may access it: its rows are sealed, but the identity-to-entity bindings
and the sealed keys must not be readable or replaceable by other users (docs/decisions.md D37).

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
from m2msec.keys.files import write_secret_file
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import PSKEntry, check_file_permissions

__all__ = [
    "DB_FILE_MODE", "MASTER_KEY_ENV", "MASTER_KEY_PRECEDENCE", "SQLitePSKStore", "StoredIdentity", "load_master_key",
]

MASTER_KEY_ENV = "M2MSEC_MASTER_KEY"
#: Where the master key comes from, first match wins (docs/decisions.md D36): an explicit file given by the
#: caller beats the environment, which beats the default file beside the database.
MASTER_KEY_PRECEDENCE = ("--master-key-file", f"${MASTER_KEY_ENV}", "DB.key")
#: Mode of a new key store (and of its -wal/-shm files, which SQLite creates with the database's mode).
DB_FILE_MODE = 0o600
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


def _store_is_new(db_path: Path) -> bool:
    """A store that holds nothing yet: no file, or an empty one."""
    try:
        return db_path.stat().st_size == 0
    except FileNotFoundError:
        return True
    except OSError as exc:
        raise StorageError(f"{db_path}: cannot open key store: {exc.strerror}") from None


def _read_master_key(path: Path) -> SecretKey:
    check_file_permissions(path)
    try:
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not ASCII hex"
        raise ConfigurationError(f"{path}: cannot read master key: {reason}") from None
    key = SecretKey.from_hex(text.strip())
    if len(key) != 32:
        raise ConfigurationError(f"{path}: master key must be 64 hex digits (32 bytes)")
    return key


def load_master_key(db_path: Path, key_file: Path | None = None, *, create: bool = True) -> SecretKey:
    """Find the master key for the store at ``db_path`` (:data:`MASTER_KEY_PRECEDENCE`).

    A missing key file is created only when ``create`` is true and the store is new (no file or an empty
    one); for an existing store it is a :class:`ConfigurationError`, never a fresh key.
    """
    if key_file is None:
        env = os.environ.get(MASTER_KEY_ENV)
        if env:
            key = SecretKey.from_hex(env)
            if len(key) != 32:
                raise ConfigurationError(f"{MASTER_KEY_ENV} must be 64 hex digits (32 bytes)")
            return key
    path = key_file or db_path.with_name(db_path.name + ".key")
    if path.exists():
        return _read_master_key(path)
    if not _store_is_new(db_path):
        raise ConfigurationError(
            f"{path}: master key file not found, and {db_path} is an existing key store that only its own master "
            f"key can read (restore the file, or give --master-key-file or {MASTER_KEY_ENV})"
        )
    if not create:
        raise ConfigurationError(f"{path}: master key file not found (or set {MASTER_KEY_ENV})")
    key = SecretKey.generate(32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigurationError(f"{path.parent}: cannot create directory: {exc.strerror}") from None
    write_secret_file(path, key.reveal().hex() + "\n")
    return key


class SQLitePSKStore:
    """PSK entries in SQLite. Implements :class:`m2msec.keys.table.PSKTable`."""

    def __init__(self, path: str | os.PathLike[str], master_key: SecretKey | None = None,
                 *, master_key_file: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path)
        if self.path.exists():
            check_file_permissions(self.path)
        if master_key is None:
            kf = Path(master_key_file) if master_key_file is not None else None
            master_key = load_master_key(self.path, kf)
        if len(master_key) != 32:
            raise ConfigurationError("the master key must be 32 bytes")
        self._aead = AESGCM(master_key.reveal())
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # created 0600 before SQLite opens it: never a moment with the umask's mode
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, DB_FILE_MODE))
        except OSError as exc:
            raise StorageError(f"{self.path}: cannot create key store: {exc.strerror}") from None
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(_SCHEMA)
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
