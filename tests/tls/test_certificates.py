"""Certificate-based TLS in the engine (TS-0003 §8.2.2.2, §10.2.3): mutual ECDHE-ECDSA, chain validation,
name constraints, expiry, CRLs, the P-256 profile, and PSK and certificate clients on one server.

Certificates here are made with `cryptography` directly (not with m2msec.pki), so the engine is checked
against an independent issuer.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import LIGHT1_ID, LIGHT1_KEY, handshake_pair, make_table
from m2msec.errors import ConfigurationError, HandshakeFailed
from m2msec.keys.secret import SecretKey
from m2msec.tls.engine import CertificateConfig, ClientConfig, ServerConfig, TLSContext
from m2msec.tls.profiles import ECDHE_ECDSA, ONEM2M_PSK, TLS13_PSK

NOW = datetime.datetime.now(datetime.UTC)


@dataclass
class Cert:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())


def make(name: str, issuer: Cert | None = None, *, ca: bool = False, dns: str | None = None,
         permitted: list[str] | None = None, curve: ec.EllipticCurve | None = None,
         not_after: datetime.datetime | None = None) -> Cert:
    key = ec.generate_private_key(curve or ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder().subject_name(subject)
        .issuer_name(issuer.cert.subject if issuer else subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(NOW - datetime.timedelta(days=2))
        .not_valid_after(not_after or NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                                     encipher_only=False, decipher_only=False), critical=True)
    )
    if dns:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(dns)]), critical=False)
    if permitted:
        builder = builder.add_extension(
            x509.NameConstraints(permitted_subtrees=[x509.DNSName(d) for d in permitted], excluded_subtrees=None),
            critical=True)
    signer = issuer.key if issuer else key
    return Cert(builder.sign(signer, hashes.SHA256()), key)


@pytest.fixture(scope="module")
def pki() -> dict[str, Cert]:
    root = make("m2msec test root", ca=True, permitted=["provider.com"])
    other_root = make("someone else's root", ca=True)
    return {
        "root": root,
        "other_root": other_root,
        "server": make("in-cse", root, dns="in-cse.m2m.provider.com"),
        "client": make("mn-cse", root, dns="mn-cse-123456.m2m.provider.com"),
        "stranger": make("mn-cse", other_root, dns="mn-cse-123456.m2m.provider.com"),
        "expired": make("mn-cse", root, dns="mn-cse-123456.m2m.provider.com",
                        not_after=NOW - datetime.timedelta(days=1)),
        "outside": make("evil", root, dns="mn-cse.evil.org"),
        "p384": make("mn-cse", root, dns="mn-cse-123456.m2m.provider.com", curve=ec.SECP384R1()),
    }


def crl(issuer: Cert, *revoked: Cert) -> bytes:
    builder = (x509.CertificateRevocationListBuilder().issuer_name(issuer.cert.subject)
               .last_update(NOW - datetime.timedelta(hours=1)).next_update(NOW + datetime.timedelta(days=7)))
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(cert.cert.serial_number)
            .revocation_date(NOW - datetime.timedelta(minutes=5)).build())
    return builder.sign(issuer.key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def server_ctx(pki: dict[str, Cert], *, psk: bool = False, crl_pem: bytes | None = None,
               profiles: tuple[object, ...] = (ECDHE_ECDSA,)) -> TLSContext:
    s = pki["server"]
    cfg = CertificateConfig(s.pem, s.key_pem, trust_anchors_pem=pki["root"].pem, crl_pem=crl_pem)
    return TLSContext.server(ServerConfig(make_table().lookup if psk else None, profiles=profiles,  # type: ignore[arg-type]
                                          certificate=cfg))


def client_ctx(pki: dict[str, Cert], who: str = "client", *, trust: str = "root") -> TLSContext:
    c = pki[who]
    cfg = CertificateConfig(c.pem, c.key_pem, trust_anchors_pem=pki[trust].pem)
    return TLSContext.client(ClientConfig(None, None, profiles=(ECDHE_ECDSA,), peer_entity="in-cse",
                                          certificate=cfg))


def test_mutual_certificate_handshake(pki: dict[str, Cert]) -> None:
    s, c = handshake_pair(server_ctx(pki), client_ctx(pki))
    assert s.session is not None and c.session is not None
    # TS-0003 §10.2.3 mandatory suite is preferred
    assert s.session.cipher == c.session.cipher == "ECDHE-ECDSA-AES128-SHA256"
    assert s.session.authentication == c.session.authentication == "certificate"
    assert s.session.psk_identity is None
    assert s.session.peer_certificate == pki["client"].cert
    assert c.session.peer_certificate == pki["server"].cert and c.session.entity == "in-cse"
    assert s.export_keying_material("EXPORTER-oneM2M-Connection", 48) == \
        c.export_keying_material("EXPORTER-oneM2M-Connection", 48)


@pytest.mark.parametrize(
    ("who", "reason", "alert"),
    [
        ("stranger", "unable to get local issuer certificate", "unknown_ca"),
        ("expired", "certificate has expired", "certificate_expired"),
        ("outside", "permitted subtree violation", "certificate_unknown"),
        ("p384", "not EC P-256", "internal_error"),
    ],
)
def test_bad_client_certificates_are_refused(pki: dict[str, Cert], who: str, reason: str, alert: str) -> None:
    server, client = server_ctx(pki), client_ctx(pki, who)
    s, c = server.connection(), client.connection()
    s.receive_data(c.data_to_send())
    c.receive_data(s.data_to_send())
    with pytest.raises(HandshakeFailed) as info:
        s.receive_data(c.data_to_send())
    assert reason in str(info.value) and info.value.alert == alert
    with pytest.raises(HandshakeFailed) as received:  # the alert the client gets is the one we report
        c.receive_data(s.data_to_send())
    assert alert.replace("_", " ") in str(received.value)


def test_revoked_client_certificate_is_refused(pki: dict[str, Cert]) -> None:
    with pytest.raises(HandshakeFailed, match="certificate revoked"):
        handshake_pair(server_ctx(pki, crl_pem=crl(pki["root"], pki["client"])), client_ctx(pki))
    # the same CRL without that serial lets the client in
    s, _ = handshake_pair(server_ctx(pki, crl_pem=crl(pki["root"], pki["expired"])), client_ctx(pki))
    assert s.session is not None


def test_client_without_certificate_is_refused(pki: dict[str, Cert]) -> None:
    # a client that offers the certificate suite but has no certificate (only a trust anchor)
    cfg = CertificateConfig(pki["client"].pem, pki["client"].key_pem, trust_anchors_pem=pki["root"].pem)
    client = TLSContext.client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY), profiles=(ONEM2M_PSK,),
                                            certificate=cfg))
    with pytest.raises(HandshakeFailed, match="no shared cipher"):  # the server only does certificates
        handshake_pair(server_ctx(pki), client)


def test_client_refuses_an_untrusted_server(pki: dict[str, Cert]) -> None:
    # the server sends its chain up to its root (OpenSSL builds it from the store): an untrusted root
    with pytest.raises(HandshakeFailed, match="self-signed certificate in certificate chain"):
        handshake_pair(server_ctx(pki), client_ctx(pki, trust="other_root"))


@pytest.mark.parametrize("psk_profiles", [(ONEM2M_PSK,), (TLS13_PSK,)], ids=["tls12", "tls13"])
def test_psk_and_certificate_clients_on_one_server(pki: dict[str, Cert], psk_profiles: tuple[object, ...]) -> None:
    server = server_ctx(pki, psk=True, profiles=(*psk_profiles, ECDHE_ECDSA))
    psk_client = TLSContext.client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY),
                                                profiles=psk_profiles))  # type: ignore[arg-type]
    s, _ = handshake_pair(server, psk_client)
    assert s.session is not None and s.session.authentication == "psk" and s.session.peer_certificate is None
    s, _ = handshake_pair(server, client_ctx(pki))
    assert s.session is not None and s.session.authentication == "certificate"


def test_certificate_configuration_errors(pki: dict[str, Cert]) -> None:
    c = pki["client"]
    with pytest.raises(ConfigurationError, match="trust anchors"):
        TLSContext.server(ServerConfig(None, profiles=(ECDHE_ECDSA,), certificate=CertificateConfig(c.pem, c.key_pem)))
    with pytest.raises(ConfigurationError, match="needs a server certificate"):
        TLSContext.server(ServerConfig(None, profiles=(ECDHE_ECDSA,)))
    with pytest.raises(ConfigurationError, match="do not match"):
        TLSContext.server(ServerConfig(None, profiles=(ECDHE_ECDSA,), certificate=CertificateConfig(
            c.pem, pki["server"].key_pem, trust_anchors_pem=pki["root"].pem)))
    with pytest.raises(ConfigurationError, match="without a PSK table"):
        TLSContext.server(ServerConfig(None, profiles=(ONEM2M_PSK,)))
    with pytest.raises(ConfigurationError, match="without a PSK"):
        TLSContext.client(ClientConfig(None, None, profiles=(ONEM2M_PSK,)))
    with pytest.raises(ConfigurationError, match="certificate, key and trust anchors"):
        TLSContext.client(ClientConfig(None, None, profiles=(ECDHE_ECDSA,)))


@pytest.mark.parametrize("psk_profiles", [(ONEM2M_PSK,), (TLS13_PSK,)], ids=["tls12", "tls13"])
def test_async_psk_and_certificate_clients_on_one_server(
    pki: dict[str, Cert], psk_profiles: tuple[object, ...]
) -> None:
    """async_psk in a mixed context: our ServerHello's suite decides whether the key exchange carries an identity."""
    from m2msec.tls.engine import PSKIdentityReceived

    s_cert = pki["server"]
    cfg = CertificateConfig(s_cert.pem, s_cert.key_pem, trust_anchors_pem=pki["root"].pem)
    server = TLSContext.server(ServerConfig(None, profiles=(*psk_profiles, ECDHE_ECDSA), certificate=cfg,  # type: ignore[arg-type]
                                            async_psk=True))
    psk_client = TLSContext.client(ClientConfig(LIGHT1_ID, SecretKey.from_hex(LIGHT1_KEY),
                                                profiles=psk_profiles)).connection()  # type: ignore[arg-type]
    s = server.connection()
    asked = []
    for _ in range(6):
        out = psk_client.data_to_send()
        events = s.receive_data(out) if out else []
        for e in events:
            if isinstance(e, PSKIdentityReceived):
                asked.append(e.identity)
                s.supply_psk(make_table().lookup(e.identity))
        back = s.data_to_send()
        if back:
            psk_client.receive_data(back)
    assert asked == [LIGHT1_ID] and s.session is not None and s.session.authentication == "psk"
    s, _ = handshake_pair(server, client_ctx(pki))  # no event: a certificate client never waits
    assert s.session is not None and s.session.authentication == "certificate"
