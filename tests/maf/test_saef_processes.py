"""The MAF-based SAEF with every party a real process: `m2msec maf serve` (clients provisioned with `m2msec maf
clients add`), `m2msec gateway --maf` and `m2msec request --maf`; the CSE is a recording server in the test."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from .test_saef_gateway import CSE

M2MSEC = [sys.executable, "-m", "m2msec.cli.main"]
FQDN, SP = "maf.m2msec.localhost", "m2msec.localhost"  # the MAF's embedded defaults


async def run(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*M2MSEC, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, env=_env())
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("M2MSEC_")}


async def first_line(proc: asyncio.subprocess.Process, stream: asyncio.StreamReader | None, prefix: str) -> str:
    assert stream is not None
    line = (await asyncio.wait_for(stream.readline(), 30)).decode()
    assert prefix in line, line
    return line


async def test_every_party_a_process(tmp_path: Path) -> None:
    store = ["--store", f"sqlite://{tmp_path}/maf.db"]
    keys = {}
    for name, identity in (("cae1", "/mn-cse-a/CAE1"), ("gw-b", "/mn-cse-b")):
        path = tmp_path / f"{name}.km"
        code, out, err = await run("maf", *store, "clients", "add", name, "--identity", identity, "--generate", "32",
                                   "--out", str(path))
        assert code == 0, err
        keys[name] = str(path)
    cse = CSE()
    cse.server = await asyncio.start_server(cse.handle, "127.0.0.1", 0)
    procs: list[asyncio.subprocess.Process] = []
    try:
        maf = await asyncio.create_subprocess_exec(*M2MSEC, "maf", *store, "serve", "--listen", "127.0.0.1:0",
                                                   stderr=asyncio.subprocess.PIPE, env=_env())
        procs.append(maf)
        line = await first_line(maf, maf.stderr, "listening on 127.0.0.1:")
        maf_url = f"https://127.0.0.1:{line.split('listening on ')[1].split()[0].rsplit(':', 1)[1]}"
        common = ["--maf", maf_url, "--maf-fqdn", FQDN]
        gw = await asyncio.create_subprocess_exec(
            *M2MSEC, "gateway", "--listen", "127.0.0.1:0", *common, "--maf-kmid", f"gw-b@{FQDN}",
            "--maf-key-file", keys["gw-b"], "--backend", f"http://127.0.0.1:{cse.server.sockets[0].getsockname()[1]}",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=_env())
        procs.append(gw)
        port = (await first_line(gw, gw.stdout, "m2msec gateway on 127.0.0.1:")).split()[3].rsplit(":", 1)[1]
        a = ["request", "--connect", f"127.0.0.1:{port}", *common, "--maf-kmid", f"cae1@{FQDN}", "--maf-key-file",
             keys["cae1"], "--entity-id"]
        code, out, err = await run(*a, "/mn-cse-b", "--origin", f"//{SP}/mn-cse-a/CAE1", "/mn-cse-b")
        assert code == 0 and out.startswith("HTTP 200"), out + err
        [seen] = cse.requests
        assert seen.header("x-m2m-origin") == seen.header("x-m2msec-sa-identity") == f"//{SP}/mn-cse-a/CAE1"
        # a foreign From: 4106, not forwarded
        code, out, err = await run(*a, "/mn-cse-b", "--origin", "CAdmin", "/mn-cse-b")
        assert code == 0 and "x-m2m-rsc: 4106" in out and len(cse.requests) == 1
        code, out, err = await run(*a, "/mn-cse-other", "/mn-cse-b")  # the gateway is not the target
        assert code != 0 and len(err.strip().splitlines()) == 1 and "handshake failed" in err
    finally:
        for proc in procs:
            proc.terminate()
            await proc.wait()
        cse.server.close()
