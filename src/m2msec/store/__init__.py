"""Key stores for the oneM2M security services: one interface, SQLite and PostgreSQL (docs/store.md).

:func:`open_store` picks the backend from a URL: ``sqlite:///path/to/file.db`` (or a plain path) for the
embedded default, ``postgresql://user@host:port/db`` (or ``postgres://``) for a database several instances
share.
"""

from __future__ import annotations

import os
from typing import Any

from m2msec.errors import ConfigurationError
from m2msec.keys.secret import SecretKey
from m2msec.store.aio import AsyncKeyStore
from m2msec.store.base import KeyStore
from m2msec.store.records import ClientRegistration, Document, MAFClient, RegisteredKey

__all__ = [
    "STORE_SCHEMES",
    "AsyncKeyStore",
    "ClientRegistration",
    "Document",
    "KeyStore",
    "MAFClient",
    "RegisteredKey",
    "open_store",
]

#: URL schemes :func:`open_store` knows
STORE_SCHEMES = ("sqlite", "postgresql", "postgres")


def open_store(url: str, master_key: SecretKey | None = None, *,
               master_key_file: str | os.PathLike[str] | None = None, **options: Any) -> KeyStore:
    """Open the key store at ``url`` (:data:`STORE_SCHEMES`); ``options`` go to :class:`KeyStore`
    (``clock``, ``new_id``, ``cipher``)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "sqlite", url
    if scheme == "sqlite":
        if not rest:
            raise ConfigurationError("a sqlite:// store URL needs a path (sqlite:///var/lib/m2msec/maf.db)")
        from m2msec.store.sqlite import SQLiteKeyStore

        return SQLiteKeyStore(rest, master_key, master_key_file=master_key_file, **options)
    if scheme in ("postgresql", "postgres"):
        from m2msec.store.postgres import PostgresKeyStore

        return PostgresKeyStore(url, master_key, master_key_file=master_key_file, **options)
    raise ConfigurationError(f"unknown key store URL scheme {scheme!r} (use sqlite:///path or postgresql://...)")
