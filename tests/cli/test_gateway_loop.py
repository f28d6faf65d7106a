"""`m2msec gateway --loop asyncio|uvloop`: asyncio's loop by default, uvloop on request, one clear line without it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from m2msec.cli.common import run_async
from m2msec.errors import ConfigurationError

M2MSEC = [sys.executable, "-m", "m2msec.cli.main"]


async def loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_the_default_loop_is_asyncios_own() -> None:
    assert run_async(loop_module()).startswith("asyncio")


def test_uvloop_on_request() -> None:
    assert run_async(loop_module(), loop="uvloop").startswith("uvloop")


def test_an_unknown_loop_is_refused_without_running_anything() -> None:
    coro = loop_module()
    with pytest.raises(ConfigurationError, match="unknown event loop"):
        run_async(coro, loop="trio")
    assert coro.cr_frame is None  # closed, never awaited


def test_loop_uvloop_without_uvloop_installed_is_one_clear_line(tmp_path: Path) -> None:
    blocked = tmp_path / "blocked" / "uvloop"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text('raise ImportError("not installed")\n')  # shadows the installed one
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocked.parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([*M2MSEC, "gateway", "--listen", "127.0.0.1:0", "--backend", "http://127.0.0.1:9",
                           "--psk-table", str(tmp_path / "none.toml"), "--loop", "uvloop"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        "m2msec: error: --loop uvloop needs the uvloop package: pip install 'm2msec[uvloop]'"]
