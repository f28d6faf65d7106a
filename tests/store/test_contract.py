"""The key-store contract, the same on SQLite and PostgreSQL (``store_url`` runs each test on both)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from m2msec.errors import ConfigurationError, Conflict, NotFound, StorageError
from m2msec.keys.secret import SecretKey
from m2msec.store import AsyncKeyStore, KeyStore, MAFClient, open_store
from m2msec.store.records import KIND_MAF_KEY

WRITER = str(Path(__file__).with_name("writer.py"))


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(store_url: str, master_key: SecretKey) -> Iterator[KeyStore]:
    with open_store(store_url, master_key) as s:
        yield s


def _client(kmid: str = "KmID-1", km: SecretKey | None = None) -> MAFClient:
    return MAFClient(kmid, km or SecretKey.generate(32), "CAE-client-1", 2e9, ("a", "b"), "admin.example.com",
                     "active", "reg-1")


def test_client_round_trip_update_delete(store: KeyStore) -> None:
    client = _client()
    store.register_client(client)
    assert store.get_client("KmID-1") == client
    assert store.get_client("KmID-2") is None
    with pytest.raises(Conflict):
        store.register_client(_client())
    changed = MAFClient(client.kmid, client.km, client.identity, 3e9, ("c",), None, "revoked", None)
    store.update_client(changed)
    assert store.get_client("KmID-1") == changed
    store.delete_client("KmID-1")
    assert store.get_client("KmID-1") is None
    with pytest.raises(NotFound):
        store.delete_client("KmID-1")
    with pytest.raises(NotFound):
        store.update_client(client)


def test_key_round_trip_allocation_update_delete(store: KeyStore) -> None:
    kc = SecretKey.generate(32)
    key = store.register_key(kc, source_id="KmID-1", suid=12, target_ids=["/id-in/CAE-B"], expires=1.5e9 + 0.25,
                             labels=["x"], admin_fqdn="admin.example.com")
    assert len(key.relative_key_id) == 32 and int(key.relative_key_id, 16) >= 0
    got = store.get_key(key.relative_key_id)
    assert got == key and got.kc == kc and got.expires == 1.5e9 + 0.25 and got.suid == 12
    assert got.target_ids == ("/id-in/CAE-B",)
    given = store.register_key(kc, source_id="KmID-1", suid=12, target_ids=[], expires=2e9,
                               relative_key_id="00112233445566778899aabbccddeeff")
    assert given.relative_key_id == "00112233445566778899aabbccddeeff"
    with pytest.raises(Conflict):
        store.register_key(kc, source_id="KmID-2", suid=12, target_ids=[], expires=2e9,
                           relative_key_id="00112233445566778899aabbccddeeff")
    assert store.get_key(given.relative_key_id) == given  # the conflicting registration changed nothing
    updated = type(key)(key.relative_key_id, kc, key.source_id, 22, ("/a", "/b"), 2e9)
    store.update_key(updated)
    assert store.get_key(key.relative_key_id) == updated
    store.delete_key(key.relative_key_id)
    assert store.get_key(key.relative_key_id) is None
    with pytest.raises(NotFound):
        store.delete_key(key.relative_key_id)


def test_allocation_draws_again_on_a_taken_id(store_url: str, master_key: SecretKey) -> None:
    drawn = iter(["aa", "aa", "bb", "aa", "bb"])
    with open_store(store_url, master_key, new_id=lambda: next(drawn)) as s:
        kc = SecretKey.generate(16)
        first = s.register_key(kc, source_id="s", suid=12, target_ids=[], expires=2e9)
        second = s.register_key(kc, source_id="s", suid=12, target_ids=[], expires=2e9)
        assert (first.relative_key_id, second.relative_key_id) == ("aa", "bb")
        with pytest.raises(Conflict, match="no unused RelativeKeyID after 2 attempts"):
            s.register_key(kc, source_id="s", suid=12, target_ids=[], expires=2e9, attempts=2)


def test_purge_expired_uses_the_injected_clock(store_url: str, master_key: SecretKey) -> None:
    clock = Clock(1000.0)
    with open_store(store_url, master_key, clock=clock) as s:
        kc = SecretKey.generate(32)
        soon = s.register_key(kc, source_id="s", suid=12, target_ids=[], expires=1500.0)
        late = s.register_key(kc, source_id="s", suid=12, target_ids=[], expires=2500.0)
        s.register_client(MAFClient("forever", kc, "C1"))
        s.register_client(MAFClient("short", kc, "C2", expires=1200.0))
        assert s.purge_expired() == 0
        clock.now = 1500.0  # expiry is inclusive: at expirationTime the key is gone
        assert s.purge_expired() == 2
        assert s.get_key(soon.relative_key_id) is None and s.get_client("short") is None
        assert s.get_key(late.relative_key_id) == late and s.get_client("forever") is not None
        assert late.expired(2500.0) and not late.expired(2499.9)


def _raw_bytes(store_url: str, request: pytest.FixtureRequest) -> tuple[list[bytes], list[bytes]]:
    """What the database holds on disk: the SQLite files, or every column of every row, the table's data file
    and the server's WAL after a checkpoint."""
    if store_url.startswith("sqlite://"):
        db = Path(store_url.removeprefix("sqlite://"))
        return [p.read_bytes() for p in db.parent.glob(db.name + "*") if not p.name.endswith(".key")], []
    server = request.getfixturevalue("postgres_server")
    with psycopg.connect(store_url, autocommit=True) as conn:
        rows = conn.execute("SELECT kind, id, expires, meta, nonce, sealed FROM sealed_record").fetchall()
        conn.execute("CHECKPOINT")
        relation = conn.execute("SELECT pg_relation_filepath('sealed_record')").fetchone()
    assert relation is not None
    files = [server.datadir / relation[0], *sorted((server.datadir / "pg_wal").glob("0*"))]
    return [p.read_bytes() for p in files], [repr(rows).encode(), *(bytes(c) for r in rows for c in r[4:])]


