"""Files that hold secrets: permissions (group access refused, D35), the master key (D36), the store file (D37)
and atomic 0600 key files. Real files in a temporary directory."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import LIGHT1_ID, LIGHT1_KEY, TD_ID, TD_KEY
from m2msec.errors import ConfigurationError, CredentialsLoadError, StorageError
from m2msec.keys.files import check_new_file, write_secret_file
from m2msec.keys.secret import SecretKey
from m2msec.keys.sqlite_store import MASTER_KEY_ENV, SQLitePSKStore, load_master_key
from m2msec.keys.table import PSKEntry, TomlPSKTable, check_file_permissions

TOML = f'[[psk]]\nidentity = "{LIGHT1_ID}"\nkey = "{LIGHT1_KEY}"\n'


@pytest.fixture
def umask_000() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _store(tmp_path: Path) -> Path:
    db = tmp_path / "keys.db"
    with SQLitePSKStore(db) as store:
        store.add(PSKEntry(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY)))
    return db


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o610, 0o601, 0o660, 0o644], ids=oct)
def test_any_group_or_other_access_is_refused(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "psk.toml"
    path.write_text(TOML)
    path.chmod(mode)
    with pytest.raises(CredentialsLoadError) as info:
        check_file_permissions(path)
    message = str(info.value)
    assert message.startswith(f"{path}: holds keys but group or other users have access to it (mode {mode:04o})")
    assert message.endswith(f"run: chmod 600 {path}")
    path.chmod(0o600)
    check_file_permissions(path)
    path.chmod(0o400)
    check_file_permissions(path)


def test_group_readable_psk_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "psk.toml"
    path.write_text(TOML)
    path.chmod(0o640)
    with pytest.raises(CredentialsLoadError, match=f"{path}: holds keys but group .* chmod 600 {path}"):
        TomlPSKTable(path)


def test_group_readable_master_key_file_is_refused(tmp_path: Path) -> None:
    db = _store(tmp_path)
    key_file = tmp_path / "keys.db.key"
    key_file.chmod(0o640)
    with pytest.raises(CredentialsLoadError, match=f"{key_file}: holds keys but group .* chmod 600"):
        SQLitePSKStore(db)


def test_group_readable_store_file_is_refused_not_silently_fixed(tmp_path: Path) -> None:
    db = _store(tmp_path)
    db.chmod(0o640)
    with pytest.raises(CredentialsLoadError, match=f"{db}: holds keys but group .* chmod 600 {db}"):
        SQLitePSKStore(db)
    assert stat.S_IMODE(db.stat().st_mode) == 0o640  # left as it was: the operator decides


def test_new_store_and_its_master_key_are_0600_whatever_the_umask(tmp_path: Path, umask_000: None) -> None:
    db = tmp_path / "keys.db"
    with SQLitePSKStore(db) as store:
        store.add(PSKEntry(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY)))
        for path in (db, tmp_path / "keys.db.key", tmp_path / "keys.db-wal", tmp_path / "keys.db-shm"):
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_missing_master_key_of_an_existing_store_is_refused(tmp_path: Path) -> None:
    db = _store(tmp_path)
    key_file = tmp_path / "keys.db.key"
    key_file.unlink()
    with pytest.raises(ConfigurationError) as info:
        SQLitePSKStore(db)
    assert "master key file not found" in str(info.value) and "existing key store" in str(info.value)
    assert str(key_file) in str(info.value)
    assert not key_file.exists()  # no fresh key that could never read the store
    other = tmp_path / "elsewhere.key"
    with pytest.raises(ConfigurationError, match="master key file not found"):
        SQLitePSKStore(db, master_key_file=other)
    assert not other.exists()


def test_master_key_is_created_only_for_a_new_or_empty_store(tmp_path: Path) -> None:
    db = tmp_path / "new.db"
    db.touch(mode=0o600)  # an empty file is a new store
    with SQLitePSKStore(db, master_key_file=tmp_path / "m.key") as store:
        store.add(PSKEntry(TD_ID, SecretKey.from_hex(TD_KEY)))
    assert stat.S_IMODE((tmp_path / "m.key").stat().st_mode) == 0o600
    with pytest.raises(ConfigurationError, match="not found"):
        load_master_key(tmp_path / "other.db", create=False)


def test_explicit_master_key_file_beats_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = _store(tmp_path)
    monkeypatch.setenv(MASTER_KEY_ENV, "00" * 32)  # another store's key, in the environment
    with SQLitePSKStore(db, master_key_file=tmp_path / "keys.db.key") as store:
        entry = store.lookup(LIGHT1_ID)
        assert entry is not None and entry.key == SecretKey.from_hex(LIGHT1_KEY)
    # without an explicit file, the environment still beats the default DB.key
    with pytest.raises(StorageError, match="master key does not match"):
        SQLitePSKStore(db)


def test_write_secret_file_is_0600_and_refuses_an_existing_file(tmp_path: Path, umask_000: None) -> None:
    path = tmp_path / "new.key"
    write_secret_file(path, "00112233\n")
    assert path.read_text() == "00112233\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.key"]  # no temporary file left
    with pytest.raises(ConfigurationError, match="exists already"):
        write_secret_file(path, "ffff\n")
    assert path.read_text() == "00112233\n"
    link = tmp_path / "dangling"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigurationError, match="exists already"):
        check_new_file(link)
    with pytest.raises(ConfigurationError, match="does not exist"):
        check_new_file(tmp_path / "no" / "dir.key")


# -- ownership and directories (StrictModes, D43) ----------------------------------------------------------------

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to make files owned by another user")


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757, 0o772], ids=oct)
def test_a_directory_others_may_write_is_refused(tmp_path: Path, mode: int) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    path = shared / "psk.toml"
    path.write_text(TOML)
    path.chmod(0o600)
    shared.chmod(mode)
    with pytest.raises(CredentialsLoadError) as info:
        check_file_permissions(path)
    assert str(info.value) == (f"{path}: holds keys but its directory {shared} is writable by group or other users "
                               f"(mode {mode:04o}), who could replace the file; run: chmod go-w {shared}")
    shared.chmod(0o755)
    check_file_permissions(path)


def test_a_writable_grandparent_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a" / "b").mkdir(parents=True)
    path = tmp_path / "a" / "b" / "psk.toml"
    path.write_text(TOML)
    path.chmod(0o600)
    (tmp_path / "a").chmod(0o777)  # b can be renamed away and replaced by another user's directory
    with pytest.raises(CredentialsLoadError, match=f"its directory {tmp_path / 'a'} is writable"):
        check_file_permissions(path)


def test_a_sticky_world_writable_directory_is_accepted_for_our_own_file(tmp_path: Path) -> None:
    shared = tmp_path / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: others cannot rename or remove our entries
    path = shared / "psk.toml"
    path.write_text(TOML)
    path.chmod(0o600)
    check_file_permissions(path)
    TomlPSKTable(path)


def test_a_symlink_in_a_writable_directory_is_refused(tmp_path: Path) -> None:
    safe, shared = tmp_path / "safe", tmp_path / "shared"
    safe.mkdir()
    shared.mkdir()
    target = safe / "psk.toml"
    target.write_text(TOML)
    target.chmod(0o600)
    link = shared / "psk.toml"
    link.symlink_to(target)
    shared.chmod(0o777)  # others may point the link elsewhere
    with pytest.raises(CredentialsLoadError, match=f"its directory {shared} is writable"):
        check_file_permissions(link)


def test_a_relative_link_chain_through_a_writable_directory_is_refused(tmp_path: Path) -> None:
    """D43 over the whole chain: safe/psk.toml -> ../public/hop -> ../safe/real.toml (relative links), with
    ``public`` world-writable: the middle link's directory is named; a chain of safe directories passes."""
    safe, public = tmp_path / "safe", tmp_path / "public"
    safe.mkdir(mode=0o700)
    public.mkdir(mode=0o700)
    target = safe / "real.toml"
    target.write_text(TOML)
    target.chmod(0o600)
    (public / "hop").symlink_to(Path("..") / "safe" / "real.toml")
    link = safe / "psk.toml"
    link.symlink_to(Path("..") / "public" / "hop")
    check_file_permissions(link)  # every directory along the chain is safe
    public.chmod(0o777)
    with pytest.raises(CredentialsLoadError, match=f"its directory {public} is writable"):
        check_file_permissions(link)


