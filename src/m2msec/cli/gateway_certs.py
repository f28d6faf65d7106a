"""``--cert``, ``--key``, ``--client-ca`` and ``--crl`` of ``m2msec gateway``: read and checked before the engine
builds a context, each error one line naming the option and file (and, from a configuration file, its key)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from m2msec.cli.common import read_file
from m2msec.crl import CRLFile
from m2msec.errors import ConfigurationError
from m2msec.keys.table import check_file_permissions
from m2msec.tls.engine import CertificateConfig

__all__ = ["certificate_options"]


def certificate_options(args: argparse.Namespace) -> tuple[CertificateConfig | None, CRLFile | None]:
    if args.cert is None and args.key is None:
        if args.client_ca is not None or args.crl is not None:
            raise ConfigurationError("--client-ca and --crl need the gateway's own --cert and --key")
        return None, None
    if args.cert is None or args.key is None:
        raise ConfigurationError("give both --cert and --key")
    check_file_permissions(args.key)
    chain, key = read_file(args.cert, "certificate"), read_file(args.key, "private key")
    assert chain is not None and key is not None
    _check_pair(args.cert, chain, args.key, key)
    client_ca = read_file(args.client_ca, "client CA certificates")
    crls = None
    if args.crl is not None:  # refuses a file without a CRL, or with a CRL no client CA signed (D50)
        crls = CRLFile(args.crl, trusted=_client_cas(args.client_ca, client_ca))
    return CertificateConfig(chain, key, client_ca, read_file(args.crl, "CRL")), crls


def _check_pair(cert_path: Path, chain: bytes, key_path: Path, key: bytes) -> None:
    """--cert holds a PEM chain and --key a PEM private key of its first certificate: said here with the option and
    the file (at start, --check-config and reload), before the engine's own, anonymous refusal."""
    from cryptography.exceptions import UnsupportedAlgorithm

    try:
        leaf = x509.load_pem_x509_certificates(chain)[0]
    except ValueError:
        raise ConfigurationError(f"--cert {cert_path}: not a PEM certificate chain") from None
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):  # never the reason: it may quote the key
        raise ConfigurationError(f"--key {key_path}: not an unencrypted PEM private key") from None
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if private.public_key().public_bytes(*spki) != leaf.public_key().public_bytes(*spki):
        raise ConfigurationError(f"--key {key_path} is not the private key of the first certificate of --cert "
                                 f"{cert_path}")


def _client_cas(path: Path | None, data: bytes | None) -> list[x509.Certificate]:
    """The --client-ca certificates, which must sign the --crl CRLs."""
    if path is None or data is None:
        raise ConfigurationError("--crl needs --client-ca: the CA certificates that sign the CRLs")
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise ConfigurationError(f"{path}: not a PEM or DER certificate file") from None
