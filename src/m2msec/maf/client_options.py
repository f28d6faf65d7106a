"""The ``--maf*`` command-line options of ``m2msec request`` (Entity A) and ``m2msec gateway`` (Entity B): where
the MAF is, its FQDN, and the MAF credential (KmID + Km file, or certificate files). One definition for both."""

from __future__ import annotations

import argparse
import ipaddress
import urllib.parse
from pathlib import Path
from typing import Any

from m2msec.errors import ConfigurationError
from m2msec.maf.client import DEFAULT_MAF_TIMEOUT, MAFClient, MAFCredentials

__all__ = ["add_maf_options", "maf_client_from_args", "parse_maf_url"]


def add_maf_options(p: argparse.ArgumentParser, *, role: str) -> None:
    g = p.add_argument_group("MAF-based SAEF (TS-0003 §8.2.2.3)")
    g.add_argument("--maf", metavar="URL", help=f"the MAF, https://HOST:PORT: {role}")
    g.add_argument("--maf-fqdn", metavar="FQDN", help="the MAF-FQDN (default: the host of --maf when it is a name)")
    g.add_argument("--maf-kmid", metavar="KMID", help="own KmID (relative@MAF-FQDN) for the MAF Handshake")
    g.add_argument("--maf-key-file", type=Path, metavar="FILE",
                   help="own Km in hex (no access for the group or others)")
    g.add_argument("--maf-cert", type=Path, metavar="FILE", help="own certificate chain (PEM) for the MAF Handshake")
    g.add_argument("--maf-cert-key", type=Path, metavar="FILE", help="private key of --maf-cert (PEM)")
    g.add_argument("--maf-ca", type=Path, metavar="FILE",
                   help="trust anchors of the MAF's FQDN certificate (PEM), with --maf-cert")
    g.add_argument("--maf-timeout", type=float, default=DEFAULT_MAF_TIMEOUT, metavar="SECONDS",
                   help=f"seconds one MAF exchange may take (default {DEFAULT_MAF_TIMEOUT:g})")


def parse_maf_url(url: str) -> tuple[str, int]:
    """``https://HOST:PORT`` (no path, query or fragment) -> (host, port)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigurationError(f"--maf must be an https://HOST:PORT URL, not {url[:80]!r}")
    try:
        port = parts.port or 443
    except ValueError:
        raise ConfigurationError(f"--maf URL {url[:80]!r} has an invalid port") from None
    return parts.hostname, port


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read {what}: {exc.strerror}") from None


def _credentials(args: argparse.Namespace, fqdn: str) -> MAFCredentials:
    from m2msec.cli.common import read_key
    from m2msec.keys.table import check_file_permissions

    psk = args.maf_kmid is not None or args.maf_key_file is not None
    cert = args.maf_cert is not None or args.maf_cert_key is not None or args.maf_ca is not None
    if psk == cert:
        raise ConfigurationError("--maf needs a MAF credential: --maf-kmid with --maf-key-file, or --maf-cert "
                                 "with --maf-cert-key and --maf-ca")
    if psk:
        if args.maf_kmid is None or args.maf_key_file is None:
            raise ConfigurationError("give --maf-kmid and --maf-key-file together")
        return MAFCredentials(fqdn, kmid=args.maf_kmid, km=read_key(str(args.maf_key_file), None))
    if args.maf_cert is None or args.maf_cert_key is None or args.maf_ca is None:
        raise ConfigurationError("give --maf-cert, --maf-cert-key and --maf-ca together")
    check_file_permissions(args.maf_cert_key)
    return MAFCredentials(fqdn, chain_pem=_read(args.maf_cert, "certificate"),
                          private_key_pem=_read(args.maf_cert_key, "private key"),
                          trust_anchors_pem=_read(args.maf_ca, "MAF trust anchors"))


def _no_maf_options(args: argparse.Namespace) -> None:
    given = [name for name in ("maf_fqdn", "maf_kmid", "maf_key_file", "maf_cert", "maf_cert_key", "maf_ca")
             if getattr(args, name) is not None]
    if given:
        raise ConfigurationError(f"--{given[0].replace('_', '-')} needs --maf")


def service_fqdn(host: str, given: str | None, option: str) -> str:
    """The FQDN of a service reached at ``host`` (``--OPTION``): ``given`` (``--OPTION-fqdn``), else the host when it
    is a name. Raises ConfigurationError for an IP address without ``given`` (its certificate and identifiers name
    an FQDN)."""
    if given is not None:
        return given
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return host
    raise ConfigurationError(f"--{option} names an IP address: give the {option.upper()}'s FQDN with "
                             f"--{option}-fqdn")


def maf_client_from_args(args: argparse.Namespace, **kwargs: Any) -> MAFClient | None:
    """The MAF client the ``--maf*`` options describe, None without ``--maf``.

    Raises: ConfigurationError: an incomplete or contradictory set of options, an unreadable file."""
    if args.maf is None:
        _no_maf_options(args)
        return None
    host, port = parse_maf_url(args.maf)
    fqdn = service_fqdn(host, args.maf_fqdn, "maf")
    if not args.maf_timeout > 0:
        raise ConfigurationError("--maf-timeout must be positive")
    return MAFClient(host, port, _credentials(args, fqdn), timeout=args.maf_timeout, **kwargs)
