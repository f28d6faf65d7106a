"""`m2msec aef register`, `publish` and `serve` end to end: a real CCF (``world``), the CLI registering a provider
domain and publishing the configured API, `m2msec aef serve` in its own process, invokers over PSK and PKI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
import stat
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from ccf.ccf_env import CCF_HOST, World, expected_aefpsk, onboard, security, world
from m2msec.capif.aef.config_file import ConfigAPI, render_config
from m2msec.cli.main import main

from .aef_env import SECURITY
from .aef_server_env import Backend, call, pki_context, psk_context, server_credentials

__all__ = ["world"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def aef_process(config: Path) -> AsyncIterator[str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "m2msec.cli.main", "aef", "serve",
                                                "--config", str(config), stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    try:
        line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
        assert "listening on" in line, line
        yield line
    finally:
        proc.terminate()
        await proc.wait()


async def test_register_publish_serve(world: World, tmp_path: Path) -> None:
    (tmp_path / "ccf-ca.pem").write_bytes(world.ca_pem)
    (tmp_path / "credential").write_text(world.credential(purpose="provider"))
    (tmp_path / "credential").chmod(0o600)  # a bearer credential others can read is refused
    ccf = f"127.0.0.1:{world.ccf.port}"
    code = await asyncio.to_thread(main, ["aef", "register", "--ccf", ccf, "--ccf-host", CCF_HOST, "--ca",
                                          str(tmp_path / "ccf-ca.pem"), "--credential",
                                          str(tmp_path / "credential"), "--out", str(tmp_path / "provider")])
    assert code == 0
    folder = tmp_path / "provider"
    ids = json.loads((folder / "provider.json").read_text())
    assert len({ids["AMF"], ids["APF"], ids["AEF"]}) == 3 and ids["apiProvDomId"]
    for role in ("amf", "apf", "aef"):
        assert stat.S_IMODE(os.stat(folder / f"{role}.key").st_mode) == 0o600
    chain, key, server_ca = server_credentials()
    (tmp_path / "server.crt").write_bytes(chain)
    (tmp_path / "server.key").write_bytes(key)
    (tmp_path / "server.key").chmod(0o600)
    backend = Backend()
    await backend.start()
    port = free_port()
    p0 = f"127.0.0.1:{port}/weather"
    config = tmp_path / "aef.toml"
    config.write_text(render_config(
        listen=f"127.0.0.1:{port}", backend=f"http://127.0.0.1:{backend.port}", aef_id=ids["AEF"], ccf_address=ccf,
        ccf_host=CCF_HOST, issuer=world.ccf.ccf.policy.issuer, ccf_ca="ccf-ca.pem",
        apis=[ConfigAPI("weather", "/weather", p0)]))
    code = await asyncio.to_thread(main, ["aef", "publish", "--config", str(config), "--provider", str(folder)])
    assert code == 0
    try:
        async with aef_process(config) as line:
            assert re.search(rf"listening on 127\.0\.0\.1:{port}", line)
            iface = {"ipv4Addr": "127.0.0.1", "port": port, "apiPrefix": "/weather"}
            pki = await onboard(world)
            put = await world.call(pki, "PUT", f"{SECURITY}/{pki.identity}",
                                   security({"interfaceDetails": iface, "prefSecurityMethods": ["PKI"]}))
            assert put.status == 201, put.body
            reply = await call(port, pki_context(pki, server_ca), "/weather/today")
            assert reply.status == 200, reply.body
            assert reply.json() == {"invoker": pki.identity, "path": "/weather/today"}
            psk = await onboard(world)
            async with await world.connect(psk) as conn:
                put2 = await conn.request("PUT", f"{SECURITY}/{psk.identity}", json_body=security(
                    {"interfaceDetails": iface, "prefSecurityMethods": ["PSK"]}))
                assert put2.status == 201, put2.body
                tls = conn.writer.get_extra_info("tls_connection")
                aefpsk = expected_aefpsk(tls.master_secret().reveal(), conn.session.session_id, p0)
            reply = await call(port, psk_context(psk.identity, aefpsk), "/weather/today")
            assert reply.status == 200 and reply.json()["invoker"] == psk.identity
    finally:
        await backend.stop()
