"""Remotely provisioned Kpsa with every party a real process: `m2msec mef serve` (provisioned with `m2msec mef
enrolees add` / `targets add`), `m2msec gateway --mef`, `m2msec mef enrol` and `m2msec request`; the CSE is a
recording server in the test. The key `mef enrol` writes is checked against HMAC-SHA-256 computed here from the Ke
the MEF stored (TS-0003 §10.3.7)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import stat
import sys
from pathlib import Path

from leaks import assert_no_secret
from m2msec.keys.sqlite_store import MASTER_KEY_ENV
from m2msec.mef.procedures import KIND_KE
from m2msec.store import open_store

from .test_mef_gateway import CSE

M2MSEC = [sys.executable, "-m", "m2msec.cli.main"]
MEF_FQDN, SP = "mef.m2msec.localhost", "m2msec.localhost"  # the MEF's embedded defaults
GW = "gw.m2msec.localhost"
LABEL = b"oneM2M Enrolment Key to Usage-Constrained Symmetric Key derivation"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("M2MSEC_") and k != MASTER_KEY_ENV}


async def run(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*M2MSEC, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, env=_env())
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def first_line(stream: asyncio.StreamReader | None, prefix: str) -> str:
    assert stream is not None
    line = (await asyncio.wait_for(stream.readline(), 30)).decode()
    assert prefix in line, line
    return line


def one_line_error(code: int, err: str, *parts: str) -> None:
    assert code != 0 and err.startswith("m2msec: error: ") and err.count("\n") == 1, err
    for part in parts:
        assert part in err, err


async def test_every_party_a_process(tmp_path: Path) -> None:
    store = ["--store", f"sqlite://{tmp_path}/mef.db"]
    kpm_file, gw_file, out_dir = tmp_path / "kpm.hex", tmp_path / "gw.psk", tmp_path / "enrolee"
    out_dir.mkdir()
    code, _, err = await run("mef", *store, "enrolees", "add", "kpm-1", "--identity", "/in-cse/CAE1", "--target",
                             f"{GW}:22", "--generate", "32", "--out", str(kpm_file))
    assert code == 0, err
    code, _, err = await run("mef", *store, "targets", "add", GW, "--kind", "cse", "--generate", "32", "--out",
                             str(gw_file))
    assert code == 0, err
    cse = CSE()
    cse.server = await asyncio.start_server(cse.handle, "127.0.0.1", 0)
    procs: list[asyncio.subprocess.Process] = []
    try:
        mef = await asyncio.create_subprocess_exec(*M2MSEC, "mef", *store, "serve", "--listen", "127.0.0.1:0",
                                                   stderr=asyncio.subprocess.PIPE, env=_env())
        procs.append(mef)
        line = await first_line(mef.stderr, "listening on 127.0.0.1:")
        mef_addr = f"127.0.0.1:{line.split('listening on ')[1].split()[0].rsplit(':', 1)[1]}"
        gw = await asyncio.create_subprocess_exec(
            *M2MSEC, "gateway", "--listen", "127.0.0.1:0", "--mef", mef_addr, "--mef-fqdn", MEF_FQDN,
            "--mef-target-id", GW, "--mef-key-file", str(gw_file),
            "--backend", f"http://127.0.0.1:{cse.server.sockets[0].getsockname()[1]}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env())
        procs.append(gw)
        port = (await first_line(gw.stdout, "m2msec gateway on 127.0.0.1:")).split()[3].rsplit(":", 1)[1]

        enrol = ["mef", "enrol", "--mef", mef_addr, "--mef-fqdn", MEF_FQDN, "--kpm-id", "kpm-1", "--kpm-file",
                 str(kpm_file), "--target", GW, "--suid", "22", "--out-dir", str(out_dir)]
        code, out, err = await run(*enrol)
        assert code == 0 and out.count("\n") == 1 and not err, out + err
        keid = (out_dir / "keid").read_text().strip()
        key_file = out_dir / f"22-{GW}.key"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        kpsa = bytes.fromhex(key_file.read_text().strip())
        assert keid in out and f"//{SP}/in-cse/CAE1" in out
        # §10.3.7 computed here from the Ke the MEF keeps under hex(RelativeKeID)
        relative, fqdn = keid.split("@")
        assert fqdn == MEF_FQDN and len(bytes.fromhex(relative)) == 16
        with open_store(f"sqlite://{tmp_path}/mef.db") as db:
            doc = db.get_document(KIND_KE, relative)
        assert doc is not None and doc.key is not None
        ke = doc.key.reveal()
        assert kpsa == hmac.new(ke, LABEL + b"22" + GW.encode(), hashlib.sha256).digest()
        assert_no_secret(out + err, [ke, kpsa, bytes.fromhex(kpm_file.read_text().strip())], where="mef enrol")

        req = ["request", "--connect", f"127.0.0.1:{port}", "--identity", keid, "--key-file", str(key_file),
               "--entity-id", "/in-cse"]
        code, out, err = await run(*req, "--origin", f"//{SP}/in-cse/CAE1", "/in-cse")
        assert code == 0 and out.startswith("HTTP 200"), out + err
        [seen] = cse.requests
        assert seen.header("x-m2m-origin") == seen.header("x-m2msec-sa-identity") == f"//{SP}/in-cse/CAE1"
        assert seen.header("x-m2msec-psk-identity") == keid
        code, out, err = await run(*req, "--origin", "CAdmin", "/in-cse")  # a foreign From: 4106, not forwarded
        assert code == 0 and "x-m2m-rsc: 4106" in out and len(cse.requests) == 1

        code, out, err = await run(*enrol)  # the files exist: refused before enrolling, one line
        one_line_error(code, err, "exists already")
    finally:
        for proc in procs:
            proc.terminate()
            await proc.wait()
        cse.server.close()
    gw_log = (await gw.stderr.read()).decode() if gw.stderr is not None else ""
    assert_no_secret(gw_log, [ke, kpsa], where="gateway log")


async def test_enrol_and_gateway_option_errors_are_one_line(tmp_path: Path) -> None:
    key = tmp_path / "k.hex"
    key.write_text("00" * 32)
    key.chmod(0o600)
    gw = ["gateway", "--listen", "127.0.0.1:0", "--backend", "http://127.0.0.1:9"]
    same = ["--maf", "https://127.0.0.1:9", "--maf-fqdn", "auth.example.com", "--maf-kmid", "gw@auth.example.com",
            "--maf-key-file", str(key), "--mef", "127.0.0.1:9", "--mef-fqdn", "auth.example.com"]
    one_line_error(*(await run(*gw, *same, "--mef-target-id", GW, "--mef-key-file", str(key)))[::2],
                   "also a MAF-FQDN")
    one_line_error(*(await run(*gw, "--mef", "127.0.0.1:9", "--mef-fqdn", MEF_FQDN))[::2], "--mef-target-id")
    one_line_error(*(await run(*gw, "--mef-target-id", GW))[::2], "--mef-target-id needs --mef")
    one_line_error(*(await run(*gw, "--mef", "127.0.0.1:9", "--mef-target-id", GW, "--mef-key-file",
                               str(key)))[::2], "--mef-fqdn")
    enrol = ["mef", "enrol", "--mef", "127.0.0.1:9", "--mef-fqdn", MEF_FQDN, "--kpm-id", "k", "--kpm-file", str(key),
             "--out-dir", str(tmp_path)]
    one_line_error(*(await run(*enrol, "--target", GW, "--suid", "31"))[::2], "--suid")
    one_line_error(*(await run(*enrol, "--target", "not a host", "--suid", "22"))[::2], "Enrolment-Target-ID")
    one_line_error(*(await run(*enrol, "--target", GW, "--suid", "22"))[::2], "127.0.0.1:9")  # no MEF there
    assert not (tmp_path / "keid").exists() and not (tmp_path / f"22-{GW}.key").exists()
