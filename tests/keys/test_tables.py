"""PSK lookup tables: TOML file (with hot reload), SQLite store (encrypted at rest), 1,000,000 identities."""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from pathlib import Path

import pytest

from conftest import LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY, TD_ID, TD_KEY, handshake_pair
from m2msec.errors import ConfigurationError, Conflict, CredentialsLoadError, NotFound, StorageError
from m2msec.keys.secret import SecretKey
from m2msec.keys.sqlite_store import MASTER_KEY_ENV, SQLitePSKStore
from m2msec.keys.table import MemoryPSKTable, PSKEntry, TomlPSKTable, parse_toml_table
from m2msec.tls.engine import ClientConfig, ServerConfig, TLSContext

# The minimal form the issue requires, with the TS-0013 TD_M2M_SE_01 identity and a 6-hex-digit key.
MINIMAL = """
[[psk]]
identity = "test@onem2m.com"          # KpsaID
key = "313233343536"                  # hex
entity = "CAE01"                      # optional AE-ID / CSE-ID bound to the key
"""


def write_private(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_minimal_toml_form() -> None:
    entries = parse_toml_table(MINIMAL)
    entry = entries["test@onem2m.com"]
    assert entry.key == SecretKey(b"123456") and entry.entity == "CAE01"


def test_entity_and_description_optional() -> None:
    entries = parse_toml_table(f'[[psk]]\nidentity = "{TD_ID}"\nkey = "{TD_KEY}"\n')
    assert entries[TD_ID].entity is None and entries[TD_ID].description is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[[psk]]\nidentity = 'a@b.c'\n", "'key' is required"),
        ("[[psk]]\nkey = '00'\n", "'identity' is required"),
        ("[[psk]]\nidentity = 'a@b.c'\nkey = 'zz-secret-zz'\n", "not valid hexadecimal"),
        ("[[psk]]\nidentity = 'a@b.c'\nkey = '00'\nkee = '1'\n", "unknown field"),
        ("[[psk]]\nidentity = 'a@b.c'\nkey = '00'\n[[psk]]\nidentity = 'a@b.c'\nkey = '01'\n", "duplicate"),
        ("[[psk]]\nidentity = ''\nkey = '00'\n", "1..256 bytes"),
        ("[[psk]]\nidentity = 'a@b.c'\nkey = ''\n", "key length"),
        ("[[psk]]\nidentity = 'a@b.c'\nkey = '00'\nentity = 'has space'\n", "entity"),
        ("psk = 3\n", "array of tables"),
        ("[other]\n", "unknown top-level"),
        ("[[psk]\n", "invalid TOML"),
    ],
)
def test_bad_toml_is_reported_without_the_key(text: str, message: str) -> None:
    with pytest.raises(CredentialsLoadError, match=message) as info:
        parse_toml_table(text, "psk.toml")
    assert "psk.toml" in str(info.value)
    assert "zz-secret-zz" not in str(info.value)


def test_world_readable_file_is_refused(tmp_path: Path) -> None:
    path = write_private(tmp_path / "psk.toml", MINIMAL)
    path.chmod(0o644)
    with pytest.raises(CredentialsLoadError, match="chmod 600"):
        TomlPSKTable(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CredentialsLoadError, match="cannot read"):
        TomlPSKTable(tmp_path / "nope.toml")


def test_hot_reload_swaps_table_and_keeps_old_on_error(tmp_path: Path) -> None:
    path = write_private(tmp_path / "psk.toml", MINIMAL)
    table = TomlPSKTable(path)
    assert table.reload_if_changed() is False
    write_private(path, MINIMAL + f'\n[[psk]]\nidentity = "{LIGHT1_ID}"\nkey = "{LIGHT1_KEY}"\n')
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
    assert table.reload_if_changed() is True
    assert table.lookup(LIGHT1_ID) is not None
    write_private(path, "[[psk]\nbroken")
    with pytest.raises(CredentialsLoadError, match="invalid TOML"):
        table.reload_if_changed()
    assert table.lookup(LIGHT1_ID) is not None  # previous table still in use
    assert table.reload_if_changed() is False  # the same broken version is not retried in a loop


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _touch(path: Path, step: int) -> None:
    stamp = time.time_ns() + step * 10**9
    os.utime(path, ns=(stamp, stamp))


