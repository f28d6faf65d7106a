"""SQLite PSK store: keys encrypted at rest, looked up per handshake.

Each key is sealed with AES-256-GCM under a 32-byte *master key*; the associated data
(:func:`row_aad`, format :data:`ROW_FORMAT`) covers every security-relevant column -- the identity, the
entity bound to it and the description -- so whoever can write the database but lacks the master key can
neither move a key to another identity nor rebind an identity to another AE-ID/CSE-ID. A row that fails its
check is refused (looked up as unknown, ERROR logged without key material), never used (docs/decisions.md
D44). Stores written by the first format (AAD = identity only) are re-sealed in the new format when they are
opened (the master key is always at hand then); the check value in ``meta`` records the format. A store with any
row in the new format is never migrated again, whatever its check value says (a format-1 check value put back
from an old copy would otherwise seal a forged format-1 row). Rolling back the whole database, or single rows,
from a backup is outside what sealing protects: the file's permissions do (D37, D43).

A lookup of an unknown identity opens a decoy sealed row of the same shape with the same cipher and builds
an entry, as a hit does, so that which identities exist does not show in the time a lookup takes
(:attr:`SQLitePSKStore.decoy`; ``bench/lookup_timing.py`` measures it). The master key comes from (first
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

import logging
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from m2msec.errors import ConfigurationError, Conflict, NotFound, StorageError
from m2msec.keys.files import write_secret_file
from m2msec.keys.sealing import AEAD, aad_field, seal, seal_check
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import PSKEntry, check_file_permissions

__all__ = [
    "AEAD",
    "DB_FILE_MODE",
    "MASTER_KEY_ENV",
    "MASTER_KEY_PRECEDENCE",
    "ROW_FORMAT",
    "SQLitePSKStore",
    "StoredIdentity",
    "load_master_key",
    "read_master_key_file",
    "row_aad",
]

log = logging.getLogger("m2msec.keys")

MASTER_KEY_ENV = "M2MSEC_MASTER_KEY"
#: Where the master key comes from, first match wins (docs/decisions.md D36): an explicit file given by the
#: caller beats the environment, which beats the default file beside the database.
MASTER_KEY_PRECEDENCE = ("--master-key-file", f"${MASTER_KEY_ENV}", "DB.key")
#: Mode of a new key store (and of its -wal/-shm files, which SQLite creates with the database's mode).
DB_FILE_MODE = 0o600
#: Format of the sealed rows: 2 = AAD over identity, entity and description (:func:`row_aad`); 1 = identity only,
#: re-sealed as 2 when a store is opened (docs/decisions.md D44)
ROW_FORMAT = 2
_AAD_PREFIX_V1 = b"m2msec-psk-v1\0"
_CHECK_PLAINTEXT = {1: b"m2msec master key check v1", 2: b"m2msec master key check v2"}
_DECOY_IDENTITY = "decoy@m2msec.invalid"
_DECOY_KEY_LENGTH = 16
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


def row_aad(identity: str, entity: str | None, description: str | None) -> bytes:
    """The associated data of a row in format :data:`ROW_FORMAT`: a version prefix, then each column as
    absent (``00``) or present (``01``, 4-byte length, UTF-8): unambiguous, and every column counts."""
    return b"m2msec-psk-v2\0" + aad_field(identity) + aad_field(entity) + aad_field(description)


def _store_is_new(db_path: Path) -> bool:
    """A store that holds nothing yet: no file, or an empty one."""
    try:
        return db_path.stat().st_size == 0
    except FileNotFoundError:
        return True
    except OSError as exc:
        raise StorageError(f"{db_path}: cannot open key store: {exc.strerror}") from None


def read_master_key_file(path: Path) -> SecretKey:
    """A master key file (64 hex digits, owner-only permissions)."""
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
        return read_master_key_file(path)
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
                 *, master_key_file: str | os.PathLike[str] | None = None,
                 cipher: Callable[[bytes], AEAD] = AESGCM) -> None:
        self.path = Path(path)
        if self.path.exists():
            check_file_permissions(self.path)
        if master_key is None:
            kf = Path(master_key_file) if master_key_file is not None else None
            master_key = load_master_key(self.path, kf)
        if len(master_key) != 32:
            raise ConfigurationError("the master key must be 32 bytes")
        self._aead = cipher(master_key.reveal())
        self._reported: set[tuple[str, bytes]] = set()
        nonce, decoy_aad = secrets.token_bytes(12), row_aad(_DECOY_IDENTITY, None, None)
        #: (nonce, sealed, aad) opened by a lookup that finds no row, so that a miss costs what a hit does
        self.decoy = (nonce, self._aead.encrypt(nonce, secrets.token_bytes(_DECOY_KEY_LENGTH), decoy_aad), decoy_aad)
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
            if self._check_master_key() != ROW_FORMAT:
                self._migrate()
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: cannot open key store: {exc}") from None

    def _check_master_key(self) -> int:
        """Check the master key against the check value; return the store's row format (a new store: current)."""
        row = self._db.execute("SELECT value FROM meta WHERE name = 'check'").fetchone()
        if row is None:
            self._write_check("INSERT")
            return ROW_FORMAT
        blob = bytes(row[0])
        try:
            plain = self._aead.decrypt(blob[:12], blob[12:], b"check")
        except InvalidTag:
            raise StorageError(f"{self.path}: the master key does not match this key store") from None
        for version, text in _CHECK_PLAINTEXT.items():
            if plain == text:
                return version
        raise StorageError(f"{self.path}: key store written by a newer m2msec (unknown format)")

    def _write_check(self, verb: str) -> None:
        check = seal_check(self._aead, _CHECK_PLAINTEXT[ROW_FORMAT])
        self._db.execute(f"{verb} INTO meta VALUES ('check', ?)", (check,))

    def _migrate(self) -> None:
        """Re-seal every format-1 row (AAD: identity only) in the current format, in one transaction. A row that
        opens in neither format is left as it is (lookups refuse it) and logged."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if self._check_master_key() == ROW_FORMAT:  # another process migrated it meanwhile
                self._db.execute("ROLLBACK")
                return
            rows = self._db.execute("SELECT identity, entity, description, nonce, sealed FROM psk").fetchall()
            if any(self._opens_in_current_format(*row) for row in rows):
                # a format-2 row under a format-1 check value: the check value was put back from a backup taken
                # before the migration. Migrating again would seal whatever a format-1 row now claims (D44).
                self._write_check("INSERT OR REPLACE")
                self._db.execute("COMMIT")
                log.error("%s: the check value says key store format 1 but entries are sealed in format %d: the "
                          "check value was put back from an old copy; not migrating again, format-1 entries are "
                          "refused by lookups (re-add them with m2msec keys add --replace)", self.path, ROW_FORMAT)
                return
            for identity, entity, description, nonce, sealed in rows:
                try:
                    key = self._aead.decrypt(nonce, sealed, _AAD_PREFIX_V1 + identity.encode("utf-8"))
                except InvalidTag:
                    log.error("%s: entry %r fails its integrity check; left as it is and refused by lookups",
                              self.path, identity)
                    continue
                new_nonce = secrets.token_bytes(12)
                self._db.execute("UPDATE psk SET nonce = ?, sealed = ? WHERE identity = ?", (
                    new_nonce, self._aead.encrypt(new_nonce, key, row_aad(identity, entity, description)), identity))
            self._write_check("INSERT OR REPLACE")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        log.info("%s: %d entries re-sealed in key store format %d", self.path, len(rows), ROW_FORMAT)

    def _opens_in_current_format(self, identity: str, entity: str | None, description: str | None,
                                 nonce: bytes, sealed: bytes) -> bool:
        try:
            self._aead.decrypt(nonce, sealed, row_aad(identity, entity, description))
        except InvalidTag:
            return False
        return True

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SQLitePSKStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<SQLitePSKStore {self.path}>"

    def _seal(self, entry: PSKEntry) -> tuple[str, str | None, str | None, bytes, bytes, float]:
        nonce, sealed = seal(self._aead, entry.key.reveal(), row_aad(entry.identity, entry.entity, entry.description))
        return (entry.identity, entry.entity, entry.description, nonce, sealed, time.time())

    # -- PSKTable
    def lookup(self, identity: str) -> PSKEntry | None:
        try:
            # one row whether the identity exists or not (the sealed check value rides along), so SQLite does
            # much the same work for a miss as for a hit
            found = self._db.execute(
                "SELECT p.entity, p.description, p.nonce, p.sealed, m.value FROM meta AS m "
                "LEFT JOIN psk AS p ON p.identity = ? WHERE m.name = 'check'", (identity,)
            ).fetchone()
            row = None if found is None or found[3] is None else found[:4]
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: lookup failed: {exc}") from None
        if row is None:  # the same work as a hit: build an AAD, open a sealed row, build an entry; then discard
            nonce, sealed, aad = self.decoy
            row_aad(identity, None, None)
            PSKEntry(_DECOY_IDENTITY, SecretKey(self._aead.decrypt(nonce, sealed, aad)))
            return None
        entity, description, nonce, sealed = row
        try:
            key = self._aead.decrypt(nonce, sealed, row_aad(identity, entity, description))
        except InvalidTag:
            self._refused(identity, bytes(sealed))
            return None
        return PSKEntry(identity, SecretKey(key), entity, description)

    def _refused(self, identity: str, sealed: bytes) -> None:
        """ERROR once per tampered row version (a client retrying must not flood the log)."""
        mark = (identity, sealed[-16:])  # the tag: public, and tells row versions apart
        if mark not in self._reported:
            if len(self._reported) >= 1024:
                self._reported.clear()
            self._reported.add(mark)
            log.error("%s: entry %r fails its integrity check (its key, entity or description was changed without "
                      "the master key); refused as an unknown identity: re-add it with m2msec keys add --replace",
                      self.path, identity)

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
