"""``m2msec gateway --log-format json`` as a process: every stderr line is one JSON object with the documented
fields, the main events carry peer / sa / credential_id / rsc / reason, and no key bytes appear in any form."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from test_gateway import onem2m

from conftest import HOME_GATEWAY_CSE_ID, LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY, LIGHT2_ID, LIGHT2_KEY
from leaks import assert_no_secret
from m2msec.errors import HandshakeFailed
from m2msec.keys.secret import SecretKey
from m2msec.logs import JSONFormatter
from m2msec.saef import PSKCredentials, establish_sa

M2MSEC = [sys.executable, "-m", "m2msec.cli.main"]
WRONG = secrets.token_bytes(16)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def cse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A CSE that answers every request 2000 and closes."""
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nx-m2m-rsc: 2000\r\ncontent-length: 2\r\n"
                 b"connection: close\r\n\r\n{}")
    await writer.drain()
    writer.close()


async def sa_request(port: int, identity: str, key: bytes, origin: str) -> str | None:
    sa = await establish_sa("127.0.0.1", port, PSKCredentials(identity, SecretKey(key), HOME_GATEWAY_CSE_ID))
    resp = await sa.request(onem2m(origin))
    await sa.close()
    return resp.header("x-m2m-rsc")


async def test_gateway_json_log_lines(tmp_path: Path) -> None:
    table = tmp_path / "psk.toml"
    table.write_text(f'[[psk]]\nidentity = "{LIGHT1_ID}"\nkey = "{LIGHT1_KEY}"\nentity = "{LIGHT1_AE}"\n'
                     f'[[psk]]\nidentity = "{LIGHT2_ID}"\nkey = "{LIGHT2_KEY}"\nentity = "Clight-AE2"\n')
    table.chmod(0o600)
    backend = await asyncio.start_server(cse, "127.0.0.1", 0)
    metrics = free_port()
    gw = subprocess.Popen([*M2MSEC, "-v", "gateway", "--listen", "127.0.0.1:0", "--psk-table", str(table),
                           "--backend", f"http://127.0.0.1:{backend.sockets[0].getsockname()[1]}",
                           "--log-format", "json", "--metrics", f"127.0.0.1:{metrics}"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert gw.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(gw.stdout.readline), 30)
        assert line.startswith("m2msec gateway on"), line
        port = int(line.split()[3].rsplit(":", 1)[1])
        assert await sa_request(port, LIGHT1_ID, bytes.fromhex(LIGHT1_KEY), LIGHT1_AE) == "2000"
        assert await sa_request(port, LIGHT2_ID, bytes.fromhex(LIGHT2_KEY), LIGHT1_AE) == "4106"
        with pytest.raises(HandshakeFailed):
            await sa_request(port, LIGHT1_ID, WRONG, LIGHT1_AE)
        with pytest.raises(HandshakeFailed):
            await sa_request(port, "nobody@in.provider.com", WRONG, LIGHT1_AE)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as garbage:
            garbage.sendall(b"\x16\x03\x01\x00\x05hello" + bytes.fromhex(LIGHT1_KEY))  # a bad record, with key bytes
            assert garbage.recv(100) is not None
        scraped = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10).read().decode())
    finally:
        gw.terminate()
        out, err = await asyncio.to_thread(gw.communicate, timeout=30)
        backend.close()
        await backend.wait_closed()

    assert gw.returncode == 0, err
    lines = [json.loads(raw) for raw in err.splitlines()]  # every line is one JSON object
    assert lines and all({"timestamp", "level", "logger", "event", "message"} <= set(o) for o in lines)
    assert all(o["timestamp"].endswith("Z") and "T" in o["timestamp"] for o in lines)
    events: dict[str, list[dict[str, object]]] = {}
    for o in lines:
        events.setdefault(str(o["event"]), []).append(o)
    assert {"started", "metrics_started", "sa_established", "request_done", "request_refused",
            "handshake_failed"} <= set(events)
    [done] = events["request_done"]
    assert (done["rsc"] == "2000" and done["sa"] == f"psk identity {LIGHT1_ID!r}") or LIGHT1_ID in str(done["sa"])
    assert done["credential_id"] == f"12-{LIGHT1_ID}" and str(done["peer"]).startswith("127.0.0.1:")
    [refused] = events["request_refused"]
    assert refused["rsc"] == 4106 and refused["sa"] == LIGHT2_ID and refused["level"] == "WARNING"
    [established, _] = events["sa_established"]
    assert established["sa"] == LIGHT1_ID and established["credential_id"] == f"12-{LIGHT1_ID}"
    reasons = sorted(str(o["reason"]) for o in events["handshake_failed"])
    assert reasons == ["bad_key", "protocol", "unknown_identity"]
    assert any(o["sa"] == "nobody@in.provider.com" for o in events["handshake_failed"])
    assert "Traceback" not in err and not any("exception" in o for o in lines)
    assert 'm2msec_gateway_handshake_failures_total{reason="bad_key",transport="tls"} 1.0' in scraped
    assert_no_secret(out + err + scraped, [bytes.fromhex(LIGHT1_KEY), bytes.fromhex(LIGHT2_KEY), WRONG],
                     where="JSON logs")


