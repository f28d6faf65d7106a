"""Certificates made by hand, as a CA that ignores m2msec.pki's rules (D40 SP binding, D41 CSE-ID marker) would
issue them: for tests that show the gateway and Entity A refuse what m2msec.pki itself would never issue."""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from m2msec.pki import CSE_ID_CERTIFICATE_POLICY, END_ENTITY_BASIC_CONSTRAINTS, END_ENTITY_KEY_USAGE, Issued


def forged_leaf(ca: Issued, name: x509.GeneralName, *, cse_id_marker: bool = False) -> Issued:
    """A leaf in m2msec.pki's profile with the one SAN *name*, signed by *ca* without m2msec.pki's checks."""
    assert ca.private_key is not None
    key, now = ec.generate_private_key(ec.SECP256R1()), datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(ca.certificate.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=1)).not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(END_ENTITY_BASIC_CONSTRAINTS, critical=True)
               .add_extension(END_ENTITY_KEY_USAGE, critical=True)
               .add_extension(x509.SubjectAlternativeName([name]), critical=True))
    if cse_id_marker:
        policy = x509.PolicyInformation(CSE_ID_CERTIFICATE_POLICY, None)
        builder = builder.add_extension(x509.CertificatePolicies([policy]), critical=False)
    return Issued(builder.sign(ca.private_key, hashes.SHA256()), key)


def unconstrained_ca(name: str) -> Issued:
    """A self-signed root CA without nameConstraints (TS-0003 §8.1.2.2 says a CA shall have them)."""
    key, now = ec.generate_private_key(ec.SECP256R1()), datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256()))
    return Issued(cert, key)
