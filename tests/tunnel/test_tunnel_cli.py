"""``m2msec tunnel`` as a real process: the ``listening on HOST:PORT`` line, requests through it to an in-process
certificate gateway, and one clear line with a non-zero exit for bad input."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from tunnel_env import IN_CSE, MN_CSE, Certificates, EchoBackend, PlainClient, make_certificates, onem2m, start_gateway

from conftest import LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY


@pytest.fixture(scope="module")
def certs() -> Certificates:
    return make_certificates()


def write_files(tmp_path: Path, certs: Certificates) -> list[str]:
    (tmp_path / "mn.crt").write_bytes(certs.mn_cse.certificate_pem())
    key = tmp_path / "mn.key"
    key.write_bytes(certs.mn_cse.private_key_pem())
    key.chmod(0o600)
    (tmp_path / "ca.crt").write_bytes(certs.ca.certificate_pem())
    return ["--cert", str(tmp_path / "mn.crt"), "--cert-key", str(key), "--ca", str(tmp_path / "ca.crt")]


def m2msec(*args: str) -> list[str]:
    return [sys.executable, "-m", "m2msec", *args]


async def start_process(*args: str, env: dict[str, str] | None = None) -> tuple[asyncio.subprocess.Process, int]:
    proc = await asyncio.create_subprocess_exec(*m2msec("tunnel", *args), stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, env=env)
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
    assert line.startswith("listening on 127.0.0.1:"), line
    return proc, int(line.strip().rpartition(":")[2])


async def stop_process(proc: asyncio.subprocess.Process) -> bytes:
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    return err


@pytest.fixture
async def backend() -> AsyncIterator[EchoBackend]:
    rec = await EchoBackend().start()
    yield rec
    await rec.close()


async def test_cli_certificate_tunnel(tmp_path: Path, certs: Certificates, backend: EchoBackend) -> None:
    gw = await start_gateway(backend.port, certs)
    try:
        proc, port = await start_process("--listen", "127.0.0.1:0", "--to", f"127.0.0.1:{gw.port}",
                                         "--entity-id", IN_CSE, *write_files(tmp_path, certs))
        try:
            client = await PlainClient.connect(port)
            ok = await client.request(onem2m(f"/{MN_CSE}"))
            assert (ok.status, ok.header("x-m2m-rsc")) == (200, "2000")
            bad = await client.request(onem2m("/someone-else", ri="req-2"))
            assert (bad.status, bad.header("x-m2m-rsc")) == (403, "4106")
            await client.close()
        finally:
            err = await stop_process(proc)
        assert b"Traceback" not in err
    finally:
        await gw.close()
    [seen] = backend.requests
    assert seen.header("x-m2msec-sa-identity") == f"/{MN_CSE}"


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
async def test_cli_psk_tunnel(tmp_path: Path, certs: Certificates, backend: EchoBackend, loop: str) -> None:
    gw = await start_gateway(backend.port, certs)
    try:
        env = {**os.environ, "TUNNEL_TEST_KEY": LIGHT1_KEY}
        proc, port = await start_process("--to", f"127.0.0.1:{gw.port}", "--identity", LIGHT1_ID,
                                         "--key-env", "TUNNEL_TEST_KEY", "--entity-id", IN_CSE, "--loop", loop,
                                         env=env)
        try:
            client = await PlainClient.connect(port)
            ok = await client.request(onem2m(LIGHT1_AE))
            assert (ok.status, ok.header("x-m2m-rsc")) == (200, "2000")
            await client.close()
        finally:
            err = await stop_process(proc)
        assert LIGHT1_KEY.encode() not in err
    finally:
        await gw.close()


@pytest.mark.parametrize(("args", "message"), [
    (["--to", "127.0.0.1:9", "--identity", "a@b.c", "--key-env", "TUNNEL_TEST_KEY"], "give --entity-id"),
    (["--to", "127.0.0.1", "--identity", "a@b.c", "--key-env", "TUNNEL_TEST_KEY", "--entity-id", "x"],
     "--to needs HOST:PORT"),
    (["--to", "127.0.0.1:9", "--entity-id", "x"], "give --identity"),
    (["--to", "127.0.0.1:9", "--identity", "a@b.c", "--key-env", "TUNNEL_TEST_KEY", "--entity-id", "x",
      "--listen", "0.0.0.0:0"], "refusing to listen on 0.0.0.0"),
    (["--to", "127.0.0.1:9", "--identity", "a@b.c", "--key-env", "TUNNEL_TEST_KEY", "--entity-id", "x",
      "--listen", "127.0.0.1:99999"], "invalid HOST:PORT"),
    (["--to", "127.0.0.1:9", "--identity", "a@b.c", "--key-env", "TUNNEL_UNSET_KEY", "--entity-id", "x"],
     "TUNNEL_UNSET_KEY is not set"),
    (["--to", "127.0.0.1:9", "--cert", "/nonexistent.crt", "--entity-id", "x"], "--cert goes with --cert-key"),
    (["--to", "127.0.0.1:9", "--identity", "a@b.c", "--key-env", "TUNNEL_TEST_KEY", "--entity-id", "x",
      "--idle-timeout", "0"], "idle timeout must be positive"),
    (["--to", "127.0.0.1:9", "--identity", "a@b.c", "--key-env", "TUNNEL_TEST_KEY", "--entity-id", "x",
      "--timeout", "-1"], "connect timeout must be positive"),
    (["--to", "127.0.0.1:9", "--identity", "a@b.c", "--key-env", "TUNNEL_TEST_KEY", "--entity-id", "x",
      "--max-connections", "0"], "max connections must be at least 1"),
    (["--to", "127.0.0.1:9", "--identity", "a@b.c", "--key-env", "TUNNEL_TEST_KEY", "--entity-id", "x",
      "--profiles", "no-such-profile"], "no-such-profile"),
    (["--to", "127.0.0.1:0", "--identity", "a@b.c", "--key-env", "TUNNEL_TEST_KEY", "--entity-id", "x"],
     "--to needs a port"),
])
def test_cli_bad_input_is_one_line(args: list[str], message: str) -> None:
    env = {**os.environ, "TUNNEL_TEST_KEY": LIGHT1_KEY}
    env.pop("TUNNEL_UNSET_KEY", None)
    done = subprocess.run(m2msec("tunnel", *args), capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], done.stderr
    assert done.stdout == ""


def test_docs_list_every_tunnel_option() -> None:
    import argparse

    from m2msec.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["tunnel"]
    flags = {s for a in sub._actions for s in a.option_strings if s.startswith("--") and s != "--help"}
    doc = (Path(__file__).parents[2] / "docs" / "tunnel.md").read_text()
    table = "\n".join(line for line in doc.splitlines() if line.startswith("| `--"))
    assert {f for f in flags if f"`{f}" not in table} == set()


async def test_cli_logs_one_line_per_failed_connection(certs: Certificates) -> None:
    """Target down: the plain connection ends at once and the process logs one line for it, without the key."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        down = s.getsockname()[1]
    env = {**os.environ, "TUNNEL_TEST_KEY": LIGHT1_KEY}
    proc, port = await start_process("--to", f"127.0.0.1:{down}", "--identity", LIGHT1_ID, "--key-env",
                                     "TUNNEL_TEST_KEY", "--entity-id", IN_CSE, env=env)
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        try:
            async with asyncio.timeout(5):
                assert await reader.read() == b""
        except ConnectionResetError:
            pass
        writer.close()
    finally:
        err = (await stop_process(proc)).decode()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and f"to 127.0.0.1:{down} failed: cannot connect" in lines[0], err
    assert LIGHT1_KEY not in err


async def test_cli_allow_remote_listens_on_any_address() -> None:
    env = {**os.environ, "TUNNEL_TEST_KEY": LIGHT1_KEY}
    proc = await asyncio.create_subprocess_exec(
        *m2msec("tunnel", "--listen", "0.0.0.0:0", "--allow-remote", "--to", "127.0.0.1:9", "--identity", LIGHT1_ID,
                "--key-env", "TUNNEL_TEST_KEY", "--entity-id", IN_CSE),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    assert proc.stdout is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), 30)).decode()
    assert line.startswith("listening on 0.0.0.0:") and int(line.rpartition(":")[2]) > 0, line
    await stop_process(proc)


def test_cli_busy_port_is_one_line() -> None:
    env = {**os.environ, "TUNNEL_TEST_KEY": LIGHT1_KEY}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(m2msec("tunnel", "--listen", f"127.0.0.1:{port}", "--to", "127.0.0.1:9", "--identity",
                                     LIGHT1_ID, "--key-env", "TUNNEL_TEST_KEY", "--entity-id", IN_CSE),
                              capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode != 0 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0], done.stderr