@root_only
def test_a_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "psk.toml"
    path.write_text(TOML)
    path.chmod(0o600)
    os.chown(path, 65534, 65534)
    with pytest.raises(CredentialsLoadError) as info:
        check_file_permissions(path)
    assert str(info.value) == (f"{path}: holds keys but is owned by uid 65534, not by this user (uid 0) or root: "
                               f"another user may have replaced it; check its content, then run: chown 0 {path}")


@root_only
def test_a_directory_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    path = theirs / "psk.toml"
    path.write_text(TOML)
    path.chmod(0o600)
    os.chown(theirs, 65534, 65534)
    with pytest.raises(CredentialsLoadError, match=f"its directory {theirs} is owned by uid 65534"):
        check_file_permissions(path)


@root_only
def test_a_reload_of_another_users_table_is_refused_and_the_old_one_kept(tmp_path: Path) -> None:
    path = tmp_path / "psk.toml"
    path.write_text(TOML)
    path.chmod(0o600)
    table = TomlPSKTable(path)
    new = tmp_path / "new.toml"
    new.write_text(TOML + f'[[psk]]\nidentity = "{TD_ID}"\nkey = "{TD_KEY}"\n')
    new.chmod(0o600)
    os.chown(new, 65534, 65534)
    new.rename(path)
    table.poll()
    assert TD_ID not in table and LIGHT1_ID in table and table.generation == 0
