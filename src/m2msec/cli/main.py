"""``m2msec`` command line. The only place that calls ``asyncio.run``.

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
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from m2msec import __version__
from m2msec.errors import ConfigurationError, M2MSecError
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import check_file_permissions

__all__ = ["main", "run_async"]

T = TypeVar("T")


def default_db() -> Path:
    env = os.environ.get("M2MSEC_DB")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "m2msec" / "keys.db"


def parse_hostport(text: str, *, default_host: str = "127.0.0.1") -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = default_host, text
    host = host.strip("[]") or default_host
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigurationError(f"invalid HOST:PORT {text!r}")
    return host, int(port)


def read_key(key_file: str | None, key_env: str | None) -> SecretKey:
    """A hex key from a file (no access for the group or others, D35) or from an environment variable."""
    if (key_file is None) == (key_env is None):
        raise ConfigurationError("give the key with exactly one of --key-file or --key-env")
    if key_file is not None:
        path = Path(key_file)
        check_file_permissions(path)
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"{path}: cannot read key: {exc}") from None
        return SecretKey.from_hex(text)
    assert key_env is not None
    value = os.environ.get(key_env)
    if not value:
        raise ConfigurationError(f"environment variable {key_env} is not set")
    return SecretKey.from_hex(value)


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Run on uvloop where it is installed (it halves asyncio's per-connection cost), else on asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def build_parser() -> argparse.ArgumentParser:
    from m2msec.cli import demo, gateway, keys, pki, request

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
