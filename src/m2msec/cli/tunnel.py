"""``m2msec tunnel``: a plain TCP listener on loopback whose connections are carried inside TLS connections to a
peer's ``m2msec gateway``, as Entity A with a certificate or a PSK (:mod:`m2msec.tunnel`, docs/tunnel.md).

For a CSE that cannot present credentials itself (ACME's outgoing requests): give it ``http://127.0.0.1:PORT``
as its registrar address or as the other CSE's point of access. Prints ``listening on HOST:PORT`` once
listening (``--listen 127.0.0.1:0`` picks a free port), then serves until SIGTERM / SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any

from m2msec.cli.common import LOOPS, run_async
from m2msec.cli.credentials import add_credential_options, credentials_from_args, peer_from_args
from m2msec.errors import ConfigurationError
from m2msec.tunnel import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_LISTEN_HOST,
    DEFAULT_MAX_CONNECTIONS,
    Tunnel,
    TunnelConfig,
)


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "tunnel", help="plain TCP on loopback -> TLS to a gateway, as Entity A (for a CSE's outgoing requests)",
        description="Accept plain TCP connections and carry each inside its own TLS connection to --to, "
                    "authenticated with a certificate (--cert) or a PSK (--identity). The plain side is NOT "
                    "authenticated: anyone who can connect to it acts with these credentials, so it listens on "
                    "loopback only unless --allow-remote.")
    p.add_argument("--listen", default=f"{DEFAULT_LISTEN_HOST}:0", metavar="HOST:PORT",
                   help=f"plain listener (default {DEFAULT_LISTEN_HOST}:0, a free port; printed as "
                        "'listening on HOST:PORT')")
    p.add_argument("--to", required=True, metavar="HOST:PORT", help="the TLS peer: Entity B's gateway")
    add_credential_options(p)
    p.add_argument("--allow-remote", action="store_true",
                   help="allow a non-loopback --listen address (the plain side is unauthenticated)")
    p.add_argument("--timeout", type=float, default=DEFAULT_CONNECT_TIMEOUT, metavar="SECONDS",
                   help=f"TCP connection and handshake with --to (default {DEFAULT_CONNECT_TIMEOUT:g})")
    p.add_argument("--idle-timeout", type=float, default=DEFAULT_IDLE_TIMEOUT, metavar="SECONDS",
                   help=f"close a connection without traffic for this long (default {DEFAULT_IDLE_TIMEOUT:g})")
    p.add_argument("--max-connections", type=int, default=DEFAULT_MAX_CONNECTIONS, metavar="N",
                   help=f"connections open at once; more are reset (default {DEFAULT_MAX_CONNECTIONS})")
    p.add_argument("--loop", choices=LOOPS, default="asyncio",
                   help="event loop: asyncio (default) or uvloop (needs the uvloop extra)")
    p.set_defaults(func=_dispatch)


def _dispatch(args: argparse.Namespace) -> int:
    return run_async(run(args), loop=args.loop)


def config_from_args(args: argparse.Namespace) -> TunnelConfig:
    from m2msec.cli.common import parse_hostport

    listen_host, listen_port = parse_hostport(args.listen)
    if ":" not in args.to:
        raise ConfigurationError(f"--to needs HOST:PORT, not {args.to!r}")
    target_host, target_port = parse_hostport(args.to)
    if target_port == 0:
        raise ConfigurationError(f"--to needs a port, not {args.to!r}")
    creds = credentials_from_args(args, peer_from_args(args))
    config = TunnelConfig(target_host, target_port, creds, listen_host=listen_host, listen_port=listen_port,
                          server_name=args.server_name, connect_timeout=args.timeout,
                          idle_timeout=args.idle_timeout, max_connections=args.max_connections,
                          allow_remote=args.allow_remote)
    config.check()
    return config


async def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM / SIGINT."""
    tunnel = Tunnel(config_from_args(args))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):  # before the line below: a parent may signal as soon as it reads it
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await tunnel.start()
    except OSError as exc:
        raise ConfigurationError(f"cannot listen on {args.listen}: {exc.strerror or exc}") from None
    host, port = tunnel.address
    shown = f"[{host}]" if ":" in host else host
    print(f"listening on {shown}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        await tunnel.close()
    return 0
