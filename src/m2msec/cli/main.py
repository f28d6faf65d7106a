"""``m2msec`` command line: the parser and the one-line error rule (services run through
:func:`m2msec.cli.common.run_async`, the only place that calls ``asyncio.run``).

Every :class:`~m2msec.errors.M2MSecError` becomes one line on stderr and its ``exit_code``; any
other exception becomes one line too (set ``M2MSEC_DEBUG=1`` for the traceback). Keys are never
taken from the command line (visible in ``ps``): only from a file or an environment variable.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

from m2msec import __version__
from m2msec.cli.common import run_async
from m2msec.errors import M2MSecError

__all__ = ["main", "run_async"]


def build_parser() -> argparse.ArgumentParser:
    from m2msec.cli import aef, capif, ccf, demo, gateway, keys, maf, mef, pki, request, tunnel

    parser = argparse.ArgumentParser(
        prog="m2msec", description="oneM2M TS-0003 security associations: TLS-PSK gateway, client and key store"
    )
    parser.add_argument("--version", action="version", version=f"m2msec {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log more (INFO and DEBUG)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    keys.add_parser(sub)
    gateway.add_parser(sub)
    request.add_parser(sub)
    demo.add_parser(sub)
    pki.add_parser(sub)
    maf.add_parser(sub)
    mef.add_parser(sub)
    tunnel.add_parser(sub)
    ccf.add_parser(sub)
    capif.add_parser(sub)
    aef.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else getattr(args, "log_level", logging.WARNING),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        result = args.func(args)
        if asyncio.iscoroutine(result):
            result = run_async(result)
        return int(result or 0)
    except M2MSecError as exc:
        print(f"m2msec: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if os.environ.get("M2MSEC_DEBUG"):
            raise
        print(f"m2msec: internal error: {type(exc).__name__} (set M2MSEC_DEBUG=1 for details)", file=sys.stderr)
        return 70


if __name__ == "__main__":
    sys.exit(main())
