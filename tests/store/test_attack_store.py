"""Hostile review of the key store (issue 16 part 3): a hostile caller's ids, a careless operator's URLs and
values, and whoever can write the database without the master key. Each test runs on SQLite and on a real
PostgreSQL (``store_url``) unless it is about one backend."""

from __future__ import annotations

import math
import os
import stat
import threading
from pathlib import Path

import psycopg
import pytest

from m2msec.errors import IdentifierError, NotFound, StorageError
from m2msec.keys.secret import SecretKey
from m2msec.store import KeyStore, MAFClient, open_store, postgres
from m2msec.store.records import KIND_MAF_CLIENT, KIND_MAF_KEY

# what a JSON body decodes "\ud800" to, a NUL, and SQL that a concatenated statement would run
HOSTILE_IDS = ["\ud800", "KmID\udcff", "KmID-1\x00-other", "x' OR '1'='1", "a\"; DROP TABLE sealed_record; --"]


def _client(kmid: str, expires: float | None = 2e9) -> MAFClient:
    return MAFClient(kmid, SecretKey.generate(32), "CAE-client-1", expires)


@pytest.mark.parametrize("record_id", HOSTILE_IDS)
def test_hostile_ids_are_a_clear_answer_on_every_backend(store_url: str, master_key: SecretKey,
                                                         record_id: str) -> None:
    """A lone surrogate escaped the store as UnicodeEncodeError (a traceback, not a StorageError) on both backends,
    and a NUL was a StorageError on PostgreSQL but a valid id on SQLite."""
    with open_store(store_url, master_key) as s:
        s.register_client(_client("KmID-1"))
        storable = "\x00" not in record_id and record_id.encode("utf-8", "surrogatepass").decode("utf-8", "replace") \
            == record_id
        if storable:  # SQL in an id is only an id
            s.register_client(_client(record_id))
            got = s.get_client(record_id)
            assert got is not None and got.kmid == record_id
            s.delete_client(record_id)
        else:
            assert s.get_client(record_id) is None and s.get_key(record_id) is None
            with pytest.raises(IdentifierError):
                s.register_client(_client(record_id))
            with pytest.raises(IdentifierError):
                s.register_key(SecretKey.generate(32), source_id="KmID-1", suid=12, target_ids=[], expires=2e9,
                               relative_key_id=record_id)
            with pytest.raises(NotFound):
                s.update_client(_client(record_id))
            with pytest.raises(NotFound):
                s.delete_key(record_id)
        assert s.ids(KIND_MAF_CLIENT) == ["KmID-1"] and s.get_client("KmID-1") is not None


def test_nan_expiry_is_refused_and_infinities_agree(store_url: str, master_key: SecretKey) -> None:
    """NaN was stored as NULL by SQLite (the record then failed its integrity check forever) and as a NaN that
    never expires by PostgreSQL."""
    now = 1e9
    with open_store(store_url, master_key, clock=lambda: now) as s:
        with pytest.raises(StorageError, match="not a number"):
            s.register_key(SecretKey.generate(32), source_id="s", suid=12, target_ids=[], expires=math.nan)
        with pytest.raises(StorageError, match="not a number"):
            s.register_client(_client("nan", math.nan))
        s.register_client(_client("KmID-1"))
        with pytest.raises(StorageError, match="not a number"):
            s.update_client(_client("KmID-1", math.nan))
        assert s.ids(KIND_MAF_KEY) == [] and s.ids(KIND_MAF_CLIENT) == ["KmID-1"]
        forever = s.register_key(SecretKey.generate(32), source_id="s", suid=12, target_ids=[], expires=math.inf)
        past = s.register_key(SecretKey.generate(32), source_id="s", suid=12, target_ids=[], expires=-math.inf)
        assert s.purge_expired() == 1
        got = s.get_key(forever.relative_key_id)
        assert got is not None and not got.expired(now) and s.get_key(past.relative_key_id) is None


def _with_password(url: str, password: str) -> str:
    scheme, rest = url.split("://", 1)
    user, host = rest.split("@", 1)
    return f"{scheme}://{user}:{password}@{host}"


