"""The AEF front (issue 19): an ASGI application, served over m2msec TLS (:mod:`m2msec.asgi`), that authenticates
each API call by the connection's CAPIF-2e method (TS 33.122 §6.5.2), checks the invoker's authorization with the
CCF, and forwards the call to the API provider's backend over plain HTTP/1.1.

The method is the connection's:

* a TLS-PSK session (the engine resolved psk_identity = API invoker ID to its AEFPSK, :mod:`.psk`): ``PSK``;
* a client certificate (verified by the engine against the CCF's CA): ``PKI``, the invoker ID is its CN and its OU
  must be ``api-invoker`` (D119);
* neither: ``OAUTH``, ``Authorization: Bearer <access token>`` verified locally with the CCF's JWK Set
  (:func:`m2msec.capif.tokens.verify_access_token`), the invoker ID is the token's ``client_id``.

Then the invoker's security context at the CCF (``trustedInvokers/{id}``) must select that method for this AEF and
the API the path belongs to (:func:`.authorize.authorize`); refusals are TS 29.122 ProblemDetails.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from m2msec import http1
from m2msec.asgi import TLSExtension, tls_extension
from m2msec.capif.aef.authorize import Presented, ServedAPI, StaleCredential, authorize
from m2msec.capif.aef.backend import (
    BACKEND_IDLE_EXPIRY,
    BACKEND_MAX_CONNECTIONS,
    BACKEND_MAX_IDLE,
    BackendFailed,
    BackendPool,
)
from m2msec.capif.aef.ccf_link import CCFLinkError, TrustedInvoker, is_invoker_id
from m2msec.capif.certificates import CAPIFRole, capif_identity, certificate_thumbprint
from m2msec.capif.tokens import (
    INVALID_TOKEN_CAUSE,
    AccessTokenClaims,
    TokenRefused,
    VerificationKeys,
    verify_access_token,
)
from m2msec.errors import CAPIFError

__all__ = [
    "BACKEND_TIMEOUT",
    "CLOSE_AT_REVOCATION",
    "FORWARD_DROPPED_HEADERS",
    "INVOKER_ID_HEADER",
    "JWKS_CACHE_TTL",
    "SA_ENDED_CAUSE",
    "SECURITY_API_PREFIX",
    "TRUST_CACHE_TTL",
    "TRUST_REFETCH_AFTER",
    "AEFFront",
    "CCFSource",
]

log = logging.getLogger("m2msec.aef")

#: D165: the header the backend reads the authenticated API invoker ID from (a client-sent one is never forwarded)
INVOKER_ID_HEADER: Final = "x-capif-invoker-id"
#: D165: the header naming the CAPIF-2e method the call was authenticated with (client-sent ones dropped too)
METHOD_HEADER: Final = "x-capif-security-method"
#: D165: request headers never forwarded: hop-by-hop (RFC 9110 §7.6.1), the credential, the identity headers
FORWARD_DROPPED_HEADERS: Final = frozenset({
    "connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade",
    "proxy-authorization", "proxy-authenticate", "host", "content-length", "expect", "authorization",
    INVOKER_ID_HEADER, METHOD_HEADER,
    # D183: headers some backends route, rewrite or trust by (Symfony/IIS URL overrides, method overrides, the
    # client address as proxies write it): a client's would reach another resource or speak for the front
    "x-original-url", "x-rewrite-url", "x-http-method-override", "x-http-method", "x-method-override", "forwarded",
    "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-forwarded-port", "x-forwarded-prefix",
    "x-real-ip"})
#: response headers of the backend not passed on (hop-by-hop; the length is set again)
_RESPONSE_DROPPED: Final = frozenset({"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade",
                                      "content-length", "proxy-authenticate"})
#: D167: seconds an invoker's security context fetched for a PKI or OAUTH call is reused (PSK: the resolver's, D163)
TRUST_CACHE_TTL: Final = 30.0
#: D167: a refusal from a cached context asks the CCF again only when that context is at least this old (seconds):
#: refused calls cannot make the AEF ask the CCF more than once a second per invoker
TRUST_REFETCH_AFTER: Final = 1.0
#: D167: seconds the CCF's JWK Set is reused before it is fetched again (at once when a token names an unknown key)
JWKS_CACHE_TTL: Final = 300.0
#: D174: an unknown key ID makes the front fetch the key set again at most this often (seconds)
JWKS_REFETCH_AFTER: Final = 1.0
#: D169: seconds for one exchange with the backend (connect, send, answer); past it the call is answered 502
BACKEND_TIMEOUT: Final = 30.0
#: the AEF Security API's path prefix (TS 29.222 §8.6), served by the front itself, never forwarded
SECURITY_API_PREFIX: Final = "/aef-security/v1/"
#: D171: the ProblemDetails cause of a call on a connection a revocation ended (the connection is then closed)
SA_ENDED_CAUSE: Final = "API_INVOKER_NOT_AUTHORIZED"
#: D179: a revocation closes the invoker's connections (idle at once, busy after the response in flight) instead of
#: waiting for their next request (D171, which stays the fallback)
CLOSE_AT_REVOCATION: Final = True
#: D177: largest backend answer passed on (bytes); a larger one is 502 and its connection closed
MAX_BACKEND_ANSWER: Final = http1.DEFAULT_MAX_BODY

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class CCFSource(Protocol):
    async def trusted_invoker(self, invoker_id: str) -> TrustedInvoker | None: ...

    async def jwks(self) -> VerificationKeys: ...


class PSKTrust(Protocol):
    def trusted(self, invoker_id: str) -> TrustedInvoker | None: ...

    def invalidate(self, invoker_id: str) -> None: ...


class _SAEnded(CAPIFError):
    """A call on a connection a revocation ended (D171): refused, and the connection closed."""


@dataclass(frozen=True)
class _Caller:
    invoker_id: str
    presented: Presented

    @property
    def method(self) -> str:
        return self.presented.method


class AEFFront:
    """The ASGI application (see the module docstring). ``apis``: the service APIs served (path prefix → API name);
    ``backend``: (host, port) of the plain HTTP service; ``issuer``: the CCF's token issuer; ``resolver``: the
    listener's PSK resolver (its cached contexts are reused), ``clock``: wall-clock seconds."""

    def __init__(self, *, aef_id: str, apis: Sequence[ServedAPI], ccf: CCFSource, backend: tuple[str, int],
                 issuer: str, resolver: PSKTrust | None = None, clock: Callable[[], float] = time.time,
                 trust_ttl: float = TRUST_CACHE_TTL, backend_timeout: float = BACKEND_TIMEOUT,
                 backend_connections: int = BACKEND_MAX_CONNECTIONS, backend_idle: int = BACKEND_MAX_IDLE,
                 backend_idle_expiry: float = BACKEND_IDLE_EXPIRY) -> None:
        self.aef_id, self.apis, self.ccf, self.backend, self.issuer = aef_id, tuple(apis), ccf, backend, issuer
        self.resolver, self.clock, self.trust_ttl, self.backend_timeout = resolver, clock, trust_ttl, backend_timeout
        #: invoker ID -> (when fetched, context)
        self._trust: dict[str, tuple[float, TrustedInvoker]] = {}
        self._keys: tuple[float, VerificationKeys] | None = None
        #: calls forwarded to the backend
        self.forwarded = 0
        #: D171: the live TLS sessions each invoker made calls on (weak: a closed connection drops out), and the
        #: invokers a revocation ended on each: their next request there is refused 403 and the connection closed (an
        #: OAUTH session carrying another invoker's token is that invoker's to use)
        self._live: dict[str, weakref.WeakSet[Any]] = {}
        self._ended: weakref.WeakKeyDictionary[Any, set[str]] = weakref.WeakKeyDictionary()
        #: D179: the connections (their TLS extension, a close handle) each invoker made calls on, closed on revoke
        self._connections: dict[str, weakref.WeakSet[TLSExtension]] = {}
        #: D177: keep-alive connections to the backend
        self.pool = BackendPool(*backend, max_answer=MAX_BACKEND_ANSWER, max_connections=backend_connections,
                                max_idle=backend_idle, idle_expiry=backend_idle_expiry)
        #: the AEF Security API (``/aef-security/v1/...``, :mod:`.security_api`), set by the server
        self.security_api: Callable[[Message, bytes], Awaitable[tuple[int, list[tuple[bytes, bytes]], bytes]]] | \
            None = None

    def __repr__(self) -> str:
        return f"<AEFFront {self.aef_id} {[a.name for a in self.apis]} -> {self.backend[0]}:{self.backend[1]}>"

    def invalidate(self, invoker_id: str) -> None:
        """Forget what the CCF said of ``invoker_id`` (revocation, offboarding), here and in the PSK resolver."""
        self._trust.pop(invoker_id, None)
        if self.resolver is not None:
            self.resolver.invalidate(invoker_id)

    def revoke(self, invoker_id: str) -> None:
        """Revocation or offboarding (TS 33.122 §6.8): :meth:`invalidate`, and the invoker's live connections are
        ended: closed at once when idle, after the response in flight otherwise (D179); a request that still reaches
        one is refused (403) and the connection closed (D171)."""
        self.invalidate(invoker_id)
        for session in list(self._live.pop(invoker_id, ())):
            self._ended.setdefault(session, set()).add(invoker_id)
        for connection in list(self._connections.pop(invoker_id, ())):
            if CLOSE_AT_REVOCATION:
                connection.close()
        log.info("AEF: state of API invoker %r dropped (revocation)", invoker_id)

    async def aclose(self) -> None:
        """Close the backend connections (the front stops)."""
        await self.pool.aclose()

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await self.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        try:
            if self.security_api is not None and scope["path"].startswith(SECURITY_API_PREFIX):
                status, headers, body = await self.security_api(scope, await _read_body(receive))
            else:
                status, headers, body = await self._handle(scope, receive)
        except CAPIFError as exc:
            status, headers, body = _problem(exc)
            if isinstance(exc, _SAEnded | StaleCredential):  # the connection's credential is done with
                headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _handle(self, scope: Message, receive: Receive) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        path: str = scope["path"]
        if _ambiguous_path(path, scope.get("raw_path", b"")):
            raise CAPIFError("the path has dot segments (also with ;parameters), an empty segment, an encoded slash or "
                             "a backslash: refused, since the backend may read it as another resource than the API "
                             "it was authorized for", status=400)
        # the longest matching prefix: a nested API (/api/admin under /api) is its own API (D174)
        api = _longest(self.apis, path)
        if api is not _longest(self.apis, path.lower(), folded=True):  # D183: /api/ADMIN is neither /api nor
            raise CAPIFError("the path differs from a published API prefix in letter case only: refused, since "
                             "the backend may match it either way", status=400)
        if api is None:
            raise CAPIFError("no API of this AEF is served at this path", status=404)
        caller = await self._authenticate(scope, api)
        session = tls_extension(scope).session
        if caller.invoker_id in self._ended.get(session, ()):
            log.info("AEF: %s call of %r refused: its connection was ended by a revocation", caller.method,
                     caller.invoker_id)
            raise _SAEnded("the security association ended (authorization revoked)", status=403,
                             cause=SA_ENDED_CAUSE)
        trusted, cached = await self._trusted(caller)
        try:
            try:
                authorize(trusted, caller.presented, self.aef_id, api)
            except CAPIFError:
                if not cached:
                    raise
                # the invoker may just have renegotiated (trustedInvokers /update, D166): ask the CCF again
                trusted, _ = await self._trusted(caller, fresh=True)
                authorize(trusted, caller.presented, self.aef_id, api)
        except CAPIFError as exc:
            log.info("AEF: %s call of %r to %s refused: %s", caller.method, caller.invoker_id, api.name, exc.cause)
            raise
        self._live.setdefault(caller.invoker_id, weakref.WeakSet()).add(session)
        self._connections.setdefault(caller.invoker_id, weakref.WeakSet()).add(tls_extension(scope))
        body = await _read_body(receive)
        return await self._forward(scope, caller, body)

    async def _authenticate(self, scope: Message, api: ServedAPI) -> _Caller:
        session = tls_extension(scope).session
        if session.authentication == "psk":
            identity = session.psk_identity
            if not identity or not is_invoker_id(identity):
                raise CAPIFError("the PSK identity is no API invoker ID", status=401)
            return _Caller(identity, Presented("PSK", psk=session.psk_key))
        if session.peer_certificate is not None:
            role, identity = capif_identity(session.peer_certificate)
            if role is not CAPIFRole.INVOKER:
                raise CAPIFError("the client certificate is not an API invoker's", status=403)
            return _Caller(identity, Presented("PKI", thumbprint=certificate_thumbprint(session.peer_certificate)))
        token = _bearer(scope)
        if token is None:
            raise TokenRefused("API call", "no credential (TLS-PSK, an invoker certificate or a bearer token)",
                               cause=INVALID_TOKEN_CAUSE)
        claims = await self._verify(token, api)
        return _Caller(claims.client_id, Presented("OAUTH", generation=claims.context))

    async def _verify(self, token: str, api: ServedAPI) -> AccessTokenClaims:
        now = self.clock()
        keys = await self._jwks(now)
        try:
            claims = verify_access_token(token, keys, issuer=self.issuer, aef_id=self.aef_id, api_name=api.name,
                                         now=int(now))
        except TokenRefused as exc:
            if exc.reason != "unknown key":
                raise
            keys = await self._jwks(now, fresh=True)  # the CCF may have a new token key
            claims = verify_access_token(token, keys, issuer=self.issuer, aef_id=self.aef_id, api_name=api.name,
                                         now=int(now))
        return claims

    async def _jwks(self, now: float, *, fresh: bool = False) -> VerificationKeys:
        if self._keys is not None and now < self._keys[0] and \
                (not fresh or now - (self._keys[0] - JWKS_CACHE_TTL) < JWKS_REFETCH_AFTER):
            return self._keys[1]  # D174: a forged key ID makes the front ask the CCF at most once a second
        try:
            keys = await self.ccf.jwks()
        except CCFLinkError as exc:
            log.warning("AEF: the CCF's JWK Set not obtained: %s", exc)
            raise CAPIFError("the CCF cannot be asked now; try again later", status=503) from None
        self._keys = (now + JWKS_CACHE_TTL, keys)
        return keys

    async def _trusted(self, caller: _Caller, *, fresh: bool = False) -> tuple[TrustedInvoker | None, bool]:
        """The invoker's context naming this AEF, and whether it came from a cache."""
        if caller.method == "PSK" and self.resolver is not None and not fresh:
            cached = self.resolver.trusted(caller.invoker_id)
            if cached is not None:
                return cached, True
        now = self.clock()
        hit = self._trust.get(caller.invoker_id)
        if hit is not None and now < hit[0] + self.trust_ttl and (not fresh or now < hit[0] + TRUST_REFETCH_AFTER):
            return hit[1], not fresh
        try:
            trusted = await self.ccf.trusted_invoker(caller.invoker_id)
        except CCFLinkError as exc:
            log.warning("AEF: security context of %r not obtained: %s", caller.invoker_id, exc)
            raise CAPIFError("the CCF cannot be asked now; try again later", status=503) from None
        if trusted is not None:
            self._trust[caller.invoker_id] = (now, trusted)
        else:
            self._trust.pop(caller.invoker_id, None)
        return trusted, False

    async def _forward(self, scope: Message, caller: _Caller, body: bytes
                       ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        host, port = self.backend
        # built per call: the identity headers are this call's (the pool shares connections, never headers)
        headers = [(k, v) for k, v in scope["headers"]
                   if k.decode("latin-1").lower().replace("_", "-") not in FORWARD_DROPPED_HEADERS]
        headers = [(b"host", f"{host}:{port}".encode()), *headers,
                   (INVOKER_ID_HEADER.encode(), caller.invoker_id.encode("latin-1")),
                   (METHOD_HEADER.encode(), caller.method.encode())]
        target = scope["raw_path"].decode("latin-1") or "/"
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        try:
            async with asyncio.timeout(self.backend_timeout):
                status, answer_headers, answer = await self.pool.request(scope["method"], target, headers, body)
        except (TimeoutError, BackendFailed) as exc:
            reason = exc.reason if isinstance(exc, BackendFailed) else "timeout"
            log.warning("AEF: the backend %s:%d failed: %s", host, port, reason)
            raise CAPIFError("the API's backend did not answer", status=502) from None
        self.forwarded += 1
        out = [(k.lower(), v) for k, v in answer_headers if k.lower().decode("latin-1") not in _RESPONSE_DROPPED]
        out.append((b"content-length", str(len(answer)).encode()))
        return status, out, answer


def _ambiguous_path(path: str, raw: bytes) -> bool:
    """D174, D183: a path a backend could resolve to another resource than the one the front authorized (RFC 3986
    §5.2.4 dot segments, raw or percent-encoded, also with RFC 3986 §3.3 ``;parameters`` a servlet container strips;
    an empty segment, which slash-merging backends drop; an encoded slash; a backslash)."""
    segments = [seg.split(";", 1)[0] for seg in path.split("/")[1:]]
    lowered = raw.lower()
    return any(seg in ("", ".", "..") for seg in segments[:-1]) or segments[-1:] in (["."], [".."]) \
        or "\\" in path or b"%2f" in lowered or b"%5c" in lowered or b"\\" in raw


def _longest(apis: Sequence[ServedAPI], path: str, *, folded: bool = False) -> ServedAPI | None:
    """The API whose prefix is the longest matching ``path`` (prefixes lower-cased when ``folded``)."""
    candidates = [a for a in apis if (a.serves_folded(path) if folded else a.serves(path))]
    return max(candidates, key=lambda a: len(a.prefix), default=None)


def _bearer(scope: Message) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            kind, _, token = bytes(value).decode("latin-1").partition(" ")
            if kind.lower() == "bearer" and token.strip():
                return str(token.strip())
    return None


async def _read_body(receive: Receive) -> bytes:
    parts: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise CAPIFError("the client left", status=400)
        parts.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(parts)


def _problem(exc: CAPIFError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """TS 29.122 ProblemDetails of a refusal (never a key or a token: ``detail`` is written for the client)."""
    problem: dict[str, Any] = {"title": _TITLES.get(exc.status, "Error"), "status": exc.status, "detail": exc.detail}
    if exc.cause:
        problem["cause"] = exc.cause
    body = json.dumps(problem).encode()
    headers = [(b"content-type", b"application/problem+json"), (b"content-length", str(len(body)).encode())]
    if exc.status == 401:
        error = exc.bearer_error if isinstance(exc, TokenRefused) else "invalid_token"
        headers.append((b"www-authenticate", f'Bearer error="{error}"'.encode()))
    return exc.status, headers, body


_TITLES: Final = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
                  502: "Bad Gateway", 503: "Service Unavailable"}
