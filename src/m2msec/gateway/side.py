"""What the gateway's two sides (HTTP over TLS, :mod:`m2msec.gateway.http_gateway`; CoAP over DTLS,
:mod:`m2msec.gateway.coaps_gateway`) share: the credential, association and lifetime policy of their SAs
(:class:`SidePolicy`, inherited by both configs) and the engine configuration built from it."""

from __future__ import annotations

from dataclasses import dataclass

from m2msec.gateway.revocation import DEFAULT_MAX_SA_LIFETIME
from m2msec.gateway.rules import UnboundPolicy
from m2msec.keys.table import PSKTable
from m2msec.tls.engine import CertificateConfig, ServerConfig
from m2msec.tls.profiles import CipherProfile
from m2msec.transport.limits import DEFAULT_MAX_FAILED_HANDSHAKES_PER_SOURCE
from m2msec.transport.tls import DEFAULT_HANDSHAKE_TIMEOUT

__all__ = ["SidePolicy"]


@dataclass(frozen=True, kw_only=True)
class SidePolicy:
    """The settings both sides have, with the same meaning and default (keyword-only in both configs)."""

    identity_hint: str | None = None
    #: the gateway's certificate credential and the client CAs for certificate clients
    certificate: CertificateConfig | None = None
    unbound_policy: UnboundPolicy = UnboundPolicy.REJECT
    #: the CSE-ID of the CSE behind the gateway: lets AE-ID certificate holders use their AE-ID-Stem as From
    cse_id: str | None = None
    #: the gateway's service provider (SP-ID): certificate identities of other SPs get their absolute form only
    sp_id: str | None = None
    handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT
    #: seconds between checks of the PSK table and CRL files for changes
    reload_interval: float = 1.0
    #: seconds after which an SA is closed at its next request (docs/decisions.md D28)
    max_sa_lifetime: float = DEFAULT_MAX_SA_LIFETIME
    #: tell clients their PSK identity is unknown instead of failing as for a wrong key (RFC 4279 §2, D34)
    reveal_unknown_psk_identity: bool = False
    #: failed handshakes one source may have in its bucket (D220, D229; 0: no limit)
    max_failed_handshakes_per_source: int = DEFAULT_MAX_FAILED_HANDSHAKES_PER_SOURCE

    def server_config(self, table: PSKTable | None, profiles: tuple[CipherProfile, ...], *,
                      async_psk: bool = False) -> ServerConfig:
        """The engine's server configuration of a side serving ``profiles`` with ``table``; with ``async_psk``
        (``--maf``) PSK identities go to the side's asynchronous resolver instead, which reads ``table`` itself."""
        return ServerConfig(
            psk_lookup=table.lookup if table is not None and not async_psk else None,
            async_psk=async_psk,
            profiles=profiles,
            identity_hint=self.identity_hint,
            certificate=self.certificate,
            reveal_unknown_psk_identity=self.reveal_unknown_psk_identity,
        )