def test_keys_are_sealed_at_rest(store_url: str, master_key: SecretKey, request: pytest.FixtureRequest) -> None:
    km, kc = SecretKey(b"K" * 7 + os.urandom(25)), SecretKey(b"C" * 7 + os.urandom(25))
    with open_store(store_url, master_key) as s:
        s.register_client(_client(km=km))
        key = s.register_key(kc, source_id="KmID-1", suid=12, target_ids=["/x"], expires=2e9)
        assert "redacted" in repr(key) and "redacted" in repr(s.get_client("KmID-1"))
    files, columns = _raw_bytes(store_url, request)
    assert any(key.relative_key_id.encode() in b for b in files)  # the files we read do hold the records
    assert any(b"CAE-client-1" in b for b in files)
    for blob in files + columns:
        for secret in (km.reveal(), kc.reveal(), master_key.reveal()):
            assert secret not in blob and secret.hex().encode() not in blob


def test_tampered_record_is_refused(store_url: str, master_key: SecretKey) -> None:
    with open_store(store_url, master_key) as s:
        key = s.register_key(SecretKey.generate(32), source_id="s", suid=12, target_ids=["/a"], expires=2e9)
        # widen who may retrieve the key without the master key: the AAD covers the metadata
        s._exec("UPDATE sealed_record SET meta = replace(meta, '/a', '/b') WHERE id = ?", (key.relative_key_id,))
        with pytest.raises(StorageError, match="integrity") as info:
            s.get_key(key.relative_key_id)
        assert key.kc.reveal().hex() not in str(info.value)


def test_wrong_master_key_is_a_clear_storage_error(store_url: str, master_key: SecretKey) -> None:
    with open_store(store_url, master_key) as s:
        s.register_client(_client())
    with pytest.raises(StorageError, match="master key does not match"):
        open_store(store_url, SecretKey.generate(32))
    with open_store(store_url, master_key) as s:
        assert s.get_client("KmID-1") is not None


def test_bad_urls_and_missing_postgres_key(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigurationError, match="unknown key store URL scheme"):
        open_store("mysql://x/y", SecretKey.generate(32))
    with pytest.raises(ConfigurationError, match="needs a path"):
        open_store("sqlite://", SecretKey.generate(32))
    monkeypatch.delenv("M2MSEC_MASTER_KEY", raising=False)
    with pytest.raises(ConfigurationError, match="needs its master key"):
        open_store("postgresql://u:secretpw@127.0.0.1:1/x")


def test_connection_failure_hides_the_password(master_key: SecretKey) -> None:
    with pytest.raises(StorageError) as info:
        open_store("postgresql://u:secretpw@127.0.0.1:1/x", master_key)
    assert "secretpw" not in str(info.value) and "***" in str(info.value)