def test_formatter_fields_and_exceptions() -> None:
    """A real internal error keeps its traceback, as one string field; a SecretKey that reached a log call is
    written redacted, and non-JSON values (an IPv6 peer tuple) come out as text."""
    key = bytes.fromhex(LIGHT1_KEY)
    logger = logging.getLogger("test.json")
    record = logger.makeRecord("test.json", logging.ERROR, __file__, 1, "key %s", (SecretKey(key),), None,
                               extra={"event": "x_happened", "peer": ("::1", 5684, 0, 0), "rsc": 4106})
    try:
        raise ValueError("boom")
    except ValueError:
        record.exc_info = sys.exc_info()
    line = JSONFormatter().format(record)
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["event"] == "x_happened" and obj["peer"] == "[::1]:5684" and obj["rsc"] == 4106
    assert "ValueError: boom" in obj["exception"] and "redacted" in obj["message"]
    assert "sa" not in obj and "credential_id" not in obj
    assert_no_secret(line, [key])


def test_workers_with_metrics_refused_in_one_line(tmp_path: Path) -> None:
    table = tmp_path / "psk.toml"
    table.write_text(f'[[psk]]\nidentity = "{LIGHT1_ID}"\nkey = "{LIGHT1_KEY}"\n')
    table.chmod(0o600)
    result = subprocess.run([*M2MSEC, "gateway", "--listen", "127.0.0.1:0", "--psk-table", str(table), "--backend",
                             "http://127.0.0.1:9", "--workers", "2", "--metrics", "0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == ["m2msec: error: --metrics works with --workers 1 only (each worker would "
                                          "count for itself)"]


def test_cap_refusals_and_reloads_have_event_names(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The lines that were `event: "log"`: a connection refused by a cap, and a PSK table read again."""
    from m2msec.keys.table import TomlPSKTable
    from m2msec.transport.limits import ConnectionLimiter

    caplog.set_level(logging.INFO)
    limiter = ConnectionLimiter(1)
    assert limiter.admit(("192.0.2.7", 4000)) is not None
    assert limiter.admit(("192.0.2.8", 4001)) is None  # the global cap
    table_file = tmp_path / "psk.toml"
    table_file.write_text('[[psk]]\nidentity = "a@x.com"\nkey = "00112233445566778899aabbccddeeff"\n')
    table_file.chmod(0o600)
    table = TomlPSKTable(table_file)
    table_file.write_text('[[psk]]\nidentity = "b@x.com"\nkey = "00112233445566778899aabbccddeeff"\n')
    os.utime(table_file, (time.time() + 5, time.time() + 5))  # a change the poll sees whatever the clock's grain
    table.poll()
    lines = [json.loads(JSONFormatter().format(r)) for r in caplog.records]
    refused = [o for o in lines if o["event"] == "connection_refused"]
    assert len(refused) == 1 and refused[0]["peer"] == "192.0.2.8:4001" and refused[0]["level"] == "WARNING"
    assert [o["event"] for o in lines if "reloaded PSK table" in str(o["message"])] == ["psk_table_reloaded"]
