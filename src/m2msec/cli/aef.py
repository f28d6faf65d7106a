"""``m2msec aef``: the API exposing function front (docs/capif-aef.md "The AEF front").

* ``register``: register an API provider domain with the CCF (AMF, APF, AEF keys and certificates in a new folder);
* ``publish``: publish the configured API(s) with the APF, on the AEF front's interface;
* ``serve``: run the AEF front (TLS-PSK with AEFPSK, PKI, OAuth) in front of the backend.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from m2msec.cli.capif import add_enrolment_arguments
from m2msec.errors import ConfigurationError

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("aef", help="a CAPIF API exposing function in front of an HTTP "
                                                "service (3GPP TS 33.122 CAPIF-2e: PSK, PKI, OAuth)")
    cs = p.add_subparsers(dest="aef_command", required=True, metavar="ACTION")

    r = cs.add_parser("register", help="register an API provider domain (AMF, APF, AEF) and write a new folder")
    add_enrolment_arguments(r, "provider", "provider folder")
    r.set_defaults(func=_register)

    pub = cs.add_parser("publish", help="publish the configured API(s) with the provider folder's APF")
    pub.add_argument("--config", required=True, type=Path, help="the AEF front's configuration (TOML)")
    pub.add_argument("--provider", required=True, type=Path, help="the folder `m2msec aef register` wrote")
    pub.set_defaults(func=_publish)

    s = cs.add_parser("serve", help="run the AEF front")
    s.add_argument("--config", required=True, type=Path, help="the AEF front's configuration (TOML)")
    s.add_argument("--listen", metavar="HOST:PORT", help="override the configuration's listen address")
    s.add_argument("--backend", metavar="URL", help="override the configuration's backend (http://HOST:PORT)")
    s.set_defaults(func=_serve)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read the {what}: {exc.strerror}") from None


async def _register(args: argparse.Namespace) -> int:
    from m2msec.capif.aef.register import register
    from m2msec.cli.common import parse_hostport
    from m2msec.keys.table import check_file_permissions

    check_file_permissions(args.credential)  # a bearer credential others can read is refused, as by `capif onboard`
    ids = await register(parse_hostport(args.ccf), args.ccf_host, _read(args.ca, "CA certificate"),
                         _read(args.credential, "credential").decode("ascii", "replace"), args.out)
    print(json.dumps(ids))
    return 0


async def _publish(args: argparse.Namespace) -> int:
    from m2msec.capif.aef.config import load_config
    from m2msec.capif.aef.register import PROVIDER_FILE, publish

    config = load_config(args.config)
    try:
        ids = json.loads(_read(args.provider / PROVIDER_FILE, "provider IDs"))
        apf_id = str(ids["APF"])
    except (ValueError, KeyError, TypeError, RecursionError):
        raise ConfigurationError(f"{args.provider}: not a provider folder of `m2msec aef register`") from None
    api_ids = await publish(config.ccf_address, config.ccf_host, config.ccf_ca_pem,
                            (apf_id, _read(args.provider / "apf.crt", "APF certificate"),
                             _read(args.provider / "apf.key", "APF key")), config.aef_id, config.apis)
    print(json.dumps(dict(zip((a.name for a in config.apis), api_ids, strict=True))))
    return 0


async def _serve(args: argparse.Namespace) -> int:
    from m2msec.capif.aef.config import load_config
    from m2msec.capif.aef.server import running_aef_front
    from m2msec.cli.common import serve_until_stopped

    overrides = {k: v for k, v in (("listen", args.listen), ("backend", args.backend)) if v}
    config = load_config(args.config, overrides=overrides)
    return await serve_until_stopped(running_aef_front(config), lambda running: (
        f"AEF {config.aef_id} listening on {config.listen[0]}:{running.port} "
        f"({', '.join(a.name for a in config.apis)}) -> backend {config.backend[0]}:{config.backend[1]}"))
