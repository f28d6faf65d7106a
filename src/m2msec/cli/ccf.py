"""``m2msec ccf``: run the CAPIF core function and administer it (docs/ccf.md)."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
from pathlib import Path
from typing import Any, Final

from m2msec.errors import ConfigurationError

__all__ = ["DEFAULT_CREDENTIAL_LIFETIME", "MAX_CREDENTIAL_LIFETIME", "add_parser"]

#: D139: an onboarding credential is valid for a day unless the operator says otherwise, for 30 days at most
DEFAULT_CREDENTIAL_LIFETIME: Final = 86400
MAX_CREDENTIAL_LIFETIME: Final = 30 * 86400


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("ccf", help="the CAPIF core function (3GPP TS 29.222, TS 33.122)")
    p.add_argument("--config", type=Path, help="settings file (TOML, docs/ccf.md); without it, embedded defaults")
    p.add_argument("--store", help="key store URL: sqlite:///path or postgresql://user@host/db (overrides the file)")
    p.add_argument("--master-key-file", help="the key store's master key file (overrides the file)")
    cs = p.add_subparsers(dest="ccf_command", required=True, metavar="ACTION")

    s = cs.add_parser("serve", help="run the CCF")
    s.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:8445)")
    s.set_defaults(func=_serve)

    o = cs.add_parser("onboarding-credential",
                      help="issue an onboarding credential (a JWT an API invoker or provider onboards with, once)")
    o.add_argument("--subject", required=True, help="who it is for (recorded with the invoker it onboards)")
    o.add_argument("--for", dest="purpose", required=True, choices=("invoker", "provider"),
                   help="what it may create: an API invoker (onboarding) or an API provider domain (registration)")
    o.add_argument("--lifetime", type=int, default=DEFAULT_CREDENTIAL_LIFETIME, metavar="SECONDS",
                   help=f"validity (default {DEFAULT_CREDENTIAL_LIFETIME} s, at most {MAX_CREDENTIAL_LIFETIME} s)")
    o.add_argument("--out", type=Path, help="write it to this new file (mode 0600) instead of standard output")
    o.set_defaults(func=_credential)

    r = cs.add_parser("revoke-credential", help="revoke an onboarding credential by its jti (before it is used)")
    r.add_argument("jti")
    r.set_defaults(func=_revoke)

    c = cs.add_parser("ca-certificate", help="print the CCF's CA certificate (what its clients trust it with)")
    c.set_defaults(func=_ca)


def _config(args: argparse.Namespace) -> Any:
    from m2msec.capif.ccf.config import load_config

    return load_config(args.config).with_overrides(store=args.store, master_key_file=args.master_key_file,
                                                   listen=getattr(args, "listen", None))


def _when(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _credential(args: argparse.Namespace) -> int:
    import time

    from m2msec.capif.ccf.admin import issue_credential
    from m2msec.capif.ccf.server import open_ccf_store
    from m2msec.keys.files import check_new_file, write_secret_file

    config = _config(args)
    if not 1 <= args.lifetime <= MAX_CREDENTIAL_LIFETIME:
        raise ConfigurationError(f"--lifetime must be 1..{MAX_CREDENTIAL_LIFETIME} seconds")
    if not args.subject or len(args.subject) > 256 or not args.subject.isprintable():
        raise ConfigurationError("--subject must be 1..256 printable characters")
    if args.out is not None:
        check_new_file(args.out)
    with open_ccf_store(config) as store:
        issued = issue_credential(store, issuer=config.ccf_host, subject=args.subject, lifetime=args.lifetime,
                                  now=int(time.time()), purpose=args.purpose,
                                  audience=config.onboarding_audience or None)
    if args.out is not None:
        write_secret_file(args.out, issued.token + "\n")
    else:
        print(issued.token)
    where = f", written to {args.out}" if args.out is not None else ""
    print(f"onboarding credential ({args.purpose}) for {args.subject!r}: jti {issued.jti}, valid until "
          f"{_when(issued.expires)}{where}", file=sys.stderr)
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from m2msec.capif.ccf import http
    from m2msec.capif.ccf.admin import revoke_credential
    from m2msec.capif.ccf.context import CCFPolicy
    from m2msec.capif.ccf.outbox import OutboxSink
    from m2msec.capif.ccf.server import open_ccf, open_ccf_store
    from m2msec.errors import CAPIFError

    config = _config(args)
    jti = args.jti.strip()
    if not jti or len(jti) > 256 or not jti.isprintable():
        raise ConfigurationError("the jti must be 1..256 printable characters")
    with open_ccf_store(config) as store:
        ccf = open_ccf(store, CCFPolicy(config.ccf_host, config.api_root or f"https://{config.ccf_host}"))
        ccf.events = OutboxSink(ccf.store, ccf.clock)  # D155: the running CCF tells the subscribers
        http.load_modules()
        try:
            print(asyncio.run(revoke_credential(ccf, jti)))
        except CAPIFError as exc:
            raise ConfigurationError(exc.detail) from None
    return 0


def _ca(args: argparse.Namespace) -> int:
    import time

    from m2msec.capif.ca import load_or_create_ca
    from m2msec.capif.ccf.server import open_ccf_store

    config = _config(args)
    with open_ccf_store(config) as store:
        ca = load_or_create_ca(store, config.ccf_host, now=datetime.datetime.fromtimestamp(time.time(), datetime.UTC))
    sys.stdout.write(ca.certificate_pem().decode("ascii"))
    return 0


async def _serve(args: argparse.Namespace) -> int:
    from m2msec.capif.ccf.server import running_ccf
    from m2msec.cli.common import serve_until_stopped

    config = _config(args)
    return await serve_until_stopped(running_ccf(config), lambda running: (
        f"CCF {config.ccf_host} listening on {running.host}:{running.port} (apiRoot {running.ccf.policy.api_root}, "
        f"key store {running.ccf.store.store.location})"))