def test_postgres_password_never_shown(postgres_url: str, master_key: SecretKey) -> None:
    """``?password=`` (libpq's other spelling) was shown in full by repr and every message; libpq quotes a badly
    percent-encoded password in its error; a URL urlsplit cannot parse raised a bare ValueError."""
    store = open_store(postgres_url + "?password=topsecret1", master_key)  # the test server trusts any password
    try:
        assert "topsecret1" not in repr(store) and "***" in repr(store)
        store._exec("DROP TABLE sealed_record")
        with pytest.raises(StorageError) as info:
            store.get_client("KmID-1")
        assert "topsecret1" not in str(info.value)
    finally:
        store.close()
    for url, secret in ((_with_password(postgres_url, "top%ZZsecret2"), "top%ZZsecret2"),
                        (_with_password(postgres_url, "top secret3"), "top secret3"),
                        (postgres_url + "?password=topsecret4&sslmode=bogus", "topsecret4"),
                        ("postgresql://u:topsecret5@[::1/db", "topsecret5")):
        with pytest.raises(StorageError) as failed:
            open_store(url, master_key)
        assert secret not in str(failed.value) and secret.split()[-1] not in str(failed.value)


# -- what held up: whoever writes the database without the master key, and a new file's permissions


def test_rows_moved_between_records_kinds_or_lifetimes_are_refused(store_url: str, master_key: SecretKey) -> None:
    with open_store(store_url, master_key) as s:
        s.register_client(_client("KmID-1"))
        s.register_client(_client("KmID-2"))
        key = s.register_key(SecretKey.generate(32), source_id="KmID-1", suid=12, target_ids=["/a"], expires=2e9,
                             relative_key_id="KmID-3")
        # KmID-2 gets KmID-1's sealed Km; the key record becomes a client record; the key lives longer
        s._exec("UPDATE sealed_record SET nonce = (SELECT nonce FROM sealed_record WHERE id = 'KmID-1'), "
                "sealed = (SELECT sealed FROM sealed_record WHERE id = 'KmID-1') WHERE id = 'KmID-2'")
        with pytest.raises(StorageError, match="integrity"):
            s.get_client("KmID-2")
        s._exec("UPDATE sealed_record SET expires = 3e9 WHERE id = ?", (key.relative_key_id,))
        with pytest.raises(StorageError, match="integrity"):
            s.get_key(key.relative_key_id)
        s._exec("UPDATE sealed_record SET kind = ? WHERE id = ?", (KIND_MAF_CLIENT, key.relative_key_id))
        with pytest.raises(StorageError):  # the key's meta is not a client's, and the AAD names the kind
            s.get_client(key.relative_key_id)
        assert s.get_client("KmID-1") is not None


def test_new_sqlite_store_files_are_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("M2MSEC_MASTER_KEY", raising=False)
    old = os.umask(0o022)
    try:
        store: KeyStore = open_store(f"sqlite://{tmp_path / 'new' / 'maf.db'}")  # its key file made beside it
        store.register_client(_client("KmID-1"))
        names = sorted(p.name for p in (tmp_path / "new").iterdir())
        assert names == ["maf.db", "maf.db-shm", "maf.db-wal", "maf.db.key"]
        for path in (tmp_path / "new").iterdir():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name
        store.close()
    finally:
        os.umask(old)


def test_records_without_their_check_value_are_refused(store_url: str, master_key: SecretKey) -> None:
    """Only the record table copied to a new database (or the check value deleted): a store opened with the wrong
    master key made a new check value under it, then blamed every record on tampering and sealed new ones under
    the wrong key beside them."""
    with open_store(store_url, master_key) as s:
        s.register_client(_client("KmID-1"))
        s._exec("DELETE FROM store_meta")
    with pytest.raises(StorageError, match="master key does not match"):
        open_store(store_url, SecretKey.generate(32))
    with open_store(store_url, master_key) as s:  # the right key opens a record: the check value is made again
        assert s.get_client("KmID-1") is not None
    with pytest.raises(StorageError, match="master key does not match"):
        open_store(store_url, SecretKey.generate(32))


def test_postgres_statement_waits_for_a_lock_only_so_long(postgres_url: str, master_key: SecretKey,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """An operator's transaction holding a table lock made every statement wait forever (SQLite gives up after
    its busy_timeout): a lookup blocked, and with it one of AsyncKeyStore's few worker threads."""
    monkeypatch.setattr(postgres, "LOCK_TIMEOUT_MS", 300, raising=False)
    store = open_store(postgres_url, master_key)
    admin = psycopg.connect(postgres_url)
    outcome: list[object] = []

    def lookup() -> None:
        try:
            outcome.append(store.get_client("KmID-1"))
        except StorageError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=lookup, daemon=True)
    try:
        admin.execute("LOCK TABLE sealed_record IN ACCESS EXCLUSIVE MODE")  # and the transaction stays open
        worker.start()
        worker.join(10)
        assert not worker.is_alive() and isinstance(outcome[0], StorageError)
        assert "lock timeout" in str(outcome[0])
        admin.rollback()
        assert store.get_client("KmID-1") is None  # the store still works once the lock is gone
    finally:
        admin.rollback()
        admin.close()
        if worker.is_alive():
            worker.join(10)
        store.close()
