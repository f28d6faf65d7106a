"""``m2msec gateway --maf`` and ``m2msec request --maf`` as real processes, with the in-memory MAF of
saef_maf_stub served by the test's event loop."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from pathlib import Path

from .saef_maf_stub import StubMAF
from .test_saef_gateway import A_ID, A_KM, A_KMID, B_KM, B_KMID, CSE, FQDN, IDB

M2MSEC = [sys.executable, "-m", "m2msec.cli.main"]


def key_file(tmp_path: Path, name: str, hex_key: str) -> str:
    path = tmp_path / name
    path.write_text(hex_key)
    path.chmod(0o600)
    return str(path)


async def run(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*M2MSEC, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_request_and_gateway_commands_run_the_maf_based_saef(tmp_path: Path) -> None:
    stub = StubMAF(FQDN, {A_KMID: (A_KM, A_ID), B_KMID: (B_KM, IDB)})
    maf_port = await stub.start()
    cse = CSE()
    cse.server = await asyncio.start_server(cse.handle, "127.0.0.1", 0)
    maf = ["--maf", f"https://127.0.0.1:{maf_port}", "--maf-fqdn", FQDN]
    gw = await asyncio.create_subprocess_exec(
        *M2MSEC, "gateway", "--listen", "127.0.0.1:0", "--backend", f"http://127.0.0.1:{cse.server.sockets[0].getsockname()[1]}",
        *maf, "--maf-kmid", B_KMID, "--maf-key-file", key_file(tmp_path, "b.hex", B_KM.reveal().hex()),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        assert gw.stdout is not None
        line = (await asyncio.wait_for(gw.stdout.readline(), 30)).decode()
        assert line.startswith("m2msec gateway on 127.0.0.1:"), line
        port = line.split()[3].rsplit(":", 1)[1]
        a_key = key_file(tmp_path, "a.hex", A_KM.reveal().hex())
        code, out, err = await run("request", "--connect", f"127.0.0.1:{port}", "--entity-id", IDB, *maf,
                                   "--maf-kmid", A_KMID, "--maf-key-file", a_key, "--origin", A_ID, "/cse-b")
        assert code == 0, err
        assert out.startswith("HTTP 200") and f"@{FQDN} registered at the MAF for {IDB}" in err
        [seen] = cse.requests
        assert seen.header("x-m2m-origin") == A_ID and seen.header("x-m2msec-sa-identity") == A_ID
        code, out, err = await run("request", "--connect", f"127.0.0.1:{port}", "--entity-id", IDB, *maf,
                                   "--maf-kmid", A_KMID, "--maf-key-file", a_key, "--origin", "CAdmin", "/cse-b")
        assert code == 0 and "x-m2m-rsc: 4106" in out
        assert len(cse.requests) == 1
    finally:
        gw.terminate()
        await gw.wait()
        await stub.close()
        cse.server.close()


async def test_command_errors_are_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    a_key = key_file(tmp_path, "a.hex", A_KM.reveal().hex())
    code, _, err = await run("request", "--connect", "127.0.0.1:1", "--entity-id", IDB, "--maf",
                               f"https://127.0.0.1:{dead}", "--maf-fqdn", FQDN, "--maf-kmid", A_KMID,
                               "--maf-key-file", a_key, "/cse-b")
    assert code != 0 and len(err.strip().splitlines()) == 1 and "MAF" in err and "Traceback" not in err, err
    code, _, err = await run("request", "--connect", "127.0.0.1:1", "--entity-id", IDB, "--maf",
                             "https://maf.example.com:1", "--maf-kmid", A_KMID, "--maf-key-file", a_key,
                             "--identity", "x@y.z", "--key-file", a_key, "/")
    assert code == 2 and "--maf replaces" in err and len(err.strip().splitlines()) == 1
    code, _, err = await run("gateway", "--backend", "http://127.0.0.1:1", "--maf-kmid", B_KMID)
    assert code == 2 and "needs --maf" in err and len(err.strip().splitlines()) == 1
    os.chmod(a_key, 0o644)
    code, _, err = await run("gateway", "--backend", "http://127.0.0.1:1", "--maf", "https://maf.example.com:1",
                             "--maf-kmid", B_KMID, "--maf-key-file", a_key)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err