def test_poll_failure_grace_then_no_psk_and_recovery(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Missing / empty / invalid file: the last good table for TABLE_FAILURE_GRACE, then none (D27)."""
    clock = FakeClock()
    path = write_private(tmp_path / "psk.toml", MINIMAL)
    table = TomlPSKTable(path, failure_grace=10, clock=clock)
    path.write_text("")  # an editor truncating before it writes: not "zero entries"
    _touch(path, 1)
    table.poll()
    assert TD_ID in table and "file is empty" in caplog.text and str(path) in caplog.text
    write_private(path, "[[psk]\nbroken")
    _touch(path, 2)
    clock.now += 9.9
    table.poll()
    assert TD_ID in table and "invalid TOML" in caplog.text
    clock.now += 0.1
    table.poll()
    assert len(table) == 0 and "no PSK is served" in caplog.text
    path.unlink()
    table.poll()
    assert len(table) == 0
    write_private(path, MINIMAL)
    _touch(path, 3)
    table.poll()
    assert TD_ID in table and table.generation == 2
    assert "313233343536" not in caplog.text


def test_poll_deleted_file_revokes_everyone_after_the_grace(tmp_path: Path) -> None:
    clock = FakeClock()
    path = write_private(tmp_path / "psk.toml", MINIMAL)
    table = TomlPSKTable(path, failure_grace=10, clock=clock)
    path.unlink()
    table.poll()
    assert TD_ID in table
    clock.now += 10
    table.poll()
    assert TD_ID not in table


def test_poll_revoking_one_entry_is_immediate(tmp_path: Path) -> None:
    light = f'\n[[psk]]\nidentity = "{LIGHT1_ID}"\nkey = "{LIGHT1_KEY}"\n'
    path = write_private(tmp_path / "psk.toml", MINIMAL + light)
    table = TomlPSKTable(path)
    write_private(path, MINIMAL)
    _touch(path, 1)
    table.poll()
    assert LIGHT1_ID not in table and TD_ID in table


def test_replace_is_atomic_for_a_live_connection(tmp_path: Path) -> None:
    table = MemoryPSKTable([PSKEntry(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), LIGHT1_AE)])
    server = TLSContext.server(ServerConfig(table.lookup))
    client = TLSContext.client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY)))
    s, c = handshake_pair(server, client)
    table.replace([])
    c.send(b"still here")
    assert s.receive_data(c.data_to_send())  # the established session is unaffected
    with pytest.raises(Exception, match="unknown psk identity"):
        handshake_pair(server, client)


# ---------------------------------------------------------------------------------------------- SQLite


def test_sqlite_round_trip_and_management(tmp_path: Path) -> None:
    db = tmp_path / "keys.db"
    with SQLitePSKStore(db) as store:
        store.add(PSKEntry(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), LIGHT1_AE, "light 1"))
        with pytest.raises(Conflict):
            store.add(PSKEntry(LIGHT1_ID, SecretKey(b"x")))
        store.add(PSKEntry(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), LIGHT1_AE), replace=True)
        assert len(store) == 1
        [row] = store.list()
        assert (row.identity, row.entity, row.key_length) == (LIGHT1_ID, LIGHT1_AE, 8)
        assert "1a2b" not in repr(row)
    assert (tmp_path / "keys.db.key").stat().st_mode & 0o777 == 0o600
    assert db.stat().st_mode & 0o777 == 0o600
    with SQLitePSKStore(db) as store:  # reopened with the same master key file
        entry = store.lookup(LIGHT1_ID)
        assert entry is not None and entry.key == SecretKey.from_hex(LIGHT1_KEY)
        assert store.lookup("nobody@x.com") is None
        store.remove(LIGHT1_ID)
        with pytest.raises(NotFound):
            store.remove(LIGHT1_ID)


def test_sqlite_keys_are_encrypted_at_rest(tmp_path: Path) -> None:
    db = tmp_path / "keys.db"
    key = secrets.token_bytes(32)
    with SQLitePSKStore(db) as store:
        store.add(PSKEntry(LIGHT1_ID, SecretKey(key)))
    raw = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith("keys.db") and p.suffix != ".key")
    assert key not in raw and key.hex().encode() not in raw
    assert LIGHT1_ID.encode() in raw  # identities are not secret


def test_sqlite_wrong_master_key_and_tampering(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               caplog: pytest.LogCaptureFixture) -> None:
    db = tmp_path / "keys.db"
    with SQLitePSKStore(db) as store:
        store.add(PSKEntry(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY)))
        store.add(PSKEntry(TD_ID, SecretKey.from_hex(TD_KEY)))
    monkeypatch.setenv(MASTER_KEY_ENV, "00" * 32)
    with pytest.raises(StorageError, match="master key does not match"):
        SQLitePSKStore(db)
    monkeypatch.delenv(MASTER_KEY_ENV)
    # moving one identity's sealed key to another identity is detected (identity is the AEAD's AD)
    con = sqlite3.connect(db)
    sealed = con.execute("SELECT nonce, sealed FROM psk WHERE identity = ?", (TD_ID,)).fetchone()
    con.execute("UPDATE psk SET nonce = ?, sealed = ? WHERE identity = ?", (*sealed, LIGHT1_ID))
    con.commit()
    con.close()
    with SQLitePSKStore(db) as store:  # refused as unknown (D44), with an ERROR
        assert store.lookup(LIGHT1_ID) is None
    assert any("fails its integrity check" in r.getMessage() for r in caplog.records)


def test_sqlite_master_key_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MASTER_KEY_ENV, "ab" * 32)
    with SQLitePSKStore(tmp_path / "keys.db") as store:
        store.add(PSKEntry(TD_ID, SecretKey.from_hex(TD_KEY)))
    assert not (tmp_path / "keys.db.key").exists()
    monkeypatch.setenv(MASTER_KEY_ENV, "ab" * 31)
    with pytest.raises(ConfigurationError, match="64 hex digits"):
        SQLitePSKStore(tmp_path / "keys.db")


def test_sqlite_import_is_all_or_nothing(tmp_path: Path) -> None:
    with SQLitePSKStore(tmp_path / "keys.db") as store:
        store.add(PSKEntry(TD_ID, SecretKey.from_hex(TD_KEY)))
        batch = [PSKEntry(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY)), PSKEntry(TD_ID, SecretKey(b"other"))]
        with pytest.raises(Conflict, match="nothing was imported"):
            store.add_many(batch)
        assert len(store) == 1 and store.lookup(LIGHT1_ID) is None
        assert store.add_many(batch, replace=True) == 2


def test_sqlite_lookup_failure_rejects_handshake(tmp_path: Path) -> None:
    store = SQLitePSKStore(tmp_path / "keys.db")
    store.add(PSKEntry(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY)))
    server = TLSContext.server(ServerConfig(store.lookup))
    client = TLSContext.client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY)))
    handshake_pair(server, client)
    store.close()  # every later lookup raises StorageError inside the handshake
    with pytest.raises(Exception, match="psk lookup failed"):
        handshake_pair(server, client)


# ---------------------------------------------------------------------------------------------- 1,000,000

MILLION = 1_000_000


def _million(last: PSKEntry) -> list[PSKEntry]:
    key = SecretKey(b"\x00" * 16)
    entries = [PSKEntry(f"id{i}@bench.example", key, f"CAE{i}") for i in range(MILLION - 1)]
    entries.append(last)
    return entries


@pytest.mark.slow
def test_one_million_identities_toml(tmp_path: Path) -> None:
    path = tmp_path / "big.toml"
    with path.open("w") as fh:
        for i in range(MILLION - 1):
            fh.write(f'[[psk]]\nidentity = "id{i}@bench.example"\nkey = "{i:032x}"\nentity = "CAE{i}"\n')
        fh.write(f'[[psk]]\nidentity = "{LIGHT1_ID}"\nkey = "{LIGHT1_KEY}"\nentity = "{LIGHT1_AE}"\n')
    path.chmod(0o600)
    table = TomlPSKTable(path)
    assert len(table) == MILLION
    server = TLSContext.server(ServerConfig(table.lookup))
    for ident, key in ((LIGHT1_ID, LIGHT1_KEY), ("id0@bench.example", f"{0:032x}"),
                       (f"id{MILLION - 2}@bench.example", f"{MILLION - 2:032x}")):
        s, _ = handshake_pair(server, TLSContext.client(ClientConfig(ident, SecretKey.from_hex(key))))
        assert s.session is not None and s.session.psk_identity == ident


@pytest.mark.slow
def test_one_million_identities_sqlite(tmp_path: Path) -> None:
    with SQLitePSKStore(tmp_path / "keys.db") as store:
        assert store.add_many(_million(PSKEntry(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), LIGHT1_AE))) == MILLION
        assert len(store) == MILLION
        server = TLSContext.server(ServerConfig(store.lookup))
        s, _ = handshake_pair(server, TLSContext.client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY))))
        assert s.session is not None and s.session.entity == LIGHT1_AE
        start = time.perf_counter()
        for i in range(0, MILLION - 1, 997):
            assert store.lookup(f"id{i}@bench.example") is not None
        per_lookup = (time.perf_counter() - start) / (MILLION // 997)
        print(f"sqlite lookup in a 1M store: {per_lookup * 1e6:.1f} us")  # figure for the notes, not asserted
