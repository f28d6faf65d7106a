"""SQLite backend of :class:`~m2msec.store.base.KeyStore`: the embedded default (``sqlite:///path``).

WAL journal with ``synchronous=FULL`` (:data:`SQLITE_SYNCHRONOUS`, docs/decisions.md D70): every commit
fsyncs the WAL before the statement returns, so a write the store acknowledged survives a crash of the
process *and* of the host. (With ``NORMAL``, WAL commits survive a process crash but the last ones may roll
back after a power loss: the WAL is only synced at checkpoints.) Several processes may use one file: SQLite
serializes the writers, ``busy_timeout`` makes them wait for each other instead of failing.

The file is created with mode 0600 and refused when group or others may access it; the master key comes from
:func:`m2msec.keys.sqlite_store.load_master_key` (explicit file, ``M2MSEC_MASTER_KEY``, or ``<db>.key``), as
for ``m2msec keys``. ``sqlite3.Error`` never escapes this module.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from m2msec.errors import Conflict, StorageError
from m2msec.keys.secret import SecretKey
from m2msec.keys.sqlite_store import DB_FILE_MODE, load_master_key
from m2msec.keys.table import check_file_permissions
from m2msec.store.base import KeyStore, Row

__all__ = ["BUSY_TIMEOUT_MS", "SQLITE_SYNCHRONOUS", "SQLiteKeyStore"]

#: ``PRAGMA synchronous`` of the record store (D70): FULL, an acknowledged write is on disk.
SQLITE_SYNCHRONOUS = "FULL"
#: How long a writer waits for another process's write lock before the statement fails.
BUSY_TIMEOUT_MS = 10_000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS store_meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS sealed_record (
    kind TEXT NOT NULL,
    id TEXT NOT NULL,
    expires REAL,
    meta TEXT NOT NULL,
    nonce BLOB NOT NULL,
    sealed BLOB NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX IF NOT EXISTS sealed_record_expires ON sealed_record (expires);
"""


class SQLiteKeyStore(KeyStore):
    backend = "sqlite"

    def __init__(self, path: str | os.PathLike[str], master_key: SecretKey | None = None, *,
                 master_key_file: str | os.PathLike[str] | None = None, **options: Any) -> None:
        self.path = Path(path)
        if self.path.exists():
            check_file_permissions(self.path)
        if master_key is None:
            master_key = load_master_key(self.path, Path(master_key_file) if master_key_file is not None else None)
        super().__init__(master_key, **options)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, DB_FILE_MODE))
        except OSError as exc:
            raise StorageError(f"{self.path}: cannot create key store: {exc.strerror}") from None
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={SQLITE_SYNCHRONOUS}")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: cannot open key store: {exc}") from None
        try:
            self._open_check()
        except BaseException:
            self._db.close()
            raise

    @property
    def location(self) -> str:
        return str(self.path)

    def _run(self, sql: str, params: Sequence[object] = ()) -> tuple[list[Row], int]:
        try:
            cur = self._db.execute(sql, tuple(params))
            return cur.fetchall(), cur.rowcount
        except sqlite3.IntegrityError:
            raise Conflict(f"{self.path}: record exists already") from None
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: {exc}") from None

    def close(self) -> None:
        # under the query lock: closing the connection while another thread is inside a query crashed the process
        # (SIGSEGV in sqlite3); a query after the close is a StorageError ("closed database")
        with self._lock:
            self._db.close()
