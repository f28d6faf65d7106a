"""``m2msec maf``: run the M2M Authentication Function and provision its clients (docs/maf.md)."""

from __future__ import annotations

import argparse
import asyncio
import datetime
from pathlib import Path
from typing import Any

from m2msec.errors import ConfigurationError, IdentifierError, NotFound

__all__ = ["add_parser"]


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("maf", help="the M2M Authentication Function (TS-0003 §8.8)")
    p.add_argument("--config", type=Path, help="settings file (TOML, docs/maf.md); without it, embedded defaults")
    p.add_argument("--store", help="key store URL: sqlite:///path or postgresql://user@host/db (overrides the file)")
    p.add_argument("--master-key-file", help="the key store's master key file (overrides the file)")
    ms = p.add_subparsers(dest="maf_command", required=True, metavar="ACTION")

    s = ms.add_parser("serve", help="run the MAF")
    s.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:8444)")
    s.set_defaults(func=_serve)

    c = ms.add_parser("clients", help="provision MAF clients (KmID, Km)")
    cs = c.add_subparsers(dest="clients_command", required=True, metavar="ACTION")
    a = cs.add_parser("add", help="add a client: its KmID, Km and (optionally) its AE-ID or CSE-ID")
    a.add_argument("kmid", help="KmID: MAF_RELATIVE_KmID@MAF-FQDN, or just the relative part")
    a.add_argument("--identity", help="the client's AE-ID or CSE-ID (absolute, or SP-relative to the MAF's SP-ID); "
                   "without it the client is known by the Credential-ID 11-<KmID>")
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("--key-file", help="file holding Km in hex")
    src.add_argument("--key-env", help="environment variable holding Km in hex")
    src.add_argument("--generate", type=int, metavar="BYTES", help="generate a random Km of this length (16..64)")
    a.add_argument("--out", type=Path, help="with --generate: write Km (hex) to this new file, mode 0600")
    a.add_argument("--lifetime", type=float, metavar="SECONDS", help="the credential expires after this long")
    a.set_defaults(func=_add)
    ls = cs.add_parser("list", help="list clients (never keys)")
    ls.set_defaults(func=_list)
    rv = cs.add_parser("revoke", help="revoke a client and delete the keys it registered")
    rv.add_argument("kmid")
    rv.set_defaults(func=_revoke)


def _config(args: argparse.Namespace) -> Any:
    from m2msec.maf.config import load_config

    return load_config(args.config).with_overrides(store=args.store, master_key_file=args.master_key_file,
                                                   listen=getattr(args, "listen", None))


def _kmid(text: str, maf_fqdn: str) -> str:
    from m2msec.maf.procedures import canonical_kmid

    try:
        kmid = canonical_kmid(text if "@" in text else f"{text}@{maf_fqdn}")
    except IdentifierError as exc:
        raise ConfigurationError(str(exc)) from None
    if kmid.rpartition("@")[2] != maf_fqdn:
        raise ConfigurationError(f"the KmID names MAF-FQDN {kmid.rpartition('@')[2]!r}, this MAF is {maf_fqdn!r}")
    return kmid


def _add(args: argparse.Namespace) -> int:
    import time

    from m2msec.cli.common import read_key
    from m2msec.keys.files import check_new_file, write_secret_file
    from m2msec.keys.secret import SecretKey
    from m2msec.maf.procedures import client_credential_id
    from m2msec.maf.server import open_maf_store
    from m2msec.maf.wire import MAFProblem, absolute_id
    from m2msec.store import MAFClient

    config = _config(args)
    kmid = _kmid(args.kmid, config.maf_fqdn)
    identity = ""
    if args.identity:
        try:
            identity = absolute_id(args.identity, config.sp_id, "--identity")
        except MAFProblem as exc:
            raise ConfigurationError(exc.detail) from None
    if args.generate is not None:
        if args.out is None:
            raise ConfigurationError("--generate needs --out FILE to hand Km to its client")
        if not 16 <= args.generate <= 64:
            raise ConfigurationError("--generate takes 16..64 bytes")
        check_new_file(args.out)
        km = SecretKey.generate(args.generate)
    else:
        if args.out is not None:
            raise ConfigurationError("--out goes with --generate")
        km = read_key(args.key_file, args.key_env)
    if args.lifetime is not None and not args.lifetime > 0:
        raise ConfigurationError("--lifetime must be a positive number of seconds")
    expires = time.time() + args.lifetime if args.lifetime is not None else None
    with open_maf_store(config) as store:
        if args.out is not None:
            write_secret_file(args.out, km.reveal().hex() + "\n")
        try:
            store.register_client(MAFClient(kmid, km, identity, expires))
        except BaseException:
            if args.out is not None:
                args.out.unlink(missing_ok=True)
            raise
    print(f"added MAF client {kmid} ({identity or client_credential_id(kmid)})")
    return 0


def _when(expires: float | None) -> str:
    if expires is None:
        return "-"
    return datetime.datetime.fromtimestamp(expires, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _list(args: argparse.Namespace) -> int:
    from m2msec.maf.server import open_maf_store
    from m2msec.store.records import KIND_MAF_CLIENT

    config = _config(args)
    with open_maf_store(config) as store:
        clients = [c for c in (store.get_client(k) for k in store.ids(KIND_MAF_CLIENT)) if c is not None]
    print(f"{'KMID':<48} {'IDENTITY':<40} {'STATUS':<8} EXPIRES")
    for c in clients:
        print(f"{c.kmid:<48} {c.identity or '-':<40} {c.status:<8} {_when(c.expires)}")
    print(f"{len(clients)} clients")
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from m2msec.maf.procedures import MAF, MAFPolicy
    from m2msec.maf.server import open_maf_store
    from m2msec.store import AsyncKeyStore

    config = _config(args)
    kmid = _kmid(args.kmid, config.maf_fqdn)
    with open_maf_store(config) as store:
        maf = MAF(AsyncKeyStore(store), MAFPolicy(config.maf_fqdn, config.sp_id))
        try:
            deleted = asyncio.run(maf.revoke_client(kmid))
        except NotFound:
            raise ConfigurationError(f"no MAF client {kmid}") from None
    print(f"revoked {kmid} ({deleted} registered keys deleted)")
    return 0


async def _serve(args: argparse.Namespace) -> int:
    from m2msec.cli.common import serve_until_stopped
    from m2msec.maf.server import running_maf

    config = _config(args)
    return await serve_until_stopped(running_maf(config), lambda running: (
        f"MAF {config.maf_fqdn} listening on {running.host}:{running.port} (key store "
        f"{running.maf.store.store.location})"))
