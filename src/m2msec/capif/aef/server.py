"""Running the AEF front: one TLS port (:func:`m2msec.asgi.serve`) offering the RFC 4279 PSK suites with AEFPSK from
the CCF (async, :class:`~m2msec.capif.aef.psk.AEFPSKResolver`) and ECDHE-ECDSA with the operator's server
certificate, a client certificate asked for but optional and verified against the CCF's CA; the
:class:`~m2msec.capif.aef.app.AEFFront` application decides per call (docs/capif-aef.md "The AEF front")."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from m2msec.asgi import serve
from m2msec.capif.aef.app import AEFFront
from m2msec.capif.aef.ccf_link import CCFLink
from m2msec.capif.aef.config import AEFConfig
from m2msec.capif.aef.events import AEFEventsReceiver
from m2msec.capif.aef.psk import AEFPSKResolver
from m2msec.capif.aef.security_api import SecurityAPI
from m2msec.errors import ConfigurationError
from m2msec.tls.engine import CertificateConfig, ServerConfig, TLSContext
from m2msec.tls.profiles import parse_profiles

__all__ = ["RunningAEF", "front_context", "running_aef_front"]


def front_context(config: AEFConfig) -> TLSContext:
    """The listener's TLS context: ``config.profiles`` (PSK families async; certificate suites with the server
    certificate), client certificates optional and verified against the CCF's CA (CAPIF keys accepted, D164)."""
    profiles = parse_profiles(config.profiles)
    if any(p.tls13_suites for p in profiles):
        raise ConfigurationError("AEFPSK is a TLS 1.2 key: no tls13 profile on the AEF front")
    return TLSContext.server(ServerConfig(
        None, profiles=profiles, async_psk=True, optional_client_certificate=True, capif_client_keys=True,
        certificate=CertificateConfig(config.server_certificate_pem, config.server_key_pem, config.ccf_ca_pem)))


@dataclass
class RunningAEF:
    config: AEFConfig
    link: CCFLink
    resolver: AEFPSKResolver
    app: AEFFront
    server: Any
    events: AEFEventsReceiver | None = None

    @property
    def port(self) -> int:
        return int(self.server.port)


@contextlib.asynccontextmanager
async def running_aef_front(config: AEFConfig, *, sock: socket.socket | None = None,
                            events: tuple[str, int] | bool | None = True, **serve_kw: Any
                            ) -> AsyncIterator[RunningAEF]:
    """Start the AEF front (on ``sock`` when given, else on ``config.listen``) until the block ends; with ``events``
    (host, port) it receives the CCF's revocation notifications there (:mod:`.events`; None: not subscribed; True:
    ``config.events_listen``)."""
    if events is True:
        events = config.events_listen
    elif events is False:
        events = None
    if len({a.interface for a in config.apis}) != 1:
        raise ConfigurationError("the APIs of one AEF front share its listener's interface P0 (one [[api]] "
                                 "interface value)")
    link = CCFLink(*config.ccf_address, ccf_host=config.ccf_host, ca_pem=config.ccf_ca_pem,
                   certificate_pem=config.certificate_pem, private_key_pem=config.private_key_pem)
    resolver = AEFPSKResolver(link, config.apis[0].interface,
                              api_ids=frozenset(a.api_id for a in config.apis if a.api_id))
    app = AEFFront(aef_id=config.aef_id, apis=config.apis, ccf=link, backend=config.backend, issuer=config.issuer,
                   resolver=resolver, backend_connections=config.backend_connections)
    app.security_api = SecurityAPI(app, ccf_host=config.ccf_host)
    where: dict[str, Any] = {"sock": sock} if sock is not None else {"host": config.listen[0],
                                                                      "port": config.listen[1]}
    try:
        server = await serve(app, front_context(config), psk_resolver=resolver, lifespan="off", **where, **serve_kw)
        try:
            if events is None:
                yield RunningAEF(config, link, resolver, app, server)
            else:
                async with AEFEventsReceiver(
                        config.aef_id, app.revoke, ccf_address=config.ccf_address, ccf_host=config.ccf_host,
                        ca_pem=config.ccf_ca_pem, certificate_pem=config.certificate_pem,
                        private_key_pem=config.private_key_pem, listen=events) as receiver:
                    yield RunningAEF(config, link, resolver, app, server, receiver)
        finally:
            await server.aclose()
    finally:
        await app.aclose()  # the backend connections (D177)
        await link.close()
