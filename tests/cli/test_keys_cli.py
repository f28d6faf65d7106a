"""`m2msec keys` and the files it reads and writes, as real processes on real files."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import LIGHT1_ID, LIGHT1_KEY, LIGHT2_ID, LIGHT2_KEY
from m2msec.keys.sqlite_store import MASTER_KEY_ENV

M2MSEC = [sys.executable, "-m", "m2msec.cli.main"]


def run(args: list[str], *, env: dict[str, str] | None = None, umask: int | None = None
        ) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != MASTER_KEY_ENV}
    full_env.update(env or {})

    def set_umask() -> None:
        if umask is not None:
            os.umask(umask)

    return subprocess.run([*M2MSEC, *args], capture_output=True, text=True, timeout=60, env=full_env,
                          preexec_fn=set_umask)


def private(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def one_line_error(result: subprocess.CompletedProcess[str], code: int, *parts: str) -> None:
    assert result.returncode == code, result.stdout + result.stderr
    assert result.stderr.startswith("m2msec: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    for part in parts:
        assert part in result.stderr, (part, result.stderr)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    db = tmp_path / "keys.db"
    key = private(tmp_path / "light1.key", LIGHT1_KEY + "\n")
    result = run(["keys", "--db", str(db), "add", "--identity", LIGHT1_ID, "--key-file", str(key)])
    assert result.returncode == 0, result.stderr
    return db


def identities(db: Path, *extra: str) -> str:
    result = run(["keys", "--db", str(db), *extra, "list"])
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_generate_out_existing_file_is_refused_before_anything_is_stored(store: Path, tmp_path: Path) -> None:
    out = private(tmp_path / "taken.key", "precious\n")
    result = run(["keys", "--db", str(store), "add", "--identity", LIGHT2_ID, "--generate", "32", "--out", str(out)])
    one_line_error(result, 2, str(out), "exists already")
    assert out.read_text() == "precious\n"
    listing = identities(store)
    assert LIGHT2_ID not in listing and "1 identities" in listing


def test_generate_out_is_0600_from_creation_and_complete(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "new.key"
    result = run(["keys", "--db", str(store), "add", "--identity", LIGHT2_ID, "--generate", "32", "--out", str(out)],
                 umask=0)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert len(bytes.fromhex(out.read_text().strip())) == 32
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary file left
    assert LIGHT2_ID in identities(store)


def test_generate_out_is_removed_when_the_store_refuses_the_entry(store: Path, tmp_path: Path) -> None:
    out = tmp_path / "dup.key"
    result = run(["keys", "--db", str(store), "add", "--identity", LIGHT1_ID, "--generate", "32", "--out", str(out)])
    one_line_error(result, 1, "exists already (use --replace)")
    assert not out.exists()  # the key was not stored: no file claims it was


def test_generate_out_into_a_missing_directory(store: Path, tmp_path: Path) -> None:
    result = run(["keys", "--db", str(store), "add", "--identity", LIGHT2_ID, "--generate", "32",
                  "--out", str(tmp_path / "no" / "such.key")])
    one_line_error(result, 2, "does not exist")
    assert LIGHT2_ID not in identities(store)


def test_missing_master_key_of_an_existing_store_is_refused(store: Path) -> None:
    key_file = store.with_name("keys.db.key")
    key_file.unlink()
    result = run(["keys", "--db", str(store), "list"])
    one_line_error(result, 2, str(key_file), "master key file not found", "existing key store")
    assert not key_file.exists()
    gateway = run(["gateway", "--db", str(store), "--backend", "http://127.0.0.1:1", "--listen", "127.0.0.1:0"])
    one_line_error(gateway, 2, "master key file not found")


def test_master_key_file_option_beats_the_environment(store: Path, tmp_path: Path) -> None:
    key_file = store.with_name("keys.db.key")
    moved = tmp_path / "master.key"
    key_file.rename(moved)
    wrong = {MASTER_KEY_ENV: "00" * 32}
    listing = identities(store, "--master-key-file", str(moved))
    assert LIGHT1_ID in listing
    result = run(["keys", "--db", str(store), "--master-key-file", str(moved), "list"], env=wrong)
    assert result.returncode == 0, result.stderr
    assert LIGHT1_ID in result.stdout
    # with no --master-key-file, the environment is used (here: the wrong key, detected)
    result = run(["keys", "--db", str(store), "list"], env=wrong)
    one_line_error(result, 1, "master key does not match")


@pytest.mark.parametrize("mode", [0o640, 0o604], ids=oct)
def test_group_or_world_readable_secret_files_are_refused(store: Path, tmp_path: Path, mode: int) -> None:
    key = private(tmp_path / "light2.key", LIGHT2_KEY, mode)
    add = run(["keys", "--db", str(store), "add", "--identity", LIGHT2_ID, "--key-file", str(key)])
    one_line_error(add, 2, str(key), f"mode {mode:04o}", f"chmod 600 {key}")

    table = private(tmp_path / "psk.toml", f'[[psk]]\nidentity = "{LIGHT2_ID}"\nkey = "{LIGHT2_KEY}"\n', mode)
    imp = run(["keys", "--db", str(store), "import", str(table)])
    one_line_error(imp, 2, str(table), f"chmod 600 {table}")
    gw = run(["gateway", "--psk-table", str(table), "--backend", "http://127.0.0.1:1", "--listen", "127.0.0.1:0"])
    one_line_error(gw, 2, str(table), f"chmod 600 {table}")

    master = store.with_name("keys.db.key")
    master.chmod(mode)
    listing = run(["keys", "--db", str(store), "list"])
    one_line_error(listing, 2, str(master), f"chmod 600 {master}")
    master.chmod(0o600)

    store.chmod(mode)
    listing = run(["keys", "--db", str(store), "list"])
    one_line_error(listing, 2, str(store), f"chmod 600 {store}")
    store.chmod(0o600)

    req = run(["request", "--connect", "127.0.0.1:1", "--identity", LIGHT2_ID, "--key-file", str(key),
               "--entity-id", "mn-cse-123456", "/x"])
    one_line_error(req, 2, str(key), f"chmod 600 {key}")
    assert LIGHT2_ID not in identities(store)


def test_group_readable_private_keys_are_refused(tmp_path: Path) -> None:
    ca, srv = tmp_path / "ca", tmp_path / "gw"
    for args in (["pki", "ca", "--out", str(ca), "--name", "root", "--permit-dns", "m2m.example.com"],
                 ["pki", "issue", "--ca", str(ca), "--flavour", "cse-id", "--id", "in-cse",
                  "--sp-domain", "m2m.example.com", "--out", str(srv)]):
        result = run(args)
        assert result.returncode == 0, result.stderr
    key = Path(f"{srv}.key")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    key.chmod(0o640)
    gw = run(["gateway", "--profiles", "ecdhe-ecdsa", "--cert", f"{srv}.crt", "--key", str(key),
              "--client-ca", f"{ca}.crt", "--backend", "http://127.0.0.1:1", "--listen", "127.0.0.1:0",
              "--sp-id", "m2m.provider.com"])
    one_line_error(gw, 2, str(key), f"chmod 600 {key}")
    req = run(["request", "--connect", "127.0.0.1:1", "--cert", f"{srv}.crt", "--cert-key", str(key),
               "--ca", f"{ca}.crt", "--entity-id", "mn-cse-123456", "/x"])
    one_line_error(req, 2, str(key), f"chmod 600 {key}")
