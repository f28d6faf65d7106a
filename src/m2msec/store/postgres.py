"""PostgreSQL backend of :class:`~m2msec.store.base.KeyStore` through psycopg 3 (``postgresql://...``).

Several MAF instances behind a load balancer share one key space through it: every statement runs in its own
transaction (autocommit), PostgreSQL's unique primary key settles concurrent registrations, and a commit
returns once its WAL record is flushed (the server's default ``synchronous_commit=on``), so an acknowledged
write is on disk. The schema is created under a transaction-level advisory lock, so instances starting at
once do not race on ``CREATE TABLE``.

The master key is never created here: every instance must be given the same one (``--master-key-file`` or
``M2MSEC_MASTER_KEY``; :data:`POSTGRES_MASTER_KEY_SOURCES`, D72). Messages and the repr show the URL without
its password (user info or ``?password=``), and a connection error quoting it has it masked; ``psycopg.Error``
never escapes this module.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors

from m2msec.errors import ConfigurationError, Conflict, StorageError
from m2msec.keys.secret import SecretKey
from m2msec.keys.sqlite_store import MASTER_KEY_ENV, read_master_key_file
from m2msec.store.base import KeyStore, Row

__all__ = ["CONNECT_TIMEOUT", "LOCK_TIMEOUT_MS", "POSTGRES_MASTER_KEY_SOURCES", "PostgresKeyStore", "redact_url"]

#: Where a PostgreSQL store's master key comes from, first match wins (D72); there is no default file: the
#: instances sharing the database must share the key, so creating one would split them.
POSTGRES_MASTER_KEY_SOURCES = ("--master-key-file", f"${MASTER_KEY_ENV}")
#: Seconds to wait for the server when connecting.
CONNECT_TIMEOUT = 10
#: How long a statement waits for a lock another session holds before it fails with StorageError (D54): as
#: long as SQLite's ``busy_timeout``; PostgreSQL's default is to wait forever (an operator's open transaction
#: holding a table lock would hang every lookup, and AsyncKeyStore's worker threads with them).
LOCK_TIMEOUT_MS = 10_000
_SCHEMA_LOCK = 0x6D326D73  # "m2ms": pg_advisory_xact_lock key while the schema is created
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS store_meta (name TEXT PRIMARY KEY, value BYTEA NOT NULL)",
    "CREATE TABLE IF NOT EXISTS sealed_record (kind TEXT NOT NULL, id TEXT NOT NULL, expires DOUBLE PRECISION, "
    "meta TEXT NOT NULL, nonce BYTEA NOT NULL, sealed BYTEA NOT NULL, PRIMARY KEY (kind, id))",
    "CREATE INDEX IF NOT EXISTS sealed_record_expires ON sealed_record (expires)",
)


_QUERY_PASSWORD = re.compile(r"([?&]password=)([^&#]*)", re.IGNORECASE)


def redact_url(url: str) -> str:
    """The URL without its password (in the user info or as libpq's ``?password=`` parameter); a URL too
    malformed to parse is not shown at all."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return f"{url.partition('://')[0]}://(unparsable URL)"
    if password is not None:
        netloc = parts.netloc.rsplit("@", 1)[1]
        parts = parts._replace(netloc=f"{parts.username or ''}:***@{netloc}")
    return _QUERY_PASSWORD.sub(r"\1***", urlunsplit(parts))


def _url_secrets(url: str) -> list[str]:
    """Every form of the passwords in ``url`` a connection error may echo (libpq quotes the bad token)."""
    found = [m.group(2) for m in _QUERY_PASSWORD.finditer(url)]
    userinfo = re.match(r"[^:/]*://([^/?#]*)@", url)
    if userinfo is not None and ":" in userinfo.group(1):
        found.append(userinfo.group(1).split(":", 1)[1])
    found += [unquote(secret) for secret in found]
    return sorted({secret for secret in found if secret}, key=len, reverse=True)


def _master_key(master_key_file: str | os.PathLike[str] | None) -> SecretKey:
    if master_key_file is not None:
        return read_master_key_file(Path(master_key_file))
    env = os.environ.get(MASTER_KEY_ENV)
    if not env:
        raise ConfigurationError(f"a PostgreSQL key store needs its master key: give --master-key-file or set "
                                 f"{MASTER_KEY_ENV} (the same key on every instance)")
    key = SecretKey.from_hex(env)
    if len(key) != 32:
        raise ConfigurationError(f"{MASTER_KEY_ENV} must be 64 hex digits (32 bytes)")
    return key


class PostgresKeyStore(KeyStore):
    backend = "postgresql"

    def __init__(self, url: str, master_key: SecretKey | None = None, *,
                 master_key_file: str | os.PathLike[str] | None = None, **options: Any) -> None:
        self.url = url
        self._secrets = _url_secrets(url)
        super().__init__(master_key if master_key is not None else _master_key(master_key_file), **options)
        try:
            self._conn = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
        except psycopg.Error as exc:
            raise StorageError(f"{self.location}: cannot connect: {self._reason(exc)}") from None
        try:
            self._conn.execute(f"SET lock_timeout = {int(LOCK_TIMEOUT_MS)}")
            with self._conn.transaction():
                self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                for statement in _SCHEMA:
                    self._conn.execute(statement)
            self._open_check()
        except psycopg.Error as exc:
            self._conn.close()
            raise StorageError(f"{self.location}: cannot open key store: {self._reason(exc)}") from None
        except BaseException:
            self._conn.close()
            raise

    @property
    def location(self) -> str:
        return redact_url(self.url)

    def _run(self, sql: str, params: Sequence[object] = ()) -> tuple[list[Row], int]:
        try:
            cur = self._conn.execute(sql.replace("?", "%s"), tuple(params))
            rows = cur.fetchall() if cur.description is not None else []
            return rows, cur.rowcount
        except pg_errors.UniqueViolation:
            raise Conflict(f"{self.location}: record exists already") from None
        except psycopg.Error as exc:
            raise StorageError(f"{self.location}: {self._reason(exc)}") from None

    def close(self) -> None:
        self._conn.close()

    def _reason(self, exc: psycopg.Error) -> str:
        """:func:`_reason` without the URL's password, should libpq quote it (a malformed URL)."""
        text = _reason(exc)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _reason(exc: psycopg.Error) -> str:
    """The server's primary message (never the statement's parameters), or the connection failure."""
    primary = exc.diag.message_primary
    if primary:
        return primary
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[-1]}" if text else type(exc).__name__
