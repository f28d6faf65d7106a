"""Entity A's credential options, shared by ``m2msec request`` and ``m2msec tunnel``: the PSK (``--identity`` with
``--key-file`` / ``--key-env``) or the certificate (``--cert``, ``--cert-key``, ``--ca``), IdB (``--entity-id`` or
``--insecure-any-entity``), ``--server-name`` and ``--profiles``; and the :class:`~m2msec.saef.PSKCredentials` /
:class:`~m2msec.saef.CertificateCredentials` they make.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from m2msec.cli.common import read_key
from m2msec.errors import ConfigurationError
from m2msec.idb import ANY_ENTITY, AnyEntity
from m2msec.keys.table import check_file_permissions
from m2msec.saef import CertificateCredentials, PSKCredentials
from m2msec.tls.profiles import parse_profiles

__all__ = ["add_credential_options", "credentials_from_args", "peer_from_args", "read_file"]


def add_credential_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--identity", help="psk_identity (KpsaID), for the Provisioned Symmetric Key SAEF")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--key-file", help="file holding the key in hex")
    src.add_argument("--key-env", help="environment variable holding the key in hex")
    p.add_argument("--cert", type=Path, help="own certificate chain (PEM), for the Certificate-Based SAEF")
    p.add_argument("--cert-key", type=Path, help="private key of --cert (PEM; not readable by others)")
    p.add_argument("--ca", type=Path, help="trust anchors for the server's certificate (PEM)")
    p.add_argument("--crl", type=Path, help="CRLs of the --ca (PEM or DER): a revoked server certificate is refused")
    idb = p.add_mutually_exclusive_group()
    idb.add_argument("--entity-id", help="IdB (required): the CSE-ID of Entity B the SA is associated with (with "
                     "--cert, B's certificate must be a CSE-ID certificate for it, of the SP of --cert unless "
                     "given as //SP/CSE-ID)")
    idb.add_argument("--insecure-any-entity", action="store_true",
                     help="no IdB: accept any server the key or the --ca certifies (another AE's included)")
    p.add_argument("--server-name", help="SNI host name (TS-0003 §10.2.1)")
    p.add_argument("--profiles", help="cipher profiles to offer (default onem2m, or ecdhe-ecdsa with --cert)")


def read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"{path}: {exc.strerror}") from None


def peer_from_args(args: argparse.Namespace) -> str | AnyEntity:
    """IdB from ``--entity-id``, or ANY_ENTITY with ``--insecure-any-entity`` (D23)."""
    if args.entity_id is None and not args.insecure_any_entity:
        raise ConfigurationError("give --entity-id (IdB, the CSE-ID of the server), or --insecure-any-entity "
                                 "to accept any server")
    peer: str | AnyEntity = ANY_ENTITY if args.insecure_any_entity else args.entity_id
    return peer


def credentials_from_args(args: argparse.Namespace, peer: str | AnyEntity) -> PSKCredentials | CertificateCredentials:
    """The certificate (``--cert``) or the PSK (``--identity``) credentials, associated with ``peer``."""
    if args.cert is not None:
        if args.identity is not None or args.cert_key is None or args.ca is None:
            raise ConfigurationError("--cert goes with --cert-key and --ca, and not with --identity")
        check_file_permissions(args.cert_key)
        chain, key, anchors = (read_file(p) for p in (args.cert, args.cert_key, args.ca))
        crl = read_file(args.crl) if args.crl is not None else None
        return CertificateCredentials(chain, key, anchors, peer_entity=peer, crl_pem=crl,
                                      profiles=parse_profiles(args.profiles or "ecdhe-ecdsa"))
    if args.crl is not None:
        raise ConfigurationError("--crl goes with --cert (it checks the server's certificate)")
    if args.identity is None:
        raise ConfigurationError("give --identity with --key-file/--key-env (PSK), or --cert (certificate)")
    return PSKCredentials(
        kpsa_id=args.identity,
        kpsa=read_key(args.key_file, args.key_env),
        peer_entity=peer,
        profiles=parse_profiles(args.profiles or "onem2m"),
    )