async def test_two_connections_register_concurrently(store_url: str, master_key: SecretKey) -> None:
    stores = [AsyncKeyStore(open_store(store_url, master_key)) for _ in range(2)]
    try:
        kc = SecretKey.generate(32)
        keys = await asyncio.gather(*(stores[i % 2].register_key(kc, source_id="s", suid=12, target_ids=["/a"],
                                                                 expires=2e9) for i in range(40)))
        ids = {k.relative_key_id for k in keys}
        assert len(ids) == 40
        assert set(stores[0].store.ids(KIND_MAF_KEY)) == ids
        assert await stores[1].get_key(keys[0].relative_key_id) == keys[0]
    finally:
        for s in stores:
            await s.close()


def _writer(url: str, count: int, mode: str, master_key: SecretKey, delay: float = 0.0) -> subprocess.Popen[str]:
    """A writer process past its "ready" line, stderr merged into stdout. Never ``communicate()`` after
    ``readline()``: it reads the pipe's descriptor directly and so loses the ids ``readline()`` had already
    pulled into the stdout buffer (the 116-of-120 failure under load)."""
    env = {**os.environ, "M2MSEC_MASTER_KEY": master_key.reveal().hex()}
    proc = subprocess.Popen([sys.executable, WRITER, url, str(count), mode], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    time.sleep(delay)  # > 0: a parent slow to read, as on a loaded machine
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    return proc


def _finish(proc: subprocess.Popen[str], timeout: float) -> tuple[int, list[str]]:
    """Wait for a writer; its exit code and every line it printed after "ready" (buffered ones included)."""
    assert proc.stdout is not None
    reader = concurrent.futures.ThreadPoolExecutor(1)
    try:
        rest = reader.submit(proc.stdout.read).result(timeout=timeout)
        return proc.wait(timeout=timeout), rest.split()
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.shutdown(wait=True)
        proc.stdout.close()


def test_concurrent_processes_never_collide(store_url: str, master_key: SecretKey) -> None:
    with open_store(store_url, master_key):
        pass  # created once, so the writers only open it
    writers = [_writer(store_url, 40, "counter", master_key) for _ in range(3)]
    acknowledged: list[str] = []
    codes = []
    try:
        for proc in writers:
            code, lines = _finish(proc, 120)
            codes.append(code)
            acknowledged += lines if code == 0 else [" ".join(lines)]  # the error, for the assertion
    finally:
        for proc in writers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert codes == [0, 0, 0], acknowledged
    assert len(acknowledged) == 120 and len(set(acknowledged)) == 120  # every writer drew 0, 1, 2...: none shared
    with open_store(store_url, master_key) as s:
        assert set(s.ids(KIND_MAF_KEY)) == set(acknowledged)


def test_lines_printed_before_ready_was_read_are_counted(store_url: str, master_key: SecretKey) -> None:
    """Regression (116 of 120 under load): ids the writer printed while the parent was slow to read "ready"."""
    with open_store(store_url, master_key):
        pass
    proc = _writer(store_url, 5, "random", master_key, delay=1.5)  # the ids are printed before "ready" is read
    code, lines = _finish(proc, 60)
    assert code == 0 and len(set(lines)) == 5


def test_killed_writer_loses_no_acknowledged_record(store_url: str, master_key: SecretKey) -> None:
    with open_store(store_url, master_key):
        pass
    proc = _writer(store_url, 1_000_000, "random", master_key)
    assert proc.stdout is not None
    acknowledged = [proc.stdout.readline().strip() for _ in range(50)]
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:  # keep reading: the burst goes on while we kill it
        acknowledged.append(proc.stdout.readline().strip())
    proc.send_signal(signal.SIGKILL)
    code, rest = _finish(proc, 30)
    acknowledged += [line for line in rest if len(line) == 32]
    assert code == -signal.SIGKILL
    with open_store(store_url, master_key) as s:
        stored = set(s.ids(KIND_MAF_KEY))
        assert set(acknowledged) <= stored
        assert s.get_key(acknowledged[-1]) is not None


def test_sqlite_store_syncs_every_commit(tmp_path: Path, master_key: SecretKey) -> None:
    """D70: WAL with synchronous=FULL (2), so an acknowledged write survives a power loss, not only a crash."""
    from m2msec.store.sqlite import SQLiteKeyStore

    with SQLiteKeyStore(tmp_path / "s.db", master_key) as s:
        assert s._db.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert s._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert (tmp_path / "s.db").stat().st_mode & 0o077 == 0
