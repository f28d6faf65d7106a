"""The demo's processes: started with their output in files of the work directory, found ready by a line they
print (or a probe), and all stopped on the way out, whatever happens (terminate, then kill).

``Processes`` is an async context manager; leaving it (normally, on an exception, on a cancellation such as
Ctrl-C) stops every process it started, in reverse order of start, each given ``STOP_GRACE`` seconds after
SIGTERM before SIGKILL.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from m2msec.demo.acme import AcmeConfig, probe
from m2msec.errors import M2MSecError

#: seconds a process has to exit after SIGTERM before it is killed (docs/decisions.md D110)
STOP_GRACE = 10.0
#: seconds an m2msec process (gateway, MAF, tunnel) has to print its listening line
READY_TIMEOUT = 30.0
#: seconds one ACME start may take (a loaded 2-core machine has needed more than 60 s)
ACME_START_TIMEOUT = 180.0
#: ACME starts tried before the demo gives up (docs/decisions.md D110)
ACME_ATTEMPTS = 2
POLL = 0.1


class DemoError(M2MSecError):
    """A demo process did not start, or exited early."""

    exit_code = 1


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    out: Path
    err: Path
    started: float = field(default_factory=time.monotonic)

    def output(self) -> str:
        return "".join(p.read_text(errors="replace") for p in (self.out, self.err) if p.exists())

    def tail(self, n: int = 600) -> str:
        return self.output()[-n:].strip() or "(no output)"


def m2msec_argv(*args: str) -> list[str]:
    """``python -m m2msec ARGS`` with this interpreter."""
    return [sys.executable, "-m", "m2msec", *args]


class Processes:
    """The processes of one demo run, with their logs under ``work/logs``."""

    def __init__(self, work: Path, *, stop_grace: float = STOP_GRACE) -> None:
        self.work = work
        self.stop_grace = stop_grace
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs: list[Proc] = []

    async def __aenter__(self) -> Processes:
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        await asyncio.shield(asyncio.to_thread(self.stop_all))

    def start(self, name: str, argv: Sequence[str], *, cwd: Path | None = None) -> Proc:
        out, err = self.logs / f"{name}.out", self.logs / f"{name}.err"
        with out.open("wb") as o, err.open("wb") as e:
            popen = subprocess.Popen(list(argv), cwd=cwd or self.work, stdout=o, stderr=e, stdin=subprocess.DEVNULL)
        proc = Proc(name, popen, out, err)
        self.procs.append(proc)
        return proc

    async def wait_line(self, proc: Proc, pattern: str, timeout: float = READY_TIMEOUT) -> re.Match[str]:
        """The first match of ``pattern`` in the process's output (stdout, then stderr), once it appears."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            m = rx.search(proc.output())
            if m is not None:
                return m
            if proc.popen.poll() is not None:
                raise DemoError(f"{proc.name} exited with {proc.popen.returncode}: {proc.tail()}")
            if time.monotonic() > deadline:
                raise DemoError(f"{proc.name} not ready after {timeout:g} s: {proc.tail()}")
            await asyncio.sleep(POLL)

    async def wait_port(self, proc: Proc, pattern: str, timeout: float = READY_TIMEOUT) -> int:
        """The port in the listening line ``pattern`` (its first group)."""
        return int((await self.wait_line(proc, pattern, timeout)).group(1))

    async def wait_until(self, proc: Proc, ready: Callable[[], bool], what: str,
                         timeout: float = ACME_START_TIMEOUT) -> None:
        """Poll ``ready`` (run in a thread) until it holds; fail when ``proc`` exits or after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not await asyncio.to_thread(ready):
            if proc.popen.poll() is not None:
                raise DemoError(f"{proc.name} exited with {proc.popen.returncode} before {what}: {proc.tail()}")
            if time.monotonic() > deadline:
                raise DemoError(f"{proc.name}: no {what} after {timeout:g} s: {proc.tail()}")
            await asyncio.sleep(0.3)

    def start_acme(self, name: str, binary: Path, config: AcmeConfig) -> Proc:
        work = self.work / name
        config.write(work)
        return self.start(name, config.argv(binary, work), cwd=work)

    async def acme_ready(self, proc: Proc, binary: Path, config: AcmeConfig) -> Proc:
        """Wait until the CSE answers; an ACME that exits before (it has, now and then, on this machine, without
        a word) is started again, ``ACME_ATTEMPTS`` times in all. Returns the process that answers."""
        for attempt in range(1, ACME_ATTEMPTS + 1):
            try:
                await self.wait_until(proc, lambda: probe(config.http_port, config.cse_name), "answer to a RETRIEVE")
                return proc
            except DemoError:
                if proc.popen.poll() is None or attempt == ACME_ATTEMPTS:
                    raise
            proc = self.start_acme(f"{proc.name}-again", binary, config)
        raise AssertionError("unreachable")

    def stop_all(self) -> None:
        """SIGTERM to every running process (newest first), then SIGKILL to what is left after ``stop_grace``."""
        for proc in reversed(self.procs):
            if proc.popen.poll() is None:
                proc.popen.terminate()
        deadline = time.monotonic() + self.stop_grace
        for proc in reversed(self.procs):
            try:
                proc.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.popen.kill()
                proc.popen.wait()
