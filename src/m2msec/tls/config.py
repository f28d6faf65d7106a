"""TLS configuration: what a server (Entity B) or client (Entity A) is configured with (no OpenSSL here)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from m2msec.errors import ConfigurationError
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import PSKEntry
from m2msec.tls.profiles import ECDHE_PSK, ONEM2M_PSK, CipherProfile
from m2msec.tls.psk_peek import DEFAULT_MAX_CLIENT_HELLO, MAX_HANDSHAKE_MESSAGE

__all__ = [
    "DEFAULT_CLIENT_PROFILES",
    "DEFAULT_SERVER_PROFILES",
    "CertificateConfig",
    "ClientConfig",
    "PSKLookup",
    "ServerConfig",
]

#: TS-0003 §10.2.1 says TLS 1.2 "shall be used": the default server offers the §10.2.2 suites (mandatory one
#: first) and forward-secret ECDHE_PSK, TLS 1.2 only. TLS 1.3 (TLS13_PSK) is opt-in (docs/decisions.md D3).
DEFAULT_SERVER_PROFILES: tuple[CipherProfile, ...] = (ONEM2M_PSK, ECDHE_PSK)
#: A oneM2M Entity A offers the §10.2.2 suites over TLS 1.2 (TS-0003 §10.2.1 mandates TLS 1.2).
DEFAULT_CLIENT_PROFILES: tuple[CipherProfile, ...] = (ONEM2M_PSK,)

PSKLookup = Callable[[str], PSKEntry | None]


@dataclass(frozen=True)
class CertificateConfig:
    """An entity's own certificate credential and what it trusts (TS-0003 §8.1.2.3, §8.1.2.4).

    Args:
        chain_pem: the entity's certificate first, then any intermediates (PEM).
        private_key_pem: its private key (PEM, unencrypted).
        trust_anchors_pem: CA certificates that verify the *peer's* chain (RFC 5280 path validation,
            name constraints included). Required wherever the peer authenticates with a certificate.
        crl_pem: CRLs of the issuers; with them, a revoked peer certificate is refused (§8.1.2.2).
    """

    chain_pem: bytes
    private_key_pem: bytes = field(repr=False)
    trust_anchors_pem: bytes | None = None
    crl_pem: bytes | None = None


@dataclass(frozen=True)
class ServerConfig:
    """Configuration of a TLS server (Entity B): PSK, certificates, or both on one port.

    Args:
        psk_lookup: maps a ``psk_identity`` to its :class:`PSKEntry`, or ``None`` when unknown. Called
            inside the handshake on the event-loop thread: must be fast and must not do network I/O.
            ``None`` disables PSK.
        profiles: cipher profiles in order of preference (server preference is enforced).
        identity_hint: RFC 4279 §5.1 PSK identity hint sent in ServerKeyExchange (TLS 1.2).
        certificate: the server's certificate credential; needed by the ``rsa-psk`` profile (an RSA key)
            and by ``ecdhe-ecdsa`` (a P-256 key, plus trust anchors for the clients' certificates).
        reveal_unknown_psk_identity: tell a client that its identity is unknown (``unknown_psk_identity``)
            instead of failing as for a wrong key (RFC 4279 §2 hiding, the default); for debugging.
        async_psk: resolve PSK identities asynchronously: a server connection reports
            ``PSKIdentityReceived`` and waits for ``conn.supply_psk(entry)``; ``psk_lookup`` is then not
            used (it may be None). See :mod:`m2msec.tls.async_psk`.
        max_client_hello: with ``async_psk``, the largest TLS 1.3 ClientHello parsed for its identities.
        optional_client_certificate: certificate suites ask for a client certificate but complete the handshake
            without one (``SessionInfo.peer_certificate`` is then ``None``); a certificate that is sent is verified
            as always. For services where some requests are authenticated otherwise (the CAPIF CCF's onboarding,
            TS 33.122 §6.1: server-authenticated TLS plus an onboarding credential). Off by default.
        capif_client_keys: accept P-384 and RSA (>= 2048 bits) client certificate keys as well as P-256 (D164).
    """

    psk_lookup: PSKLookup | None
    profiles: tuple[CipherProfile, ...] = DEFAULT_SERVER_PROFILES
    identity_hint: str | None = None
    certificate: CertificateConfig | None = None
    reveal_unknown_psk_identity: bool = False
    async_psk: bool = False
    max_client_hello: int = DEFAULT_MAX_CLIENT_HELLO
    optional_client_certificate: bool = False
    #: client certificates may also carry a P-384 or an RSA (>= 2048 bits) key (the 3GPP TS 33.310 profile of CAPIF
    #: clients, D164); the default is TS-0003 §10.1.1.1's P-256 only
    capif_client_keys: bool = False

    def __post_init__(self) -> None:
        # below a minimal ClientHello every asynchronous TLS 1.3 client would be refused, silently
        if isinstance(self.max_client_hello, bool) or not MAX_HANDSHAKE_MESSAGE <= self.max_client_hello <= (1 << 24):
            raise ConfigurationError(f"max_client_hello must be {MAX_HANDSHAKE_MESSAGE}..{1 << 24} bytes")


@dataclass(frozen=True)
class ClientConfig:
    """Configuration of a TLS client (Entity A, TS-0003 §8.2.2.1 / §8.2.2.2).

    Args:
        psk_identity / psk: the ``psk_identity`` (KpsaID, Key Identifier, KeID, ...) and key (Kpsa, Kc, ...);
            ``None`` for a certificate-only client.
        peer_entity: IdB, the identity of Entity B; the security context is associated with it after a
            successful handshake (TS-0003 §8.2.2.1 "Entity A associates the security context with IdB").
        server_name: host name sent as SNI (TS-0003 §10.2.1); IP literals are never sent.
        certificate: the client's certificate credential and the trust anchors for the server's chain.
            With PSK suites only ``trust_anchors_pem`` matters (RSA_PSK server certificate); without it the
            server is authenticated by the PSK alone, as with every other PSK family, and a server that did
            not use the PSK (TLS 1.3: sent a certificate instead) is refused (docs/decisions.md D38).
    """

    psk_identity: str | None
    psk: SecretKey | None = None
    profiles: tuple[CipherProfile, ...] = DEFAULT_CLIENT_PROFILES
    peer_entity: str | None = None
    server_name: str | None = None
    certificate: CertificateConfig | None = None
    #: certificate suites without a certificate of the client's own: ``certificate`` holds only the trust anchors
    #: (empty chain and key) and the server alone is authenticated (CAPIF onboarding, TS 33.122 §6.1). Explicit, so
    #: that empty certificate files given anywhere else stay a configuration error.
    server_authentication_only: bool = False
