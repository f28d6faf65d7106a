"""``m2msec demo``: the TR-0038 §7.1 smart home on real processes, on loopback, with no configuration.

:mod:`~m2msec.demo.acme` (the ACME CSE's configuration and probe), :mod:`~m2msec.demo.procs` (starting and
stopping processes), :mod:`~m2msec.demo.topology` (files, ports, start order), :mod:`~m2msec.demo.clients`
(Entity A over HTTP and CoAP), :mod:`~m2msec.demo.scenario` (the steps), :mod:`~m2msec.demo.report` (table, JSON).
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from m2msec.demo.report import Step

__all__ = ["run_demo"]


async def run_demo(acme: Path, progress: Callable[[str], None], keep: Path | None = None) -> tuple[list[Step], float]:
    """Start everything in a temporary directory (``keep``: in that new directory, left in place with the
    processes' logs), run the steps, stop everything (whatever happens)."""
    # imported here: `m2msec.demo.acme` is imported by every `m2msec` command line (cli/demo.py), this is not
    from m2msec.demo.procs import Processes
    from m2msec.demo.scenario import World, run_steps
    from m2msec.demo.topology import start_all

    start = time.monotonic()
    with contextlib.ExitStack() as stack:
        if keep is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="m2msec-demo-")))
        else:
            keep.mkdir(mode=0o700)
            work = keep
        async with Processes(work) as procs:
            files, ports = await start_all(procs, acme, progress)
            by_name = {p.name: p for p in procs.procs}
            world = World(ports, files, by_name["in-gw"], by_name["mn-gw"])
            try:
                steps = await run_steps(world, progress)
            finally:
                await world.close()
            progress(f"stopping {len(procs.procs)} processes")
    return steps, time.monotonic() - start
