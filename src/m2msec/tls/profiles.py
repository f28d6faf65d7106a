"""Named TLS cipher profiles (constants only; no OpenSSL import).

Each profile is one key-exchange family. A server or client enables a tuple of profiles; the engine
joins their cipher strings in order of preference.

Sources:
- TS-0003 §10.2.1: TLS 1.2 (RFC 5246) shall be used over TCP; §10.2.2: PSK-based SAEFs use the RFC 4279
  key exchange and *mandate* TLS_PSK_WITH_AES_128_CBC_SHA256 (RFC 5487, 0x00AE);
  TLS_PSK_WITH_AES_128_GCM_SHA256 (0x00A8) is a legal addition (same RFC).
- 3GPP TS 33.122 (seed 000) names the three RFC 4279 families for CAPIF-2e TLS-PSK: PSK, DHE_PSK, RSA_PSK.
- RFC 5489: ECDHE_PSK. RFC 8446 §4.2.9: TLS 1.3 external PSK with (EC)DHE (psk_dhe_ke).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "DHE_PSK",
    "ECDHE_ECDSA",
    "ECDHE_ECDSA_DTLS",
    "ECDHE_PSK",
    "ONEM2M_DTLS_PSK",
    "ONEM2M_PSK",
    "PROFILES",
    "PSK",
    "RSA_PSK",
    "TLS13_PSK",
    "CipherProfile",
    "parse_profiles",
]


@dataclass(frozen=True)
class CipherProfile:
    """One family of PSK cipher suites.

    ``tls12_ciphers`` is an OpenSSL cipher string for TLS 1.2 (empty for TLS 1.3-only profiles);
    ``tls13_suites`` an OpenSSL ciphersuites string (empty when the profile is TLS 1.2 only).
    """

    name: str
    tls12_ciphers: str
    tls13_suites: str = ""
    needs_certificate: bool = False
    needs_dh_params: bool = False
    #: both ends authenticate with certificates (TS-0003 §10.2.3); no PSK involved
    mutual_certificates: bool = False
    description: str = ""


#: TS-0003 §10.2.2 profile: mandatory TLS_PSK_WITH_AES_128_CBC_SHA256 first, then the GCM variant.
ONEM2M_PSK = CipherProfile(
    "onem2m",
    "PSK-AES128-CBC-SHA256:PSK-AES128-GCM-SHA256",
    description="TS-0003 §10.2.2: TLS_PSK_WITH_AES_128_CBC_SHA256 (mandatory), TLS_PSK_WITH_AES_128_GCM_SHA256",
)
#: RFC 4279 §2 plain PSK family (all AES suites OpenSSL offers for it)
PSK = CipherProfile(
    "psk", "PSK-AES128-GCM-SHA256:PSK-AES256-GCM-SHA384:PSK-AES128-CBC-SHA256", description="RFC 4279 §2 PSK"
)
#: RFC 4279 §3 DHE_PSK (finite-field DH, RFC 7919 ffdhe2048 group)
DHE_PSK = CipherProfile(
    "dhe-psk",
    "DHE-PSK-AES128-GCM-SHA256:DHE-PSK-AES256-GCM-SHA384:DHE-PSK-AES128-CBC-SHA256",
    needs_dh_params=True,
    description="RFC 4279 §3 DHE_PSK",
)
#: RFC 4279 §4 RSA_PSK: the server also authenticates with an RSA certificate
RSA_PSK = CipherProfile(
    "rsa-psk",
    "RSA-PSK-AES128-GCM-SHA256:RSA-PSK-AES256-GCM-SHA384:RSA-PSK-AES128-CBC-SHA256",
    needs_certificate=True,
    description="RFC 4279 §4 RSA_PSK",
)
#: RFC 5489 ECDHE_PSK
ECDHE_PSK = CipherProfile(
    "ecdhe-psk",
    "ECDHE-PSK-AES128-CBC-SHA256:ECDHE-PSK-CHACHA20-POLY1305",
    description="RFC 5489 ECDHE_PSK",
)
#: TLS 1.3 external PSK, psk_dhe_ke only. OpenSSL's PSK callbacks bind a TLS 1.3 PSK to SHA-256,
#: so only SHA-256 suites are offered (docs/tls-stack.md gotcha 9).
TLS13_PSK = CipherProfile(
    "tls13",
    "",
    "TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256",
    description="RFC 8446 external PSK with (EC)DHE (psk_dhe_ke)",
)

#: TS-0003 §10.2.3: certificate-based SAEF, TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256 (RFC 5289, 0xC023) mandatory,
#: the GCM variant (RFC 5289, 0xC02B) as an addition. Mutual authentication with P-256 certificates.
ECDHE_ECDSA = CipherProfile(
    "ecdhe-ecdsa",
    "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-GCM-SHA256",
    needs_certificate=True,
    mutual_certificates=True,
    description="TS-0003 §10.2.3: TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256 (mandatory), ..._AES_128_GCM_SHA256",
)

#: TS-0003 §10.2.2 for DTLS: TLS_PSK_WITH_AES_128_CCM_8 (RFC 6655, 0xC0A8) mandatory (also RFC 7252 §9.1.3.1),
#: then TLS_PSK_WITH_AES_128_CCM (0xC0A4, 16-byte tag) and the GCM suite as additions.
ONEM2M_DTLS_PSK = CipherProfile(
    "onem2m-dtls",
    "PSK-AES128-CCM8:PSK-AES128-CCM:PSK-AES128-GCM-SHA256",
    description="TS-0003 §10.2.2 DTLS: TLS_PSK_WITH_AES_128_CCM_8 (mandatory), ..._AES_128_CCM, ..._AES_128_GCM_SHA256",
)

#: TS-0003 §10.2.3 for DTLS: TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 (RFC 7251, 0xC0AE) mandatory, GCM as an addition.
ECDHE_ECDSA_DTLS = CipherProfile(
    "ecdhe-ecdsa-dtls",
    "ECDHE-ECDSA-AES128-CCM8:ECDHE-ECDSA-AES128-GCM-SHA256",
    needs_certificate=True,
    mutual_certificates=True,
    description="TS-0003 §10.2.3 DTLS: TLS_ECDHE_ECDSA_WITH_AES_128_CCM_8 (mandatory), ..._AES_128_GCM_SHA256",
)

PROFILES: dict[str, CipherProfile] = {
    p.name: p
    for p in (ONEM2M_PSK, PSK, DHE_PSK, RSA_PSK, ECDHE_PSK, TLS13_PSK, ECDHE_ECDSA, ONEM2M_DTLS_PSK, ECDHE_ECDSA_DTLS)
}


def parse_profiles(text: str) -> tuple[CipherProfile, ...]:
    """Parse a comma-separated list of profile names (``"onem2m,ecdhe-psk,tls13"``)."""
    from m2msec.errors import ConfigurationError

    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigurationError("no cipher profile given")
    out: list[CipherProfile] = []
    for name in names:
        if name not in PROFILES:
            raise ConfigurationError(f"unknown cipher profile {name!r}; known: {', '.join(PROFILES)}")
        if PROFILES[name] not in out:
            out.append(PROFILES[name])
    return tuple(out)
