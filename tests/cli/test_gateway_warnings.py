"""`m2msec gateway` warns the operator at start about options that move a check to the CSE (a real process)."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import LIGHT1_AE, LIGHT1_ID, LIGHT1_KEY

M2MSEC = [sys.executable, "-m", "m2msec.cli.main"]


def start_and_stop(tmp_path: Path, *extra: str) -> str:
    """Start `m2msec gateway` (PSK table, a backend nobody listens on), stop it once serving; returns its stderr."""
    table = tmp_path / "psk.toml"
    table.write_text(f'[[psk]]\nidentity = "{LIGHT1_ID}"\nkey = "{LIGHT1_KEY}"\nentity = "{LIGHT1_AE}"\n')
    table.chmod(0o600)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        unused = s.getsockname()[1]
    gw = subprocess.Popen([*M2MSEC, "gateway", "--listen", "127.0.0.1:0", "--psk-table", str(table),
                           "--backend", f"http://127.0.0.1:{unused}", *extra],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert gw.stdout is not None
        line = gw.stdout.readline()
        assert line.startswith("m2msec gateway on 127.0.0.1:"), line
        time.sleep(1)  # the start-up warnings follow the "on" line; SIGTERM is handled from then on
    finally:
        gw.terminate()
        _, err = gw.communicate(timeout=10)
    assert gw.returncode == 0
    return err


@pytest.mark.parametrize(("extra", "warned"), [((), False), (("--unbound", "reject"), False),
                                               (("--unbound", "forward"), True)])
def test_unbound_forward_is_warned_at_start(tmp_path: Path, extra: tuple[str, ...], warned: bool) -> None:
    err = start_and_stop(tmp_path, *extra)
    lines = [line for line in err.splitlines() if "--unbound forward" in line]
    if warned:
        assert len(lines) == 1 and "WARNING" in lines[0] and "the CSE must enforce the registration rules" in lines[0]
    else:
        assert lines == []
    assert LIGHT1_KEY not in err
