"""Helpers the ``m2msec`` subcommands share (host:port parsing, key reading, default paths, the event loop).

:mod:`m2msec.cli.main` builds the parser from the subcommand modules and those modules import these helpers
from here, so no subcommand imports ``main`` (no import cycle).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from m2msec.errors import ConfigurationError
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import check_file_permissions

__all__ = ["default_db", "parse_hostport", "read_key", "run_async"]

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
