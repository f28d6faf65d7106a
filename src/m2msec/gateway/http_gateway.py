"""The TLS-PSK gateway: Entity B of the Provisioned Symmetric Key SAEF in front of a oneM2M CSE.

It terminates TLS-PSK (HTTP binding, TS-0009) with the engine, associates each SA with an identity
(:mod:`m2msec.gateway.rules`), refuses requests whose ``X-M2M-Origin`` does not match it (4106,
TS-0003 §7.2.1) and forwards the others to the CSE at ``backend`` over loopback HTTP, adding the
identity headers (:data:`~m2msec.gateway.rules.IDENTITY_HEADERS`). Each client connection is a
callback protocol fed by the TLS adapter (:mod:`m2msec.gateway.http_conn`); requests reach the CSE over
keep-alive connections all clients share (:mod:`m2msec.gateway.backend_pool`).

A TOML PSK table and a CRL file are polled for changes and reloaded (:mod:`m2msec.gateway.reload`); an
SQLite store is read per handshake. A live SA whose credential was removed, changed or revoked, or that
reached its maximum lifetime, is refused and closed at its next request (:mod:`m2msec.gateway.revocation`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING

from m2msec import http1
from m2msec.crl import CRLFile
from m2msec.errors import (
    BadRequest,
    ConfigurationError,
    OneM2MError,
    TargetNotReachable,
)
from m2msec.gateway.backend_pool import BackendPool
from m2msec.gateway.headers import check_request_headers, normalize_header_name, strip_gateway_headers
from m2msec.gateway.http_conn import ClientConnection
from m2msec.gateway.limits import (
    DEFAULT_BODY_BUDGET,
    DEFAULT_WRITE_TIMEOUT,
    RETRY_AFTER,
    BodyBudget,
    GatewayBusy,
    Lease,
    ResponseDropped,
)
from m2msec.gateway.maf_resolver import revocation_table
from m2msec.gateway.mef_resolver import RemoteKeyResolver
from m2msec.gateway.registrar import Registrar
from m2msec.gateway.registration import AECreate, authorize, http_ae_create
from m2msec.gateway.reload import side_reloader
from m2msec.gateway.revocation import Revocation
from m2msec.gateway.rules import IDENTITY_HEADERS, CredentialResolver, SecurityAssociation, identity_fields
from m2msec.gateway.side import SidePolicy
from m2msec.keys.table import PSKTable
from m2msec.tls.engine import DEFAULT_SERVER_PROFILES, TLSContext
from m2msec.tls.profiles import CipherProfile
from m2msec.transport.limits import (
    DEFAULT_MAX_CONNECTIONS_PER_SA,
    DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
    DEFAULT_MAX_HANDSHAKES_PER_SOURCE,
)
from m2msec.transport.tls import ConnectionLimiter, start_server

if TYPE_CHECKING:
    from m2msec.metrics import GatewayMetrics

__all__ = ["Backend", "Gateway", "GatewayConfig", "parse_backend"]

log = logging.getLogger("m2msec.gateway")

#: RFC 9110 §7.6.1 hop-by-hop headers, never forwarded
_HOP_BY_HOP = frozenset(
    {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
     "transfer-encoding", "upgrade", "host", "content-length"}
)


@dataclass(frozen=True)
class Backend:
    host: str
    port: int
    path_prefix: str = ""

    def __str__(self) -> str:
        return f"http://{self.host}:{self.port}{self.path_prefix}"


def parse_backend(url: str) -> Backend:
    """Parse ``http://HOST:PORT[/prefix]`` (the CSE's HTTP binding; plain HTTP, loopback expected)."""
    parts = urllib.parse.urlsplit(url)
    if "@" in parts.netloc:  # never quoted: user:password@ would be in the error line (O7)
        raise ConfigurationError("--backend must not carry user information (user:password@): the gateway sends "
                                 "no credentials to the CSE")
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigurationError(f"--backend must be an http://HOST:PORT URL, not {url!r}")
    try:
        port = parts.port or 80
    except ValueError:
        raise ConfigurationError(f"--backend URL {url!r} has an invalid port") from None
    if parts.query or parts.fragment:
        raise ConfigurationError("--backend URL must not have a query or fragment")
    return Backend(parts.hostname, port, parts.path.rstrip("/"))


