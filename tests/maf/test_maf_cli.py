"""`m2msec maf clients add|list|revoke` as real processes on a real SQLite store."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from m2msec.keys.secret import SecretKey
from m2msec.keys.sqlite_store import MASTER_KEY_ENV
from m2msec.store import open_store

M2MSEC = [sys.executable, "-m", "m2msec.cli.main"]
KM_HEX = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"


def run(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in (MASTER_KEY_ENV, "M2MSEC_MAF_STORE")}
    full.update(env or {})
    return subprocess.run([*M2MSEC, "maf", "--store", f"sqlite://{tmp_path}/maf.db", *args], capture_output=True,
                          text=True, timeout=60, env=full)


def one_line_error(result: subprocess.CompletedProcess[str], *parts: str) -> None:
    assert result.returncode != 0, result.stdout + result.stderr
    assert result.stderr.startswith("m2msec: error: ") and result.stderr.count("\n") == 1, result.stderr
    for part in parts:
        assert part in result.stderr


def test_add_list_revoke(tmp_path: Path) -> None:
    km = tmp_path / "km.hex"
    km.write_text(KM_HEX)
    km.chmod(0o600)
    added = run(tmp_path, "clients", "add", "Light-1", "--identity", "/mn-cse-123456/CAE1", "--key-file", str(km))
    assert added.returncode == 0, added.stderr
    assert "light-1@maf.m2msec.localhost" in added.stdout and "//m2msec.localhost/mn-cse-123456/CAE1" in added.stdout
    out = tmp_path / "anon.km"
    gen = run(tmp_path, "clients", "add", "anon@maf.m2msec.localhost", "--generate", "32", "--out", str(out))
    assert gen.returncode == 0, gen.stderr
    assert "11-anon@maf.m2msec.localhost" in gen.stdout
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and len(bytes.fromhex(out.read_text())) == 32

    listed = run(tmp_path, "clients", "list")
    assert listed.returncode == 0 and "light-1@maf.m2msec.localhost" in listed.stdout and "2 clients" in listed.stdout
    assert KM_HEX not in listed.stdout + listed.stderr and out.read_text().strip() not in listed.stdout

    # the key went into the store sealed, under the canonical KmID
    master = SecretKey.from_hex((tmp_path / "maf.db.key").read_text())
    with open_store(f"sqlite://{tmp_path}/maf.db", master) as store:
        client = store.get_client("light-1@maf.m2msec.localhost")
        assert client is not None and client.km == SecretKey.from_hex(KM_HEX)
    assert bytes.fromhex(KM_HEX) not in (tmp_path / "maf.db").read_bytes()

    revoked = run(tmp_path, "clients", "revoke", "LIGHT-1")
    assert revoked.returncode == 0 and "revoked light-1@maf.m2msec.localhost" in revoked.stdout
    assert "revoked" in run(tmp_path, "clients", "list").stdout


@pytest.mark.parametrize(("args", "message"), [
    (["clients", "add", "x@other.example.com", "--key-env", "KM"], "this MAF is 'maf.m2msec.localhost'"),
    (["clients", "add", "bad id", "--key-env", "KM"], "KmID"),
    (["clients", "add", "x", "--identity", "/a b", "--key-env", "KM"], "--identity"),
    (["clients", "add", "x", "--generate", "32"], "--out"),
    (["clients", "add", "x", "--key-env", "NOPE_NOT_SET"], "NOPE_NOT_SET"),
    (["clients", "revoke", "ghost"], "no MAF client"),
])
def test_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    one_line_error(run(tmp_path, *args, env={"KM": KM_HEX}), message)


def test_duplicate_kmid_and_bad_config(tmp_path: Path) -> None:
    assert run(tmp_path, "clients", "add", "x", "--key-env", "KM", env={"KM": KM_HEX}).returncode == 0
    dup = run(tmp_path, "clients", "add", "X", "--key-env", "KM", env={"KM": KM_HEX})
    one_line_error(dup, "exists already")
    assert KM_HEX not in dup.stderr
    cfg = tmp_path / "maf.toml"
    cfg.write_text('maf_fqdn = "maf.example.com"\nlisten = 8444\n')
    one_line_error(run(tmp_path, "--config", str(cfg), "clients", "list"), str(cfg), "listen must be a str")
    cfg.write_text('maf_fqnd = "maf.example.com"\n')
    one_line_error(run(tmp_path, "--config", str(cfg), "clients", "list"), "unknown key 'maf_fqnd'")


async def test_serve_with_no_configuration(tmp_path: Path) -> None:
    """`m2msec maf serve` on embedded defaults (XDG data dir in tmp), a KmID handshake, then SIGTERM: exit 0."""
    import asyncio
    import signal

    from m2msec.saef import ANY_ENTITY, PSKCredentials, establish_sa

    env = {k: v for k, v in os.environ.items() if k not in (MASTER_KEY_ENV, "M2MSEC_MAF_STORE", "M2MSEC_DB")}
    env.update(XDG_DATA_HOME=str(tmp_path / "data"), KM=KM_HEX)
    add = subprocess.run([*M2MSEC, "maf", "clients", "add", "c1", "--key-env", "KM"], capture_output=True, text=True,
                         timeout=60, env=env)
    assert add.returncode == 0, add.stderr
    assert (tmp_path / "data" / "m2msec" / "maf.db").exists()
    proc = await asyncio.create_subprocess_exec(*M2MSEC, "maf", "serve", "--listen", "127.0.0.1:0", env=env,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stderr is not None
        line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
        assert "MAF maf.m2msec.localhost listening on 127.0.0.1:" in line, line
        port = int(line.split("listening on 127.0.0.1:")[1].split()[0])
        sa = await establish_sa("127.0.0.1", port, PSKCredentials("c1@maf.m2msec.localhost",
                                                                  SecretKey.from_hex(KM_HEX), peer_entity=ANY_ENTITY))
        await sa.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        rest = (await proc.stderr.read()).decode()
        assert "Traceback" not in rest and KM_HEX not in rest
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
