"""``m2msec keys``: manage the SQLite PSK store (add, list, remove, import). ``list`` never shows keys."""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path
from typing import Any

from m2msec.errors import ConfigurationError
from m2msec.keys.files import check_new_file, write_secret_file
from m2msec.keys.secret import SecretKey
from m2msec.keys.sqlite_store import SQLitePSKStore
from m2msec.keys.table import PSKEntry, TomlPSKTable


def add_parser(sub: Any) -> None:
    from m2msec.cli.common import default_db

    p: argparse.ArgumentParser = sub.add_parser("keys", help="manage the SQLite PSK store")
    p.add_argument("--db", type=Path, default=default_db(),
                   help="SQLite key store (default: $M2MSEC_DB or ~/.local/share/m2msec/keys.db)")
    p.add_argument("--master-key-file", type=Path, default=None,
                   help="master key file; takes precedence over $M2MSEC_MASTER_KEY, which takes precedence "
                   "over DB.key beside the store (the default)")
    ks = p.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    a = ks.add_parser("add", help="add one identity")
    a.add_argument("--identity", required=True, help="psk_identity (KpsaID)")
    a.add_argument("--entity", help="AE-ID or CSE-ID bound to the key")
    a.add_argument("--description")
    src = a.add_mutually_exclusive_group(required=True)
    src.add_argument("--key-file", help="file holding the key in hex")
    src.add_argument("--key-env", help="environment variable holding the key in hex")
    src.add_argument("--generate", type=int, metavar="BYTES", help="generate a random key of this length")
    a.add_argument("--out", type=Path,
                   help="with --generate: write the new key (hex) to this new file, mode 0600 (an existing file "
                   "is refused)")
    a.add_argument("--replace", action="store_true", help="replace an existing entry")
    a.set_defaults(func=_add)

    ls = ks.add_parser("list", help="list identities (never keys)")
    ls.set_defaults(func=_list)

    rm = ks.add_parser("remove", help="remove one identity")
    rm.add_argument("--identity", required=True)
    rm.set_defaults(func=_remove)

    im = ks.add_parser("import", help="import a TOML PSK table (all entries or none)")
    im.add_argument("file", type=Path)
    im.add_argument("--replace", action="store_true", help="replace entries that exist already")
    im.set_defaults(func=_import)


def _open(args: argparse.Namespace) -> SQLitePSKStore:
    return SQLitePSKStore(args.db, master_key_file=args.master_key_file)


def _add(args: argparse.Namespace) -> int:
    from m2msec.cli.common import read_key

    if args.generate is not None:
        if args.out is None:
            raise ConfigurationError("--generate needs --out FILE to hand the new key to its owner")
        if not 16 <= args.generate <= 64:
            raise ConfigurationError("--generate takes 16..64 bytes")
        check_new_file(args.out)  # before anything is stored
        key = SecretKey.generate(args.generate)
    else:
        if args.out is not None:
            raise ConfigurationError("--out goes with --generate")
        key = read_key(args.key_file, args.key_env)
    try:
        entry = PSKEntry(args.identity, key, args.entity, args.description)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None
    with _open(args) as store:
        if args.out is None:
            store.add(entry, replace=args.replace)
        else:
            # the key file appears (complete, 0600) before the entry: an entry whose key nobody holds is never
            # left behind; if the store refuses the entry, the file goes again
            write_secret_file(args.out, key.reveal().hex() + "\n")
            try:
                store.add(entry, replace=args.replace)
            except BaseException:
                args.out.unlink(missing_ok=True)
                raise
    print(f"added {args.identity}" + (f" (entity {args.entity})" if args.entity else ""))
    return 0


def _list(args: argparse.Namespace) -> int:
    with _open(args) as store:
        rows = list(store.list())
    print(f"{'IDENTITY':<48} {'ENTITY':<24} {'KEY':>9}  CREATED")
    for row in rows:
        created = datetime.datetime.fromtimestamp(row.created, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        print(f"{row.identity:<48} {row.entity or '-':<24} {row.key_length:>4} bytes  {created}")
    print(f"{len(rows)} identities")
    return 0


def _remove(args: argparse.Namespace) -> int:
    with _open(args) as store:
        store.remove(args.identity)
    print(f"removed {args.identity}")
    return 0


def _import(args: argparse.Namespace) -> int:
    table = TomlPSKTable(args.file)
    with _open(args) as store:
        count = store.add_many(table.entries(), replace=args.replace)
    print(f"imported {count} identities from {args.file}")
    return 0
