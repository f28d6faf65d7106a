"""SQLite store rows sealed over every security-relevant column (docs/decisions.md D44), format-1 stores
re-sealed on open, and a miss that does a hit's cipher work. Real stores in temporary directories.

``data/v1-store.db`` was written by the format-1 code (commit b96b18b, AAD = identity only) with master key
``MASTER_V1``; it holds LIGHT1 (entity LIGHT1_AE, a description) and TD (no entity)."""

from __future__ import annotations

import logging
import shutil
import sqlite3
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from conftest import LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY, TD_ID, TD_KEY
from m2msec.keys.secret import SecretKey
from m2msec.keys.sqlite_store import SQLitePSKStore, row_aad
from m2msec.keys.table import PSKEntry

MASTER_V1 = SecretKey.from_hex("00112233445566778899aabbccddeeff" * 2)
V1_STORE = Path(__file__).parent / "data" / "v1-store.db"


def _tamper(db: Path, sql: str, *args: object) -> None:
    raw = sqlite3.connect(db)
    raw.execute(sql, args)
    raw.commit()
    raw.close()


@pytest.mark.parametrize(("column", "value"), [("entity", "CAdmin"), ("entity", None), ("description", "x")])
def test_a_column_changed_without_the_master_key_is_refused(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                            column: str, value: str | None) -> None:
    db = tmp_path / "keys.db"
    master = SecretKey.generate(32)
    with SQLitePSKStore(db, master) as store:
        store.add(PSKEntry(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), LIGHT1_AE, "light one"))
        store.add(PSKEntry(TD_ID, SecretKey.from_hex(TD_KEY)))
    _tamper(db, f"UPDATE psk SET {column} = ? WHERE identity = ?", value, LIGHT1_ID)
    with caplog.at_level(logging.ERROR, logger="m2msec.keys"), SQLitePSKStore(db, master) as store:
        assert store.lookup(LIGHT1_ID) is None
        assert store.lookup(LIGHT1_ID) is None
        assert store.lookup(TD_ID) is not None  # other rows still serve
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1, "one ERROR per tampered row version, not one per handshake"
    assert f"entry {LIGHT1_ID!r} fails its integrity check" in errors[0]
    assert LIGHT1_KEY not in errors[0] and LIGHT1_KEY.upper() not in errors[0]


def test_a_store_written_by_the_v1_code_opens_and_is_resealed(tmp_path: Path) -> None:
    db = tmp_path / "keys.db"
    shutil.copyfile(V1_STORE, db)
    db.chmod(0o600)
    with SQLitePSKStore(db, MASTER_V1) as store:
        light = store.lookup(LIGHT1_ID)
        td = store.lookup(TD_ID)
    assert light is not None and light.key == SecretKey.from_hex(LIGHT1_KEY) and light.entity == LIGHT1_AE
    assert light.description == "made by the v1 code"
    assert td is not None and td.key == SecretKey.from_hex(TD_KEY) and td.entity is None
    raw = sqlite3.connect(db)
    nonce, sealed, entity, description = raw.execute(
        "SELECT nonce, sealed, entity, description FROM psk WHERE identity = ?", (LIGHT1_ID,)).fetchone()
    raw.close()
    plain = AESGCM(MASTER_V1.reveal()).decrypt(nonce, sealed, row_aad(LIGHT1_ID, entity, description))
    assert plain == SecretKey.from_hex(LIGHT1_KEY).reveal()  # re-sealed over every column
    _tamper(db, "UPDATE psk SET entity = 'CAdmin' WHERE identity = ?", LIGHT1_ID)  # now detected
    with SQLitePSKStore(db, MASTER_V1) as store:
        assert store.lookup(LIGHT1_ID) is None


def test_a_v1_sealed_row_put_into_a_migrated_store_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "keys.db"
    shutil.copyfile(V1_STORE, db)
    db.chmod(0o600)
    raw = sqlite3.connect(db)
    old = raw.execute("SELECT nonce, sealed FROM psk WHERE identity = ?", (LIGHT1_ID,)).fetchone()
    raw.close()
    SQLitePSKStore(db, MASTER_V1).close()  # migrated
    _tamper(db, "UPDATE psk SET nonce = ?, sealed = ?, entity = 'CAdmin' WHERE identity = ?", *old, LIGHT1_ID)
    with SQLitePSKStore(db, MASTER_V1) as store:  # no second migration: the format is recorded, sealed
        assert store.lookup(LIGHT1_ID) is None


def test_a_v1_check_value_put_back_with_format_2_rows_is_not_migrated_again(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """D44: once any row is format 2 the store never migrates again; the ERROR says why, the format-2 rows
    still serve, the check value is written back as format 2 (the next open is quiet)."""
    db = tmp_path / "keys.db"
    shutil.copyfile(V1_STORE, db)
    db.chmod(0o600)
    raw = sqlite3.connect(db)
    old_check = raw.execute("SELECT value FROM meta WHERE name = 'check'").fetchone()[0]
    old_row = raw.execute("SELECT nonce, sealed FROM psk WHERE identity = ?", (LIGHT1_ID,)).fetchone()
    raw.close()
    SQLitePSKStore(db, MASTER_V1).close()  # migrated
    _tamper(db, "UPDATE meta SET value = ? WHERE name = 'check'", old_check)
    _tamper(db, "UPDATE psk SET nonce = ?, sealed = ?, entity = 'CAdmin' WHERE identity = ?", *old_row, LIGHT1_ID)
    with caplog.at_level(logging.ERROR, logger="m2msec.keys"), SQLitePSKStore(db, MASTER_V1) as store:
        assert store.lookup(LIGHT1_ID) is None
        td = store.lookup(TD_ID)
        assert td is not None and td.key == SecretKey.from_hex(TD_KEY)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("check value was put back from an old copy; not migrating again" in e for e in errors), errors
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="m2msec.keys"), SQLitePSKStore(db, MASTER_V1) as store:
        assert store.lookup(LIGHT1_ID) is None
    assert not [r for r in caplog.records if "not migrating again" in r.getMessage()]


def test_a_miss_opens_a_decoy_of_a_rows_shape(tmp_path: Path) -> None:
    with SQLitePSKStore(tmp_path / "keys.db", SecretKey.generate(32)) as store:
        store.add(PSKEntry(LIGHT1_ID, SecretKey.from_hex("00" * 16), LIGHT1_AE))
        nonce, sealed, _aad = store.decoy
        assert len(nonce) == 12 and len(sealed) == 16 + 16
        assert store.lookup("nobody@in.provider.com") is None
