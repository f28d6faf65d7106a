"""Helpers the ``m2msec`` subcommands share (host:port parsing, key reading, default paths, the event loop:
asyncio's by default, uvloop on request).

:mod:`m2msec.cli.main` builds the parser from the subcommand modules and those modules import these helpers
from here, so no subcommand imports ``main`` (no import cycle).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, TypeVar

from m2msec.errors import ConfigurationError
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import check_file_permissions

__all__ = ["LOOPS", "default_db", "parse_hostport", "read_key", "run_async", "serve_until_stopped"]

T = TypeVar("T")


def default_db() -> Path:
    env = os.environ.get("M2MSEC_DB")
    if env:
        return Path(env)
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "m2msec" / "keys.db"


def read_file(path: Path | None, what: str) -> bytes | None:
    """The bytes of ``path`` (None for None); unreadable: ConfigurationError naming the file and ``what`` it is."""
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read {what}: {exc.strerror}") from None


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


#: the event loops a service can run on: asyncio's own (the default) or uvloop (the ``uvloop`` extra)
LOOPS = ("asyncio", "uvloop")


def run_async(coro: Coroutine[Any, Any, T], *, loop: str = "asyncio") -> T:
    """Run ``coro`` on asyncio's event loop, or on uvloop with ``loop="uvloop"`` (bench/README.md: what it gains).

    Raises:
        ConfigurationError: uvloop was asked for and is not installed (``pip install 'm2msec[uvloop]'``)."""
    if loop == "uvloop":
        try:
            import uvloop
        except ImportError:
            coro.close()
            raise ConfigurationError("--loop uvloop needs the uvloop package: pip install 'm2msec[uvloop]'") from None
        return uvloop.run(coro)
    if loop != "asyncio":
        coro.close()
        raise ConfigurationError(f"unknown event loop {loop!r}: choose one of {', '.join(LOOPS)}")
    return asyncio.run(coro)


async def serve_until_stopped(started: AbstractAsyncContextManager[T], announce: Callable[[T], str]) -> int:
    """Run a service (``m2msec maf serve``, ``m2msec ccf serve``) until SIGINT or SIGTERM: enter ``started``, print
    ``announce(running)`` as the start line on standard error, wait, leave. Returns the exit status, 0."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with started as running:
        print(announce(running), file=sys.stderr, flush=True)
        await stop.wait()
    return 0
