"""Run a real oneM2M CSE (ACME, PyPI `acmecse`, installed in .venv-acme by scripts/install.sh) on loopback."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ACME = ROOT / ".venv-acme" / "bin" / "acmecse"
CSE_ID, CSE_RN = "mn-cse-123456", "cse-mn"
needs_acme = pytest.mark.skipif(not ACME.exists(), reason="ACME not installed: run bash scripts/install.sh")


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: how long one ACME start may take (a loaded 2-core machine has needed more than 60 s), and how many starts are
#: tried: a port chosen free can be taken by another process before ACME binds it, and ACME then exits
START_TIMEOUT = 180.0
START_ATTEMPTS = 3


def _probe(http_port: int) -> bool:
    probe = urllib.request.Request(f"http://127.0.0.1:{http_port}/{CSE_RN}", headers={
        "X-M2M-Origin": "CAdmin", "X-M2M-RI": "probe", "X-M2M-RVI": "3", "Accept": "application/json"})
    try:
        with urllib.request.urlopen(probe, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def running_acme(work: Path, *, coap: bool = False) -> Iterator[tuple[int, int | None]]:
    """ACME as an MN-CSE `mn-cse-123456` with its HTTP binding (and CoAP binding): yields (http, coap) ports."""
    problems: list[str] = []
    for attempt in range(START_ATTEMPTS):
        http_port = free_port()
        coap_port = free_port(socket.SOCK_DGRAM) if coap else None
        ini = (f"[basic.config]\ncseType=MN\ncseID={CSE_ID}\ncseName={CSE_RN}\nadminID=CAdmin\n"
               f"networkInterface=127.0.0.1\ncseHost=127.0.0.1\nhttpPort={http_port}\ndatabaseType=memory\n"
               f"logLevel=warn\n")
        if coap:
            ini += f"\n[coap]\nenable=true\nport={coap_port}\n"
        (work / "acme.ini").write_text(ini)
        log = work / f"acme-{attempt}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(ACME), "--config", "acme.ini", "--headless", "--http", "--coap" if coap else "--no-coap",
                 "--no-mqtt", "--no-ws", "--db-type", "memory", "--base-directory", str(work)],
                cwd=work, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while not _probe(http_port) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.3)
        if proc.poll() is None and _probe(http_port):
            try:
                yield http_port, coap_port
            finally:
                _stop(proc)
            return
        state = f"exited with {proc.returncode}" if proc.poll() is not None else f"not up after {START_TIMEOUT:g} s"
        _stop(proc)
        tail = log.read_text(errors="replace")[-600:].strip()
        problems.append(f"attempt {attempt + 1} (port {http_port}): {state}; output: {tail or '(none)'}")
    pytest.fail("ACME did not start: " + " | ".join(problems))
