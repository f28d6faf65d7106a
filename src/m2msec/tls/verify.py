"""Certificate verification: our own credential, the trust store and CRLs for the peer's chain, and the
verify callback that records why a chain was refused and which alert OpenSSL sends for it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cryptography import x509
from OpenSSL import SSL
from OpenSSL import crypto as _crypto

from m2msec.errors import ConfigurationError
from m2msec.tls import _shim
from m2msec.tls.config import CertificateConfig
from m2msec.tls.connection import owner_of


def use_credential(ctx: SSL.Context, cred: CertificateConfig, role: str) -> None:
    """Load our own chain (leaf first) and private key."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        chain = x509.load_pem_x509_certificates(cred.chain_pem)
        ctx.use_certificate(chain[0])
        for extra in chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(_as_pkey_key(load_pem_private_key(cred.private_key_pem, password=None)))
        ctx.check_privatekey()
    except (ValueError, TypeError, IndexError, SSL.Error, _crypto.Error) as exc:
        raise ConfigurationError(f"{role} certificate chain or private key is invalid or do not match") from exc


def load_trust(
    cred: CertificateConfig,
) -> tuple[tuple[x509.Certificate, ...], tuple[x509.CertificateRevocationList, ...] | None]:
    """The trust anchors and CRLs of *cred* (which has trust anchors)."""
    from m2msec.crl import load_crls

    assert cred.trust_anchors_pem is not None
    try:
        anchors = tuple(x509.load_pem_x509_certificates(cred.trust_anchors_pem))
    except ValueError as exc:
        raise ConfigurationError("trust anchors are not valid PEM") from exc
    # PEM or DER, one or several; data without a CRL is refused rather than silently checking nothing
    crls = load_crls(cred.crl_pem, "CRLs") if cred.crl_pem is not None else None
    return anchors, crls


def install_trust_store(ctx: SSL.Context, anchors: Sequence[x509.Certificate],
                        crls: Sequence[x509.CertificateRevocationList] | None) -> None:
    """A fresh trust store (anchors, CRLs with CRL checking) for handshakes started from now on."""
    _shim.install_trust_store(ctx, anchors, crls)


#: X509_V_ERR_* -> the alert OpenSSL sends for it (ssl_verify_alarm_type in OpenSSL's ssl/statem)
_VERIFY_ALERTS = {
    2: "unknown_ca", 18: "unknown_ca", 19: "unknown_ca", 20: "unknown_ca", 21: "unknown_ca", 22: "unknown_ca",
    24: "unknown_ca", 25: "unknown_ca",
    9: "bad_certificate", 11: "bad_certificate", 27: "bad_certificate", 28: "bad_certificate",
    10: "certificate_expired", 12: "certificate_expired",
    23: "certificate_revoked",
}


def _verify_peer(conn: SSL.Connection, cert: _crypto.X509, errno: int, depth: int, ok: int) -> bool:
    """OpenSSL's chain verdict, plus the TS-0003 §10.1.1.1 key profile on the end-entity certificate."""
    owner = owner_of(conn)
    if owner is not None and not owner._context.is_server and not owner._context.verifies_certificates:
        return owner._psk_only_server_certificate(conn)
    if not ok:
        if owner is not None and owner._verify_failure is None:
            reason = _shim.verify_error_string(errno)
            owner._verify_failure = f"peer certificate rejected at depth {depth}: {reason}"
            owner._verify_alert = _VERIFY_ALERTS.get(errno, "certificate_unknown")
        return False
    if depth == 0:
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        key = cert.to_cryptography().public_key()
        profile_ok = isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
        # an RSA_PSK server certificate is RSA by definition (RFC 4279 §4); everything else is P-256
        if isinstance(key, rsa.RSAPublicKey) and owner is not None and not owner._context.is_server:
            profile_ok = True
        config = owner._context.config if owner is not None else None
        if getattr(config, "capif_client_keys", False):  # D164: the CAPIF clients' TS 33.310 profile
            profile_ok = profile_ok or (isinstance(key, ec.EllipticCurvePublicKey) and
                                        key.curve.name == "secp384r1") or \
                (isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048)
        if not profile_ok:
            if owner is not None:
                owner._verify_failure = ("peer certificate key is not EC P-256, P-384 or RSA >= 2048 (D164)"
                                         if getattr(config, "capif_client_keys", False) else
                                         "peer certificate key is not EC P-256 (TS-0003 §10.1.1.1)")
                # pyOpenSSL's callback cannot set a verify error code, so OpenSSL sends internal_error
                owner._verify_alert = "internal_error"
            return False
    return True


def _as_pkey_key(key: object) -> Any:
    # load_pem_private_key may return key types pyOpenSSL cannot wrap (ML-DSA); from_cryptography_key checks.
    return key
