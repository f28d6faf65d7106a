"""``m2msec request``: Entity A of the Provisioned Symmetric Key SAEF (TS-0003 §8.2.2.1) or of the
Certificate-Based SAEF (§8.2.2.2).

Establishes the SA with (KpsaID, Kpsa) or with a certificate, associates it with IdB (``--entity-id``,
required unless ``--insecure-any-entity``), sends one oneM2M HTTP request inside it and prints the response.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m2msec import http1
from m2msec.cli.credentials import add_credential_options, credentials_from_args, peer_from_args
from m2msec.errors import ConfigurationError, TLSError
from m2msec.idb import AnyEntity
from m2msec.maf.client_options import add_maf_options, maf_client_from_args
from m2msec.saef import (
    DEFAULT_KC_LIFETIME,
    CertificateCredentials,
    EstablishedSA,
    PSKCredentials,
    establish_maf_sa,
    establish_sa,
)
from m2msec.tls.profiles import parse_profiles

if TYPE_CHECKING:
    from m2msec.maf.client import MAFClient


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("request", help="send one oneM2M HTTP request over TLS-PSK")
    p.add_argument("--connect", required=True, metavar="HOST:PORT")
    add_credential_options(p)
    p.add_argument("--origin", help="X-M2M-Origin (From)")
    p.add_argument("-X", "--method", default="GET")
    p.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'")
    p.add_argument("--data", help="request body; @FILE reads a file")
    p.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS")
    add_maf_options(p, role="register a Kc for IdB there (SUID 32), then TLS-PSK with it "
                    "(<RelativeKeyID>@<MAF-FQDN>) instead of --identity / --cert")
    p.add_argument("--maf-lifetime", type=float, default=DEFAULT_KC_LIFETIME, metavar="SECONDS",
                   help=f"validity asked for the registered Kc (default {DEFAULT_KC_LIFETIME:g})")
    p.add_argument("target", help="request target, e.g. /mn-cse-123456")
    p.set_defaults(func=run)


async def run(args: argparse.Namespace) -> int:
    from m2msec.cli.common import parse_hostport

    host, port = parse_hostport(args.connect)
    peer = peer_from_args(args)
    maf = maf_client_from_args(args)
    creds: PSKCredentials | CertificateCredentials | None = None
    if maf is not None:
        if args.identity is not None or args.cert is not None or args.key_file or args.key_env:
            raise ConfigurationError("--maf replaces --identity, --key-file, --key-env and --cert")
        if not isinstance(peer, str):
            raise ConfigurationError("--maf needs --entity-id: the Kc is registered for IdB")
        if not args.maf_lifetime > 0:
            raise ConfigurationError("--maf-lifetime must be positive")
    else:
        creds = credentials_from_args(args, peer)
    headers: list[tuple[str, str]] = [("host", args.server_name or host)]
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise ConfigurationError(f"header {item!r} is not 'NAME: VALUE'")
        headers.append((name.strip().lower(), value.strip()))
    if args.origin:
        headers.append(("x-m2m-origin", args.origin))
    if not any(k == "x-m2m-ri" for k, _ in headers):
        headers.append(("x-m2m-ri", secrets.token_hex(8)))
    if not any(k == "x-m2m-rvi" for k, _ in headers):
        headers.append(("x-m2m-rvi", "3"))
    body = b""
    if args.data is not None:
        if args.data.startswith("@"):
            try:
                body = Path(args.data[1:]).read_bytes()
            except OSError as exc:
                raise ConfigurationError(f"{args.data[1:]}: {exc.strerror}") from None
        else:
            body = args.data.encode()
    sa = await _establish(args, host, port, creds, maf, peer)
    try:
        print(f"* SA with {sa.session.entity or host}: {sa.session.version} {sa.session.cipher}",
              file=sys.stderr)
        try:
            resp = await sa.request(http1.Message(headers=headers, body=body, method=args.method.upper(),
                                                 target=args.target), timeout=args.timeout)
        except (http1.HTTPError, TimeoutError, ConnectionError) as exc:
            raise TLSError(f"no valid HTTP response: {exc or type(exc).__name__}") from None
    finally:
        await sa.close()
    print(f"HTTP {resp.status} {resp.reason}")
    for k, v in resp.headers:
        print(f"{k}: {v}")
    print()
    sys.stdout.write(resp.body.decode("utf-8", "replace"))
    if resp.body and not resp.body.endswith(b"\n"):
        print()
    return 0


async def _establish(args: argparse.Namespace, host: str, port: int,
                     creds: PSKCredentials | CertificateCredentials | None, maf: MAFClient | None,
                     peer: str | AnyEntity) -> EstablishedSA:
    if maf is None:
        assert creds is not None
        return await establish_sa(host, port, creds, server_name=args.server_name, timeout=args.timeout)
    assert isinstance(peer, str)
    try:
        sa = await establish_maf_sa(host, port, maf=maf, peer_entity=peer, lifetime=args.maf_lifetime,
                                    profiles=parse_profiles(args.profiles or "onem2m"),
                                    server_name=args.server_name, timeout=args.timeout)
    finally:
        await maf.close()
    assert sa.maf_key is not None
    print(f"* Kc {sa.maf_key.relative_key_id}@{maf.maf_fqdn} registered at the MAF for {peer}", file=sys.stderr)
    return sa
