"""The demo's parts that need no CSE: ACME's configuration, process handling (real processes), the report."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from m2msec.demo.acme import AcmeConfig, Registrar, acme_binary
from m2msec.demo.procs import DemoError, Processes
from m2msec.demo.report import Step, document, failed_step, table
from m2msec.demo.scenario import guarded


def test_mn_cse_ini_registers_through_the_given_address_and_is_reached_at_its_poa() -> None:
    ini = AcmeConfig("MN", "mn-cse-123456", "cse-mn", 8081, 5683, sp_id="in.provider.com",
                     registrar=Registrar("http://127.0.0.1:9000", "id-in", "cse-in"),
                     poa="http://127.0.0.1:9001").ini()
    assert "cseType=MN\ncseID=mn-cse-123456\ncseName=cse-mn\n" in ini
    assert "serviceProviderID=//in.provider.com\npoa=http://127.0.0.1:9001\n" in ini
    assert "[cse.registrar]\naddress=http://127.0.0.1:9000\ncseID=/id-in\nresourceName=cse-in\n" in ini
    assert "[coap]\nenable=true\nport=5683\n" in ini
    assert "allowedCSROriginators" not in ini  # nobody registers at the MN-CSE


def test_in_cse_ini_admits_its_registrees_in_the_form_acme_accepts() -> None:
    ini = AcmeConfig("IN", "id-in", "cse-in", 8080, registrees=("mn-cse-123456",)).ini()
    assert "allowedCSROriginators=/mn-cse-123456\n" in ini  # ACME refuses (and exits 0, silently) without '/'
    assert "[cse.registrar]" not in ini and "[coap]" not in ini


def test_acme_binary_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("M2MSEC_ACME", str(tmp_path / "missing"))
    assert acme_binary() is None
    (tmp_path / "acmecse").write_text("")
    monkeypatch.setenv("M2MSEC_ACME", str(tmp_path / "acmecse"))
    assert acme_binary() == tmp_path / "acmecse"


async def test_processes_are_killed_when_they_ignore_sigterm(tmp_path: Path) -> None:
    stubborn = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); " \
               "time.sleep(60)"
    async with Processes(tmp_path, stop_grace=0.5) as procs:
        proc = procs.start("stubborn", [sys.executable, "-c", stubborn])
        polite = procs.start("polite", [sys.executable, "-c", "import time; print('up 4242', flush=True); "
                                                               "time.sleep(60)"])
        await procs.wait_line(proc, "ready")
        assert await procs.wait_port(polite, r"up (\d+)") == 4242
        started = time.monotonic()
    assert time.monotonic() - started < 5
    assert proc.popen.returncode == -9 and polite.popen.returncode == -15  # SIGKILL after the grace, SIGTERM


async def test_a_process_that_exits_before_it_is_ready_is_one_error_with_its_output(tmp_path: Path) -> None:
    async with Processes(tmp_path) as procs:
        proc = procs.start("broken", [sys.executable, "-c", "import sys; sys.exit('bad option --x')"])
        with pytest.raises(DemoError, match=r"^broken exited with 1: bad option --x$"):
            await procs.wait_line(proc, "listening")


def _steps() -> list[Step]:
    return [Step("a", "light <-> gw", "PSK", "HTTP", "PSK-AES128-CBC-SHA256", "Clight", "registers", "AE-ID Clight",
                 2001, 2001, "TS-0003 §8.2.2.1"),
            failed_step("b", "phone <-> gw", "MAF-based", "HTTP", "switches", 2001, "TR-0038 §7.1", "SA refused")]


def test_table_marks_each_step_and_the_outcome() -> None:
    text = table(_steps())
    header, _, first, second = text.splitlines()[:4]
    assert header.split() == ["#", "SA", "(who", "<->", "whom)", "framework", "cipher", "suite", "bound", "identity",
                              "RSC", "spec"]
    assert first.split()[-3:] == ["2001", "2001", "ok"] and second.split()[-3:] == ["-", "2001", "UNEXPECTED"]
    assert " 2. switches: SA refused" in text and text.endswith("1 step(s) did not behave as specified")
    assert table(_steps()[:1]).endswith("every step behaved as specified")


def test_json_document() -> None:
    doc = json.loads(document(_steps(), 12.34))
    assert doc["ok"] is False and doc["seconds"] == 12.3 and doc["error"] is None
    assert [s["ok"] for s in doc["steps"]] == [True, False]
    assert doc["steps"][0]["bound_identity"] == "Clight" and doc["steps"][1]["rsc"] is None
    assert json.loads(document([], 0.0, "no CSE"))["ok"] is False


async def test_a_step_that_raises_is_one_failed_record_and_the_demo_goes_on() -> None:
    async def closed() -> Step:
        raise ConnectionResetError("peer closed")

    [record] = await guarded(closed, "smartphone-control")
    assert (record.name, record.ok, record.rsc) == ("smartphone-control", False, None)
    assert record.result == "failed: ConnectionResetError: peer closed"

    async def bug() -> Step:
        raise KeyError("x")  # not a peer's doing: a bug, not hidden

    with pytest.raises(KeyError):
        await guarded(bug, "x")


def test_free_ports_are_below_the_ephemeral_range() -> None:
    """Ports the kernel hands to other processes meanwhile (port 0, outgoing source ports) come from the ephemeral
    range: a port chosen there was taken before ACME bound it, and ACME exited without a word (CI, once)."""
    import socket

    from m2msec.demo.acme import FREE_PORT_FLOOR, _ephemeral_floor, free_port

    floor = _ephemeral_floor()
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        for _ in range(20):
            port = free_port(kind)
            assert FREE_PORT_FLOOR <= port < floor
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind(("127.0.0.1", port))  # free when returned