@dataclass(frozen=True)
class GatewayConfig(SidePolicy):
    """The HTTP side; the settings it shares with the coaps side are :class:`~m2msec.gateway.side.SidePolicy`'s."""

    backend: Backend
    host: str = "127.0.0.1"
    port: int = 8443
    profiles: tuple[CipherProfile, ...] = DEFAULT_SERVER_PROFILES
    #: open connections (handshaking or established) beyond which new ones are reset at once
    max_connections: int = 10000
    #: connections one source (IPv4 address, IPv6 /64) may have in their handshake at once (D31)
    max_handshakes_per_source: int = DEFAULT_MAX_HANDSHAKES_PER_SOURCE
    #: connections one source may have open at once (D47)
    max_connections_per_source: int = DEFAULT_MAX_CONNECTIONS_PER_SOURCE
    #: established connections one credential may hold, at most half of max_connections (D47)
    max_connections_per_sa: int = DEFAULT_MAX_CONNECTIONS_PER_SA
    idle_timeout: float = 60.0
    backend_timeout: float = 30.0
    max_body: int = http1.DEFAULT_MAX_BODY
    #: request- and response-body bytes all connections together may hold, shared per client; 503 / 5000 (D33, D46)
    max_body_memory: int = DEFAULT_BODY_BUDGET
    #: seconds a response may wait for a client that does not read it; then the connection is dropped
    write_timeout: float = DEFAULT_WRITE_TIMEOUT


def _onem2m_error_response(exc: OneM2MError, request_id: str | None) -> http1.Message:
    headers = [("content-type", "application/json"), ("x-m2m-rsc", str(exc.rsc))]
    if request_id:
        headers.append(("x-m2m-ri", request_id))
    body = json.dumps({"m2m:dbg": exc.detail}).encode()
    return http1.Message(headers=headers, body=body, status=exc.http_status, reason=HTTPStatus(exc.http_status).phrase)


