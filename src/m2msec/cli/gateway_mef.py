"""The ``--mef*`` options of ``m2msec gateway``: the gateway as an Enrolment Target of a MEF (docs/mef.md)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from m2msec.cli.common import read_file
from m2msec.errors import ConfigurationError
from m2msec.keys.table import check_file_permissions
from m2msec.maf.client_options import service_fqdn

if TYPE_CHECKING:
    from m2msec.mef.client import MEFFetcher

__all__ = ["add_mef_options", "mef_fetcher_from_args"]


def add_mef_options(p: argparse.ArgumentParser) -> None:
    """``--mef*``: the gateway as an Enrolment Target of a MEF (docs/mef.md), as :func:`add_maf_options` for a MAF."""
    from m2msec.mef.client import DEFAULT_MEF_TIMEOUT

    g = p.add_argument_group("remotely provisioned Kpsa (MEF, TS-0003 §8.3.2.1)")
    g.add_argument("--mef", metavar="HOST:PORT", help="the MEF: a PSK identity that is a KeID (<RelativeKeID>@"
                   "<MEF-FQDN>) of it gets its Kpsa there (fetchCredentials, SUID 22, cached until it expires); "
                   "other PSK identities still go to --maf / --psk-table / --db")
    g.add_argument("--mef-fqdn", metavar="FQDN", help="the MEF-FQDN (default: the host of --mef when it is a name)")
    g.add_argument("--mef-target-id", metavar="FQDN", help="the gateway's Enrolment-Target-ID: its PSK identity "
                   "for the MEF Handshake (the FQDN Enrolees derive Kpsa for)")
    g.add_argument("--mef-key-file", type=Path, metavar="FILE",
                   help="the gateway's target PSK at the MEF in hex (no access for the group or others)")
    g.add_argument("--mef-cert", type=Path, metavar="FILE", help="or its FQDN certificate chain (PEM) for the MEF "
                   "Handshake")
    g.add_argument("--mef-cert-key", type=Path, metavar="FILE", help="private key of --mef-cert (PEM)")
    g.add_argument("--mef-ca", type=Path, metavar="FILE",
                   help="trust anchors of the MEF's FQDN certificate (PEM), with --mef-cert")
    g.add_argument("--mef-timeout", type=float, default=DEFAULT_MEF_TIMEOUT, metavar="SECONDS",
                   help=f"seconds one MEF exchange may take (default {DEFAULT_MEF_TIMEOUT:g})")


_MEF_OPTIONS = ("mef_fqdn", "mef_target_id", "mef_key_file", "mef_cert", "mef_cert_key", "mef_ca")


def mef_fetcher_from_args(args: argparse.Namespace) -> MEFFetcher | None:
    """The MEF fetcher the ``--mef*`` options describe, None without ``--mef``. Raises ConfigurationError."""

    from m2msec.cli.common import parse_hostport, read_key
    from m2msec.mef.client import MEFCredentials, MEFFetcher

    if args.mef is None:
        given = [name for name in _MEF_OPTIONS if getattr(args, name) is not None]
        if given:
            raise ConfigurationError(f"--{given[0].replace('_', '-')} needs --mef")
        return None
    host, _ = parse_hostport(args.mef)
    fqdn = service_fqdn(host, args.mef_fqdn, "mef")
    if not args.mef_timeout > 0:
        raise ConfigurationError("--mef-timeout must be positive")
    psk = args.mef_target_id is not None or args.mef_key_file is not None
    cert = args.mef_cert is not None or args.mef_cert_key is not None or args.mef_ca is not None
    if psk == cert:
        raise ConfigurationError("--mef needs the gateway's target credential: --mef-target-id with --mef-key-file, "
                                 "or --mef-cert with --mef-cert-key and --mef-ca")
    if psk:
        if args.mef_target_id is None or args.mef_key_file is None:
            raise ConfigurationError("give --mef-target-id and --mef-key-file together")
        credentials = MEFCredentials(args.mef_target_id, read_key(str(args.mef_key_file), None))
    else:
        if args.mef_cert is None or args.mef_cert_key is None or args.mef_ca is None:
            raise ConfigurationError("give --mef-cert, --mef-cert-key and --mef-ca together")
        check_file_permissions(args.mef_cert_key)
        credentials = MEFCredentials(chain_pem=read_file(args.mef_cert, "certificate"),
                                     private_key_pem=read_file(args.mef_cert_key, "private key"),
                                     trust_anchors_pem=read_file(args.mef_ca, "MEF trust anchors"))
    return MEFFetcher(args.mef, credentials, mef_fqdn=fqdn, timeout=args.mef_timeout)
