"""The CCF's token endpoint (TS 29.222 ``POST /capif-security/v1/securities/{securityId}/token``; TS 33.122 §6.5.2.3,
Annex C) and the JWK Set AEFs verify its tokens with (D132).

The client is the API invoker of the CAPIF-1e certificate (RFC 6749 §4.4 ``client_credentials``; TS 33.122 C.3.1 NOTE
2: the authenticated TLS session is the client authentication, no ``client_secret`` is issued or read). The
``securityId`` is the invoker's ID (the file: "Identifier of an individual API invoker"); ``client_id`` must be that
same ID. The scope must be covered by the invoker's security context with OAUTH selected (D132); without one, the
token is for every service API of every OAUTH entry. Refusals are ``AccessTokenErr`` bodies (400; 401 for
``invalid_client``), but a ``securityId`` of another invoker is a 403 ProblemDetails as everywhere else.
"""

from __future__ import annotations

import secrets
from typing import Any, Final

from m2msec.capif.ccf.http import FORM, CCFRequest, Reply, operation, problem
from m2msec.capif.ccf.security_context import SECURITY_KIND, api_names, context_generation, scope_of
from m2msec.capif.certificates import CAPIFRole
from m2msec.capif.scope import AccessTokenError, parse_scope
from m2msec.capif.security_method import SecurityMethod
from m2msec.capif.tokens import issue_access_token
from m2msec.errors import CAPIFError

__all__ = ["GRANT_TYPE", "JWKS_MEDIA", "JWKS_PATH", "NOT_OAUTH_ERROR"]

API: Final = "capif-security"
#: the only grant of the endpoint (TS 29.222 ``AccessTokenReq.grant_type``)
GRANT_TYPE: Final = "client_credentials"
#: docs/decisions.md D132: the AccessTokenErr of a request the security context does not allow OAUTH for (no context,
#: no OAUTH entry, or a scope naming an API of an entry with another method); a scope naming an AEF or API the context
#: does not name at all is ``invalid_scope``
NOT_OAUTH_ERROR: Final = "unauthorized_client"
#: docs/decisions.md D132: where the CCF publishes its token verification keys (``/capif-security/v1`` + this); not a
#: 3GPP resource
JWKS_PATH: Final = "/jwks"
#: RFC 7517 §8.5.1
JWKS_MEDIA: Final = "application/jwk-set+json"
#: RFC 6749 §5.1: a token answer is never cached
_NO_STORE: Final = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _error(exc: AccessTokenError) -> Reply:
    return Reply(exc.status, exc.body(), dict(_NO_STORE))


def _refusal(exc: CAPIFError) -> Reply:
    """A refusal of the framework (the form unreadable: 400) as the file wants it: AccessTokenErr for 400/401,
    ProblemDetails for the rest (403, 413, 415...)."""
    if isinstance(exc, AccessTokenError):
        return _error(exc)
    if exc.status in (400, 401):
        error = "invalid_request" if exc.status == 400 else "invalid_client"
        return _error(AccessTokenError(error, exc.detail))
    return problem(exc.status, exc.detail, exc.cause)


async def _client(request: CCFRequest) -> str:
    """The invoker of the CAPIF-1e certificate (invalid_client without one of an onboarded invoker)."""
    try:
        record = await request.ccf.authenticate(request.caller, CAPIFRole.INVOKER)
    except CAPIFError:
        raise AccessTokenError("invalid_client", "the client is authenticated by its API invoker certificate "
                               "(CAPIF-1e mutual TLS)") from None
    return record.record_id


def _granted(entries: list[dict[str, Any]], scope_text: str | None) -> str:
    """D132: the scope to issue: ``scope_text`` if the context covers it with OAUTH, else AccessTokenError."""
    oauth = [e for e in entries if e.get("sel") == SecurityMethod.OAUTH.value]
    if not oauth:
        raise AccessTokenError(NOT_OAUTH_ERROR, "the security context selects OAUTH for no AEF")
    if scope_text is None:
        everything = scope_of(oauth)
        if everything is None:
            raise AccessTokenError(NOT_OAUTH_ERROR, "the OAUTH entries of the security context name no API")
        return everything
    scope = parse_scope(scope_text)
    for aef, apis in scope.grants:
        known = {n for e in entries if e["aefId"] == aef for n in api_names(e)}
        allowed = {n for e in oauth if e["aefId"] == aef for n in api_names(e)}
        outside = [api for api in apis if api not in known]
        if outside:
            raise AccessTokenError("invalid_scope", f"the security context does not name {outside[0]} at {aef}")
        if any(api not in allowed for api in apis):
            raise AccessTokenError(NOT_OAUTH_ERROR, f"the security context does not select OAUTH at {aef}")
    return str(scope)


@operation(API, "POST", "/securities/{securityId}/token", media=FORM, render_error=_refusal)
async def token(request: CCFRequest) -> Reply:
    ccf, form = request.ccf, request.body
    invoker_id = await _client(request)
    if not secrets.compare_digest(request.params["securityId"].encode(), invoker_id.encode()):
        raise CAPIFError("an API invoker obtains tokens only under its own securityId", status=403)
    grant = form.get("grant_type")
    if not grant:
        raise AccessTokenError("invalid_request", "grant_type is required")
    if grant != GRANT_TYPE:
        raise AccessTokenError("unsupported_grant_type", f"the only grant is {GRANT_TYPE}")
    client_id = form.get("client_id")
    if not client_id:
        raise AccessTokenError("invalid_request", "client_id is required")
    if not secrets.compare_digest(client_id.encode(), invoker_id.encode()):
        raise AccessTokenError("invalid_client", "client_id is not the API invoker of the certificate")
    if "resOwnerId" in form or "authCode" in form:
        raise AccessTokenError("invalid_request", "resource owner and authorization code grants are not served")
    doc = await ccf.store.get_document(SECURITY_KIND, invoker_id)
    if doc is None:
        raise AccessTokenError(NOT_OAUTH_ERROR, "the API invoker has no security context")
    scope = _granted(doc.body.get("entries", []), form.get("scope"))
    answer = issue_access_token(ccf.token_key, issuer=ccf.policy.issuer, client_id=invoker_id, scope=scope,
                                now=int(ccf.clock()), jti=ccf.new_id(),
                                lifetime=ccf.policy.access_token_lifetime, context=context_generation(doc))
    return Reply(200, answer, dict(_NO_STORE))


@operation(API, "GET", JWKS_PATH, media=None, official=False)
async def jwks(request: CCFRequest) -> Reply:
    """D132: the public keys of the CCF's access tokens, to anyone reaching the CCF over its TLS."""
    return Reply(200, request.ccf.verification_keys.jwks(), {"Cache-Control": "max-age=300"}, JWKS_MEDIA)
