"""Loading and writing certificates and private keys (keys 0600, never overwritten)."""

from __future__ import annotations

import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from m2msec.errors import ConfigurationError
from m2msec.pki.profile import Issued, _p256, _pkcs8


def load_issued(cert_pem: bytes, key_pem: bytes | None) -> Issued:
    """Load a PEM certificate and, optionally, its unencrypted PEM P-256 private key.

    Returns: the pair. Raises: ConfigurationError: unparsable PEM, non-P-256 key, key not matching the certificate.
    """
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except (ValueError, x509.InvalidVersion):  # InvalidVersion is no ValueError (issue 21)
        raise ConfigurationError("not a PEM certificate") from None
    if key_pem is None:
        return Issued(cert, None)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ConfigurationError("not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigurationError("the private key is not an EC key; TS-0003 §10.1.1.1 requires P-256")
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if _p256(key.public_key(), "the private key").public_bytes(*spki) != cert.public_key().public_bytes(*spki):
        raise ConfigurationError("the private key does not belong to the certificate")
    return Issued(cert, key)


def _write(path: Path, data: bytes, mode: int, flags: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags, mode)
    except FileExistsError:
        raise ConfigurationError(f"{path}: exists; refusing to overwrite a private key") from None
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot write: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as fh:
        os.fchmod(fh.fileno(), mode)
        fh.write(data)


def write_private_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    """Write *key* as unencrypted PKCS#8 PEM to a new file, mode 0600 (O_EXCL: never overwrites).

    Returns: *path*. Raises: ConfigurationError: the file exists or cannot be written.
    """
    _write(path, _pkcs8(key), 0o600, os.O_EXCL)
    return path


def write_issued(issued: Issued, prefix: Path) -> tuple[Path, Path | None]:
    """Write ``PREFIX.crt`` (0644) and, when there is a key, ``PREFIX.key`` (0600, never overwritten).

    Returns: (certificate path, key path or None). Raises: ConfigurationError: the key file exists, I/O error.
    """
    key = write_private_key(issued.private_key, Path(f"{prefix}.key")) if issued.private_key else None
    _write(Path(f"{prefix}.crt"), issued.certificate_pem(), 0o644, os.O_TRUNC)
    return Path(f"{prefix}.crt"), key