class Gateway:
    """Serve TLS-PSK on ``config.host:config.port`` in front of ``config.backend``."""

    def __init__(
        self, config: GatewayConfig, table: PSKTable | None, *, resolver: CredentialResolver | None = None,
        crls: CRLFile | None = None, maf: RemoteKeyResolver | None = None, registrar: Registrar | None = None,
    ) -> None:
        self.config = config
        self.table = table
        #: service subscription rules and registration bindings (``--app-rules``), also the default resolver
        self.registrar = registrar
        self.resolver = resolver if resolver is not None else registrar
        #: remote keys (``--maf``, ``--mef``): MAF Key Identifiers / KeIDs resolved remotely, the rest in ``table``
        self.maf = maf
        self.context = TLSContext.server(config.server_config(table, config.profiles, async_psk=maf is not None))
        self.limiter = ConnectionLimiter(config.max_connections,
                                         per_source_handshakes=config.max_handshakes_per_source,
                                         per_source_connections=config.max_connections_per_source,
                                         per_sa=config.max_connections_per_sa,
                                         failed_per_source=config.max_failed_handshakes_per_source or None)
        self.body_budget = BodyBudget(config.max_body_memory)
        self.revocation = Revocation(revocation_table(maf) if maf is not None else table, crls,
                                     max_lifetime=config.max_sa_lifetime)
        self._reloader = side_reloader(table, crls, self.context, config.reload_interval)
        self._server: asyncio.Server | None = None
        #: keep-alive connections to the CSE, shared by all clients (gateway/backend_pool.py, D56-D58)
        self.backend_pool = BackendPool(config.backend.host, config.backend.port)
        self._clients: set[ClientConnection] = set()  # live connections (gateway/http_conn.py)
        #: ``--metrics`` (m2msec.metrics), set before :meth:`start`; None: off
        self.observer: GatewayMetrics | None = None

    @property
    def serving(self) -> bool:
        """Is its TLS listener open (the metrics listener's /healthz, O6)?"""
        return self._server is not None and self._server.is_serving()

    @property
    def port(self) -> int:
        assert self._server is not None, "gateway not started"
        return int(self._server.sockets[0].getsockname()[1])

    async def start(self, *, sock: socket.socket | None = None) -> None:
        """Listen on ``config.host:config.port``, or on ``sock`` (a listening TCP socket, e.g. a worker's share)."""
        host, port = (None, None) if sock is not None else (self.config.host, self.config.port)
        try:
            self._server = await start_server(
                lambda: ClientConnection(self), host, port, self.context,
                handshake_timeout=self.config.handshake_timeout, limiter=self.limiter, sock=sock,
                psk_resolver=self.maf, observer=self.observer,
            )
        except OSError as exc:
            raise ConfigurationError(
                f"cannot listen on {self.config.host}:{self.config.port}: {exc.strerror or exc or type(exc).__name__}"
            ) from None
        self._reloader.start()
        log.info("gateway listening on %s:%d, backend %s", self.config.host, self.port, self.config.backend,
                 extra={"event": "started"})

    async def serve_forever(self) -> None:
        assert self._server is not None
        await self._server.serve_forever()

    async def close(self) -> None:
        await self._reloader.close()
        if self._server is not None:
            self._server.close()
            for client in list(self._clients):
                client.cancel()
            await self._server.wait_closed()
        self.backend_pool.close()

    @staticmethod
    def _refusal(exc: http1.HTTPError) -> http1.Message:
        if exc.busy:  # the request is fine, the gateway is momentarily full (D33)
            resp = _onem2m_error_response(GatewayBusy("the gateway is busy, retry later"), None)
            resp.headers.append(("retry-after", str(RETRY_AFTER)))
        else:
            resp = _onem2m_error_response(BadRequest("request body too large" if exc.too_large
                                                     else "malformed HTTP request"), None)
            if exc.too_large:
                resp.status, resp.reason = 413, HTTPStatus(413).phrase
        resp.headers.append(("connection", "close"))
        return resp

    async def _process(self, req: http1.Message, sa: SecurityAssociation, peer: object,
                       lease: Lease | None = None,
                       rebind: Callable[[SecurityAssociation], None] | None = None) -> http1.Message:
        """Check and forward one request; ``rebind`` receives the SA when a registration or a re-read of the
        bindings changed what it may be used for (the connection keeps it for its next requests)."""
        try:
            check_request_headers(req.headers)  # one From, one RI, ... before anything reads them
        except BadRequest as exc:
            return self._refuse(req, sa, peer, exc, None)
        origin = req.header("x-m2m-origin")
        request_id = req.header("x-m2m-ri")
        create: AECreate | None = None
        cfg = self.config
        try:
            if self.registrar is not None:
                create = http_ae_create(req.method, req.header("content-type"), req.body, origin, req.target,
                                        [v for k, v in req.headers if normalize_header_name(k) == "accept"])
                checked = self.registrar.authorize(sa, origin, cfg.unbound_policy, create)
                if checked is not sa:
                    sa = checked
                    if rebind is not None:
                        rebind(sa)
            else:
                authorize(sa, origin, cfg.unbound_policy, cse_id=cfg.cse_id, sp_id=cfg.sp_id)
        except OneM2MError as exc:
            return self._refuse(req, sa, peer, exc, request_id)
        try:
            resp = await self._forward(req, sa, lease)
        except ResponseDropped as exc:  # executed by the CSE: no Retry-After (D46)
            log.warning("response to %s %s from %s dropped: %s", req.method, req.target[:200], peer, exc.detail,
                        extra=_fields("response_dropped", peer, sa, exc.rsc))
            return self._refuse(req, sa, peer, exc, request_id, logged=True)
        except OneM2MError as exc:
            log.error("forwarding %s %s failed: %s", req.method, req.target[:200], exc.detail,
                      extra=_fields("backend_error", peer, sa, exc.rsc))
            return self._refuse(req, sa, peer, exc, request_id, logged=True)
        log.info("%s %s from %r -> %d (rsc %s)", req.method, req.target[:200], sa.identity, resp.status,
                 resp.header("x-m2m-rsc"), extra=_fields("request_done", peer, sa, resp.header("x-m2m-rsc")))
        if create is not None and self.registrar is not None:
            created = resp.status == 201 and resp.header("x-m2m-rsc") == "2001"
            registered = self.registrar.registered(sa, create, created, resp.body)
            if registered is not sa and rebind is not None:
                rebind(registered)
        return resp

    def _refuse(self, req: http1.Message, sa: SecurityAssociation, peer: object, exc: OneM2MError,
                request_id: str | None, *, logged: bool = False) -> http1.Message:
        """The gateway's own answer ``exc`` to ``req``: logged (unless ``logged``) and counted."""
        if not logged:
            log.warning("refused %s %s from %s: rsc=%d %s", req.method, req.target[:200], peer, exc.rsc, exc.detail,
                        extra=_fields("request_refused", peer, sa, exc.rsc))
        if self.observer is not None:
            self.observer.refused("http", exc.rsc)
        return _onem2m_error_response(exc, request_id)

    async def _forward(self, req: http1.Message, sa: SecurityAssociation, lease: Lease | None = None) -> http1.Message:
        backend = self.config.backend
        # hop-by-hop in any spelling: a CSE behind WSGI/CGI may read Content_Length as Content-Length
        headers = [(k, v) for k, v in strip_gateway_headers(req.headers) if normalize_header_name(k) not in _HOP_BY_HOP]
        headers.insert(0, ("host", f"{backend.host}:{backend.port}"))
        headers += identity_fields(sa, IDENTITY_HEADERS)
        target = req.target if req.target.startswith("/") else "/" + req.target
        out = http1.Message(headers=headers, body=req.body, method=req.method, target=backend.path_prefix + target)
        if lease is not None:
            lease.forwarded = True  # from here the CSE may execute it: never evicted, never "retry" (D46)
        observer = self.observer
        started = asyncio.get_running_loop().time() if observer is not None else 0.0
        try:
            async with asyncio.timeout(self.config.backend_timeout):
                resp = await self.backend_pool.request(out, max_body=self.config.max_body,
                                                       budget=self.body_budget if lease is not None else None,
                                                       lease=lease)
        except (OSError, TimeoutError) as exc:
            if observer is not None:
                observer.backend_failed("timeout" if isinstance(exc, TimeoutError) else "unreachable")
            raise TargetNotReachable(f"the CSE at {backend} is not reachable") from exc
        except http1.HTTPError as exc:
            if observer is not None:
                observer.backend_failed("response_too_large" if exc.busy else "invalid_response")
            if exc.busy:  # the answer does not fit the body memory now (D46), but the CSE executed the request
                raise ResponseDropped("the CSE's response did not fit the gateway's memory; "
                                      "the request was executed") from None
            raise TargetNotReachable(f"the CSE at {backend} sent an invalid response: {exc}") from exc
        finally:
            if lease is not None:
                lease.forwarded = False  # the response is read (or failed): evictable again while it is written
        if observer is not None:
            observer.backend_answered(asyncio.get_running_loop().time() - started)
        resp.headers = [(k, v) for k, v in strip_gateway_headers(resp.headers) if k not in _HOP_BY_HOP]
        return resp


def _fields(event: str, peer: object, sa: SecurityAssociation, rsc: int | str | None) -> dict[str, object]:
    """The ``extra=`` of a request's log line (the JSON log's fields, m2msec.logs)."""
    return {"event": event, "peer": peer, "sa": sa.psk_identity or sa.credential, "credential_id": sa.credential_id,
            "rsc": int(rsc) if isinstance(rsc, str) and rsc.isdigit() else rsc}
