"""``m2msec demo``: the TR-0038 §7.1 smart home on loopback with real processes (:mod:`m2msec.demo`).

Two ACME CSEs (IN-CSE ``id-in``, MN-CSE ``mn-cse-123456``), each behind an ``m2msec gateway``, a MAF, two
tunnels; the lights (PSK SAE over HTTP and coaps://), the MN-CSE's registration at the IN-CSE (certificates),
the smartphone (MAF-based SAE) switching a light on through the IN-CSE, an impersonation attempt. Progress goes
to stderr, the table (or ``--json``) to stdout; exit status 0 only if every step behaved as specified.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

from m2msec.demo.acme import INSTALL_HINT, acme_binary
from m2msec.errors import M2MSecError


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("demo", help="run the TR-0038 smart home (real CSEs) on loopback")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.add_argument("--keep", type=Path, metavar="DIR", help="run in the new directory DIR and keep it (the files, "
                   "every process's log in DIR/logs) instead of a temporary directory removed at the end")
    p.set_defaults(func=run)


async def run(args: argparse.Namespace) -> int:
    from m2msec.demo import run_demo
    from m2msec.demo.report import document, table
    from m2msec.demo.topology import Progress

    if args.keep is not None and args.keep.exists():
        print(f"m2msec: error: --keep {args.keep}: exists already (give a new directory)", file=sys.stderr)
        return 2
    if args.keep is not None and not args.keep.absolute().parent.is_dir():
        print(f"m2msec: error: --keep {args.keep}: its parent directory does not exist", file=sys.stderr)
        return 2
    acme = acme_binary()
    if acme is None:
        print(f"m2msec: error: {INSTALL_HINT}", file=sys.stderr)
        return 2
    progress = Progress(quiet=args.quiet)
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)  # SIGINT: asyncio.run cancels
    try:
        steps, seconds = await run_demo(acme, progress, args.keep)
    except asyncio.CancelledError:  # every process was stopped on the way out
        print("m2msec: demo interrupted", file=sys.stderr)
        return 130
    except M2MSecError as exc:
        if args.json:
            print(document([], 0.0, str(exc)))
        print(f"m2msec: error: demo failed: {exc}", file=sys.stderr)
        return 1
    print(document(steps, seconds) if args.json else table(steps))
    return 0 if steps and all(s.ok for s in steps) else 1
