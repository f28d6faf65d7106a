"""``m2msec mef``: run the M2M Enrolment Function and provision its enrolees and targets (docs/mef.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from m2msec.errors import ConfigurationError, Conflict, IdentifierError, NotFound

__all__ = ["add_parser"]


def _key_options(p: argparse.ArgumentParser, what: str) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--key-file", help=f"file holding {what} in hex")
    src.add_argument("--key-env", help=f"environment variable holding {what} in hex")
    src.add_argument("--generate", type=int, metavar="BYTES", help=f"generate a random {what} of this length "
                     "(16..64)")
    src.add_argument("--certificate", action="store_true",
                     help="no key: it authenticates with a certificate from the MEF's client trust anchors")
    p.add_argument("--out", type=Path, help=f"with --generate: write {what} (hex) to this new file, mode 0600")


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("mef", help="the M2M Enrolment Function (TS-0003 §8.3)")
    p.add_argument("--config", type=Path, help="settings file (TOML, docs/mef.md); without it, embedded defaults")
    p.add_argument("--store", help="key store URL: sqlite:///path or postgresql://user@host/db (overrides the file)")
    p.add_argument("--master-key-file", help="the key store's master key file (overrides the file)")
    ms = p.add_subparsers(dest="mef_command", required=True, metavar="ACTION")

    s = ms.add_parser("serve", help="run the MEF")
    s.add_argument("--listen", help="HOST:PORT (default 127.0.0.1:8446)")
    s.set_defaults(func=_serve)

    e = ms.add_parser("enrolees", help="provision enrolees (KpmID and Kpm, or a certificate identity)")
    es = e.add_subparsers(dest="enrolees_command", required=True, metavar="ACTION")
    a = es.add_parser("add", help="add an enrolee, its EnroleeID and its Enrolment Targets")
    a.add_argument("id", help="the KpmID (PSK), or with --certificate the identity its certificate gives "
                   "(//SP-ID/CSE-ID, //SP-ID/CSE-ID/AE-ID)")
    a.add_argument("--identity", required=True, help="the EnroleeID: its AE-ID or CSE-ID (absolute, or "
                   "SP-relative to the MEF's SP-ID)")
    a.add_argument("--target", action="append", required=True, metavar="TARGET_ID:SUID[,SUID]",
                   help="an Enrolment Target (its FQDN) and the SUIDs it may fetch (21: Km for a MAF, 22: Kpsa); "
                   "repeat for several")
    _key_options(a, "Kpm")
    a.add_argument("--lifetime", type=float, metavar="SECONDS",
                   help="Enrolment Expiry: each Ke lives this long (default 86400)")
    a.set_defaults(func=_add_enrolee)
    ls = es.add_parser("list", help="list enrolees (never keys)")
    ls.set_defaults(func=_list_enrolees)
    rv = es.add_parser("revoke", help="revoke an enrolee: no more enrolments, its KeIDs are refused")
    rv.add_argument("id")
    rv.set_defaults(func=_revoke_enrolee)

    t = ms.add_parser("targets", help="provision Enrolment Targets' credentials to the MEF")
    ts = t.add_subparsers(dest="targets_command", required=True, metavar="ACTION")
    ta = ts.add_parser("add", help="add a target: its FQDN (also its PSK identity), kind and credential")
    ta.add_argument("target_id", help="the Enrolment-Target-ID (an FQDN)")
    ta.add_argument("--kind", required=True, choices=("maf", "cse", "ae"), help="maf fetches SUID 21, cse/ae 22")
    _key_options(ta, "its PSK")
    ta.set_defaults(func=_add_target)
    tl = ts.add_parser("list", help="list targets (never keys)")
    tl.set_defaults(func=_list_targets)
    tr = ts.add_parser("revoke", help="delete a target's credential")
    tr.add_argument("target_id")
    tr.set_defaults(func=_revoke_target)

    en = ms.add_parser("enrol", help="as an Enrolee: enrol at a MEF and write the KeID and one derived key")
    en.add_argument("--mef", required=True, metavar="HOST:PORT", help="the MEF")
    en.add_argument("--mef-fqdn", required=True, metavar="FQDN", help="the MEF-FQDN (the @ part of the KeID)")
    en.add_argument("--kpm-id", required=True, metavar="ID", help="own KpmID")
    en.add_argument("--kpm-file", required=True, type=Path, metavar="FILE",
                    help="own Kpm in hex (no access for the group or others)")
    en.add_argument("--target", required=True, metavar="TARGET_ID",
                    help="the Enrolment-Target-ID (FQDN) to derive a key for, e.g. the gateway's --mef-target-id")
    en.add_argument("--suid", required=True, type=int, metavar="N", help="its SUID: 22 (Kpsa for the PSK SAEF with a "
                    "CSE such as m2msec gateway) or 21 (Km for a MAF)")
    en.add_argument("--out-dir", required=True, type=Path, metavar="DIR",
                    help="writes DIR/keid (the KeID, the key's PSK identity) and DIR/<SUID>-<TARGET_ID>.key (hex, "
                    "mode 0600; created, never overwritten)")
    en.add_argument("--timeout", type=float, metavar="SECONDS", help="seconds one MEF step may take (default 5)")
    en.set_defaults(func=_enrol)


def _config(args: argparse.Namespace) -> Any:
    from m2msec.mef.config import load_config

    return load_config(args.config).with_overrides(store=args.store, master_key_file=args.master_key_file,
                                                   listen=getattr(args, "listen", None))


def _key(args: argparse.Namespace) -> Any:
    from m2msec.cli.common import read_key
    from m2msec.keys.files import check_new_file
    from m2msec.keys.secret import SecretKey

    if args.out is not None and args.generate is None:
        raise ConfigurationError("--out goes with --generate")
    if args.certificate:
        return None
    if args.generate is not None:
        if args.out is None:
            raise ConfigurationError("--generate needs --out FILE to hand the key to its owner")
        if not 16 <= args.generate <= 64:
            raise ConfigurationError("--generate takes 16..64 bytes")
        check_new_file(args.out)
        return SecretKey.generate(args.generate)
    return read_key(args.key_file, args.key_env)


def _targets(specs: list[str]) -> list[Any]:
    from m2msec.mef.procedures import EnrolmentTarget

    out = []
    for spec in specs:
        target, sep, suids = spec.rpartition(":")
        try:
            values = tuple(int(s) for s in suids.split(","))
        except ValueError:
            values = ()
        if not sep or not target or not values:
            raise ConfigurationError(f"--target {spec!r}: expected TARGET_ID:SUID[,SUID]")
        out.append(EnrolmentTarget(target, values))
    return out


def _provision(args: argparse.Namespace, key: Any, add: Any) -> Any:
    from m2msec.keys.files import write_secret_file
    from m2msec.mef.server import open_mef_store

    with open_mef_store(_config(args)) as store:
        if args.out is not None:
            write_secret_file(args.out, key.reveal().hex() + "\n")
        try:
            return add(store)
        except (IdentifierError, Conflict) as exc:
            if args.out is not None:
                args.out.unlink(missing_ok=True)
            raise ConfigurationError(str(exc)) from None
        except BaseException:
            if args.out is not None:
                args.out.unlink(missing_ok=True)
            raise


def _add_enrolee(args: argparse.Namespace) -> int:
    from m2msec.maf.wire import MAFProblem, absolute_id
    from m2msec.mef.procedures import DEFAULT_ENROLMENT_LIFETIME, add_enrolee

    config = _config(args)
    try:
        enrolee_id = absolute_id(args.identity, config.sp_id, "--identity")
    except MAFProblem as exc:
        raise ConfigurationError(exc.detail) from None
    targets = _targets(args.target)
    lifetime = DEFAULT_ENROLMENT_LIFETIME if args.lifetime is None else args.lifetime
    if not lifetime > 0:
        raise ConfigurationError("--lifetime must be a positive number of seconds")
    key = _key(args)
    enrolee = _provision(args, key, lambda store: add_enrolee(store, args.id, enrolee_id=enrolee_id,
                                                               targets=targets, kpm=key, lifetime=lifetime))
    print(f"added enrolee {enrolee.record_id} ({enrolee.enrolee_id}, {enrolee.credential}, "
          f"{len(enrolee.targets)} targets)")
    return 0


def _add_target(args: argparse.Namespace) -> int:
    from m2msec.mef.procedures import add_target

    key = _key(args)
    target = _provision(args, key, lambda store: add_target(store, args.target_id, args.kind, key))
    print(f"added Enrolment Target {target.target_id} ({target.kind}, {target.credential})")
    return 0


def _list_enrolees(args: argparse.Namespace) -> int:
    from m2msec.mef.procedures import enrolees
    from m2msec.mef.server import open_mef_store

    with open_mef_store(_config(args)) as store:
        rows = enrolees(store)
    print(f"{'ID':<40} {'ENROLEE-ID':<40} {'CREDENTIAL':<11} {'STATUS':<8} {'LIFETIME':>9} TARGETS")
    for e in rows:
        targets = " ".join(f"{t.target_id}:{','.join(str(s) for s in t.suids)}" for t in e.targets)
        print(f"{e.record_id:<40} {e.enrolee_id:<40} {e.credential:<11} {e.status:<8} {e.lifetime:>9g} {targets}")
    print(f"{len(rows)} enrolees")
    return 0


def _list_targets(args: argparse.Namespace) -> int:
    from m2msec.mef.procedures import targets
    from m2msec.mef.server import open_mef_store

    with open_mef_store(_config(args)) as store:
        rows = targets(store)
    print(f"{'TARGET-ID':<48} {'KIND':<5} CREDENTIAL")
    for t in rows:
        print(f"{t.target_id:<48} {t.kind:<5} {t.credential}")
    print(f"{len(rows)} targets")
    return 0


def _revoke(args: argparse.Namespace, revoke: Any, what: str, ident: str) -> None:
    from m2msec.mef.server import open_mef_store

    with open_mef_store(_config(args)) as store:
        try:
            revoke(store, ident)
        except NotFound:
            raise ConfigurationError(f"no {what} {ident}") from None


def _revoke_enrolee(args: argparse.Namespace) -> int:
    from m2msec.mef.procedures import revoke_enrolee

    _revoke(args, revoke_enrolee, "enrolee", args.id)
    print(f"revoked enrolee {args.id}")
    return 0


def _revoke_target(args: argparse.Namespace) -> int:
    from m2msec.mef.procedures import revoke_target

    _revoke(args, revoke_target, "Enrolment Target", args.target_id)
    print(f"revoked Enrolment Target {args.target_id}")
    return 0


async def _serve(args: argparse.Namespace) -> int:
    from m2msec.cli.common import serve_until_stopped
    from m2msec.mef.server import running_mef

    config = _config(args)
    return await serve_until_stopped(running_mef(config), lambda running: (
        f"MEF {config.mef_fqdn} listening on {running.host}:{running.port} (key store "
        f"{running.mef.store.store.location})"))


async def _enrol(args: argparse.Namespace) -> int:
    """The Enrolee's side (docs/mef.md): enrol, derive the §10.3.7 key for (SUID, target), write it for
    ``m2msec request --identity <KeID> --key-file ...``; one line out, never a key."""
    from m2msec.cli.common import read_key
    from m2msec.keys.files import check_new_file, write_secret_file
    from m2msec.mef import kdf
    from m2msec.mef.client import DEFAULT_MEF_TIMEOUT, MEFCredentials, enrol

    try:
        target = kdf.normalize_target_id(args.target)
        kdf.encode_suid(args.suid)
    except IdentifierError as exc:
        raise ConfigurationError(f"--target/--suid: {exc}") from None
    timeout = DEFAULT_MEF_TIMEOUT if args.timeout is None else args.timeout
    out: Path = args.out_dir
    if not out.is_dir():
        raise ConfigurationError(f"--out-dir {out}: no such directory")
    keid_file, key_file = out / "keid", out / f"{args.suid}-{target}.key"
    for path in (keid_file, key_file):  # refused before enrolling: no Ke is spent on a run that cannot finish
        check_new_file(path)
    kpm = read_key(str(args.kpm_file), None)
    enrolment = await enrol(args.mef, MEFCredentials(args.kpm_id, kpm), mef_fqdn=args.mef_fqdn, timeout=timeout)
    try:
        key = enrolment.credential(args.suid, target)
    except IdentifierError as exc:
        raise ConfigurationError(str(exc)) from None
    write_secret_file(key_file, key.reveal().hex() + "\n")
    try:
        write_secret_file(keid_file, f"{enrolment.keid}\n")
    except BaseException:
        key_file.unlink(missing_ok=True)
        raise
    print(f"enrolled {enrolment.keid} as {enrolment.enrolee_id}: SUID {args.suid} key for {target} in {key_file}")
    return 0
