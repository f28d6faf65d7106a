"""`m2msec mef serve`, `enrolees add|list|revoke` and `targets add|list|revoke` as real processes on SQLite."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from leaks import assert_no_secret
from m2msec.keys.secret import SecretKey
from m2msec.keys.sqlite_store import MASTER_KEY_ENV
from m2msec.mef.client import MEFCredentials, MEFFetcher, MEFRefused, enrol

M2MSEC = [sys.executable, "-m", "m2msec.cli.main"]
KPM_HEX = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
GW_HEX = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"
GW = "in-cse.sp.example.com"
LABEL = b"oneM2M Enrolment Key to Usage-Constrained Symmetric Key derivation"


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in (MASTER_KEY_ENV, "M2MSEC_MEF_STORE", "M2MSEC_DB")}
    env.update(XDG_DATA_HOME=str(tmp_path / "data"), KPM=KPM_HEX, GWPSK=GW_HEX)
    return env


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*M2MSEC, "mef", *args], capture_output=True, text=True, timeout=60, env=_env(tmp_path))


def one_line_error(result: subprocess.CompletedProcess[str], *parts: str) -> None:
    assert result.returncode != 0, result.stdout + result.stderr
    assert result.stderr.startswith("m2msec: error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    for part in parts:
        assert part in result.stderr, result.stderr


def test_enrolees_and_targets_add_list_revoke(tmp_path: Path) -> None:
    added = run(tmp_path, "enrolees", "add", "kpm-1", "--identity", "/in-cse/CAE1", "--target", f"{GW}:22",
                "--target", "maf.sp.example.com:21", "--key-env", "KPM", "--lifetime", "600")
    assert added.returncode == 0, added.stderr
    assert (tmp_path / "data" / "m2msec" / "mef.db").exists()  # the default store, beside `m2msec keys`'s
    gen = tmp_path / "gw.hex"
    target = run(tmp_path, "targets", "add", GW, "--kind", "cse", "--generate", "32", "--out", str(gen))
    assert target.returncode == 0, target.stderr
    assert stat.S_IMODE(gen.stat().st_mode) == 0o600 and len(bytes.fromhex(gen.read_text().strip())) == 32
    assert run(tmp_path, "targets", "add", "maf.sp.example.com", "--kind", "maf", "--certificate").returncode == 0
    enrolees, targets = run(tmp_path, "enrolees", "list"), run(tmp_path, "targets", "list")
    assert "kpm-1" in enrolees.stdout and "//m2msec.localhost/in-cse/CAE1" in enrolees.stdout
    assert f"{GW}:22" in enrolees.stdout and "1 enrolees" in enrolees.stdout
    assert GW in targets.stdout and "certificate" in targets.stdout and "2 targets" in targets.stdout
    everything = "".join(r.stdout + r.stderr for r in (added, target, enrolees, targets))
    assert_no_secret(everything, [bytes.fromhex(KPM_HEX), bytes.fromhex(gen.read_text().strip())], where="CLI")
    assert run(tmp_path, "enrolees", "revoke", "kpm-1").returncode == 0
    assert "revoked" in run(tmp_path, "enrolees", "list").stdout
    assert run(tmp_path, "targets", "revoke", GW).returncode == 0
    assert "1 targets" in run(tmp_path, "targets", "list").stdout


@pytest.mark.parametrize(("args", "parts"), [
    (("enrolees", "add", "k", "--identity", "/c/A", "--target", "in-cse.example:9", "--key-env", "KPM"),
     ("SUIDs",)),
    (("enrolees", "add", "k", "--identity", "/c/A", "--target", "nosuid", "--key-env", "KPM"), ("TARGET_ID:SUID",)),
    (("enrolees", "add", "k", "--identity", "not an id", "--target", "x.example:22", "--key-env", "KPM"),
     ("--identity",)),
    (("enrolees", "add", "k", "--identity", "/c/A", "--target", "x.example:22", "--generate", "32"), ("--out",)),
    (("enrolees", "revoke", "nobody"), ("no enrolee nobody",)),
    (("targets", "revoke", "x.example"), ("no Enrolment Target",)),
    (("targets", "add", "not a host", "--kind", "cse", "--key-env", "GWPSK"), ("Enrolment-Target-ID",)),
])
def test_errors_are_one_line(tmp_path: Path, args: tuple[str, ...], parts: tuple[str, ...]) -> None:
    one_line_error(run(tmp_path, *args), *parts)


def test_an_identity_is_an_enrolee_or_a_target_never_both(tmp_path: Path) -> None:
    assert run(tmp_path, "targets", "add", GW, "--kind", "cse", "--key-env", "GWPSK").returncode == 0
    one_line_error(run(tmp_path, "enrolees", "add", GW, "--identity", "/c/A", "--target", f"{GW}:22",
                       "--key-env", "KPM"), "Enrolment Target")


async def test_serve_enrol_fetch(tmp_path: Path) -> None:
    """`m2msec mef serve` on embedded defaults (XDG data dir in tmp): an enrolee enrols, the target fetches its Kpsa."""
    for args in (("enrolees", "add", "kpm-1", "--identity", "/in-cse/CAE1", "--target", f"{GW}:22", "--key-env",
                  "KPM"), ("targets", "add", GW, "--kind", "cse", "--key-env", "GWPSK")):
        done = run(tmp_path, *args)
        assert done.returncode == 0, done.stderr
    proc = await asyncio.create_subprocess_exec(*M2MSEC, "-v", "mef", "serve", "--listen", "127.0.0.1:0",
                                                env=_env(tmp_path), stderr=asyncio.subprocess.PIPE)
    try:
        assert proc.stderr is not None
        before = ""
        while "listening on" not in (line := (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()):
            assert line, before
            before += line
        assert "MEF mef.m2msec.localhost listening on 127.0.0.1:" in line, line
        port = int(line.split("listening on 127.0.0.1:")[1].split()[0])
        got = await enrol(f"127.0.0.1:{port}", MEFCredentials("kpm-1", SecretKey.from_hex(KPM_HEX)),
                          mef_fqdn="mef.m2msec.localhost")
        async with MEFFetcher(f"127.0.0.1:{port}", MEFCredentials(GW, SecretKey.from_hex(GW_HEX)),
                              mef_fqdn="mef.m2msec.localhost") as fetcher:
            kpsa = await fetcher.fetch(got.keid, 22)
            with pytest.raises(MEFRefused):
                await fetcher.fetch(got.keid, 21)
        want = hmac.new(got.ke.reveal(), LABEL + b"22" + GW.encode(), hashlib.sha256).digest()
        assert kpsa.credential.reveal() == want and kpsa.enrolee_id == "//m2msec.localhost/in-cse/CAE1"
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
        rest = before + (await proc.stderr.read()).decode()
        assert "Traceback" not in rest and str(got.keid) in rest  # -v logs the enrolment (identifiers only)
        assert_no_secret(rest, [bytes.fromhex(KPM_HEX), bytes.fromhex(GW_HEX), got.ke.reveal(), want],
                         where="serve's log")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
