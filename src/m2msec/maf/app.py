"""The MAF as an ASGI application (FastAPI): docs/maf.md's resources over :mod:`m2msec.maf.procedures`.

It must be served over m2msec's TLS (:mod:`m2msec.asgi`): the requester's identity and the exporter of the MAF
Handshake come from the ``m2msec.tls`` scope extension, never from the request. Without that extension every
request is refused (403 ``unidentified-client``). Every refusal is RFC 9457 problem+json; bodies larger than
:data:`~m2msec.maf.wire.MAX_BODY` or not JSON are refused before they are read or stored.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from m2msec.errors import IdentifierError, StorageError
from m2msec.keys.secret import SecretKey
from m2msec.maf import wire
from m2msec.maf.enrolment import KEID_SESSION_PROBLEM
from m2msec.maf.procedures import (
    EXPORTER_CONNECTION_LABEL,
    EXPORTER_CONNECTION_LENGTH,
    MAF,
    Requester,
    canonical_kmid,
)
from m2msec.maf.wire import API_PREFIX, MAX_BODY, MAFProblem
from m2msec.service_app import (  # noqa: F401  (ASGI types re-exported for their earlier importers)
    PROBLEM_JSON,
    ASGIApp,
    JSONBodyGuard,
    Message,
    Receive,
    Scope,
    Send,
    send_problem,
)

__all__ = ["TLS_EXTENSION", "create_app", "identify"]

log = logging.getLogger("m2msec.maf")

#: The ASGI scope extension :mod:`m2msec.asgi` fills with the connection's TLS session and exporter
TLS_EXTENSION = "m2msec.tls"
_TITLES = {400: "Bad Request", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed", 409: "Conflict",
           410: "Gone", 413: "Content Too Large", 415: "Unsupported Media Type", 500: "Internal Server Error",
           503: "Service Unavailable"}

def problem_body(status: int, name: str, detail: str | None) -> bytes:
    body: dict[str, Any] = {"type": wire.PROBLEM_TYPE_PREFIX + name, "title": _TITLES.get(status, "Error"),
                            "status": status}
    if detail:
        body["detail"] = detail
    return json.dumps(body).encode()


def problem(status: int, name: str, detail: str | None = None) -> Response:
    return Response(problem_body(status, name, detail), status_code=status, media_type=PROBLEM_JSON)


class BodyGuard(JSONBodyGuard):
    """ASGI middleware: a request body must be JSON and at most ``max_body`` bytes, checked before the
    application reads it (413 / 415 problem+json; a chunked body that grows past the cap is cut off)."""

    def __init__(self, app: ASGIApp, max_body: int = MAX_BODY) -> None:
        super().__init__(app, max_body)

    async def refuse(self, send: Send, name: str) -> None:
        if name == "body-too-large":
            await send_problem(send, 413, problem_body(413, name, f"the largest request body is {self.max_body} "
                                                                  "bytes"))
        else:
            await send_problem(send, 415, problem_body(415, name, "request bodies are application/json"))

    def too_large(self) -> Exception:
        return MAFProblem(413, "body-too-large", f"the largest request body is {self.max_body} bytes")


def _extension(request: Request) -> Any:
    ext = request.scope.get("extensions", {}).get(TLS_EXTENSION)
    if ext is None or getattr(ext, "session", None) is None:
        raise MAFProblem(403, "unidentified-client", "requests reach the MAF only over a MAF Handshake")
    return ext


async def _enrolee(maf: MAF, identity: str, keid_allowed: bool) -> Requester | None:
    """The requester of a KeID session (docs/maf.md "Enrolees of a MEF"), None if ``identity`` is no KeID of the
    configured MEF. Only Client Registration may run on one: anything else is 403 ``kmid-required`` (D205)."""
    remote = maf.remote
    keid = remote.keid(identity) if remote is not None else None
    if remote is None or keid is None:
        return None
    if not keid_allowed:
        raise MAFProblem(403, KEID_SESSION_PROBLEM, "a KeID session may only run Client Registration; use the "
                         "assignedSymmKeyID it answers as the KmID of later MAF Handshakes")
    fetched = remote.cached(keid) or await remote.get(keid)
    if fetched is None:
        raise MAFProblem(403, "client-revoked", "this MAF client's credential is no longer valid")
    return Requester(wire.absolute_id(fetched.enrolee_id, maf.policy.sp_id), fetched=fetched, keid=keid)


async def identify(request: Request, maf: MAF, *, keid_allowed: bool = False) -> Requester:
    """The requester, from the MAF Handshake of this request's connection only (docs/maf.md "Transport")."""
    session = _extension(request).session
    if session.psk_identity is not None:
        enrolee = await _enrolee(maf, session.psk_identity, keid_allowed)
        if enrolee is not None:
            return enrolee
        try:
            kmid = canonical_kmid(session.psk_identity)
        except IdentifierError:
            raise MAFProblem(403, "client-revoked", "this MAF client's credential is no longer valid") from None
        return await maf.requester_of_kmid(kmid)
    from m2msec.gateway.rules import associate

    sa = associate(session, None, None, maf.policy.sp_id)
    if sa.associated is not None:
        return Requester(wire.absolute_id(sa.associated, maf.policy.sp_id))
    if sa.credential_id is not None:
        return Requester(sa.credential_id)
    raise MAFProblem(403, "unidentified-client", "the client certificate names no AE-ID, CSE-ID or Node-ID")


def create_app(maf: MAF, *, max_body: int = MAX_BODY) -> ASGIApp:
    """The MAF's ASGI application (wrap it in nothing that reads bodies before :class:`BodyGuard`)."""
    app = FastAPI(title="m2msec MAF (oneM2M TS-0003 §8.8)", version="1", openapi_url=f"{API_PREFIX}/openapi.json",
                  docs_url=None, redoc_url=None)

    @app.exception_handler(MAFProblem)
    async def _problem(_: Request, exc: MAFProblem) -> Response:
        return problem(exc.status, exc.name, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        # pydantic's message only, never the offending input (it may hold a key value)
        return problem(400, "bad-request", f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            return problem(405, "method-not-allowed", None)
        return problem(exc.status_code, "not-found" if exc.status_code == 404 else "bad-request", None)

    @app.exception_handler(StorageError)
    async def _storage(_: Request, exc: StorageError) -> Response:
        log.error("key store error: %s", type(exc).__name__)
        return problem(503, "storage-unavailable", "the key store cannot be used now; retry later")

    def _export(request: Request) -> Callable[[], SecretKey]:
        def export() -> SecretKey:
            key: SecretKey = _extension(request).export_keying_material(EXPORTER_CONNECTION_LABEL,
                                                                        EXPORTER_CONNECTION_LENGTH)
            return key
        return export

    @app.post(f"{API_PREFIX}/registrations", status_code=201, response_model=wire.ClientRegistrationResponse,
              response_model_exclude_none=True)
    async def client_registration(body: wire.ClientRegistrationRequest, request: Request,
                                  response: Response) -> wire.ClientRegistrationResponse:
        out = await maf.register_client(await identify(request, maf, keid_allowed=True), body)
        response.headers["Location"] = f"{API_PREFIX}/registrations/{out.mafClientRegID}"
        return out

    @app.get(f"{API_PREFIX}/registrations/{{reg_id}}", response_model=wire.ClientConfigResponse,
              response_model_exclude_none=True)
    async def client_configuration(reg_id: str, request: Request,
                                   maf_fqdn: str = Query(alias="mafFQDN")) -> wire.ClientConfigResponse:
        return await maf.client_config(await identify(request, maf), reg_id, maf_fqdn)

    @app.patch(f"{API_PREFIX}/registrations/{{reg_id}}", response_model=wire.RegistrationUpdateResponse,
              response_model_exclude_none=True)
    async def client_registration_update(reg_id: str, body: wire.RegistrationUpdateRequest,
                                         request: Request) -> wire.RegistrationUpdateResponse:
        return await maf.update_registration(await identify(request, maf), reg_id, body)

    @app.delete(f"{API_PREFIX}/registrations/{{reg_id}}", status_code=204)
    async def client_deregistration(reg_id: str, request: Request,
                                    maf_fqdn: str = Query(alias="mafFQDN")) -> Response:
        await maf.deregister_client(await identify(request, maf), reg_id, maf_fqdn)
        return Response(status_code=204)

    @app.post(f"{API_PREFIX}/keys", status_code=201, response_model=wire.KeyRegistrationResponse,
              response_model_exclude_none=True)
    async def key_registration(body: wire.KeyRegistrationRequest, request: Request,
                               response: Response) -> wire.KeyRegistrationResponse:
        out = await maf.register_key(await identify(request, maf), body, _export(request))
        response.headers["Location"] = f"{API_PREFIX}/keys/{out.relativeKeyID}"
        return out

    @app.get(f"{API_PREFIX}/keys/{{relative_key_id}}", response_model=wire.KeyRetrievalResponse,
              response_model_exclude_none=True)
    async def key_retrieval(relative_key_id: str, request: Request) -> Response:
        out = await maf.retrieve_key(await identify(request, maf), relative_key_id)
        # a key never rests in a cache on the way
        return JSONResponse(out.model_dump(exclude_none=True), headers={"Cache-Control": "no-store"})

    @app.patch(f"{API_PREFIX}/keys/{{relative_key_id}}", response_model=wire.KeyUpdateResponse,
              response_model_exclude_none=True)
    async def key_registration_update(relative_key_id: str, body: wire.KeyUpdateRequest,
                                      request: Request) -> wire.KeyUpdateResponse:
        return await maf.update_key(await identify(request, maf), relative_key_id, body)

    @app.delete(f"{API_PREFIX}/keys/{{relative_key_id}}", status_code=204)
    async def key_deregistration(relative_key_id: str, request: Request,
                                 maf_fqdn: str = Query(alias="mafFQDN")) -> Response:
        await maf.deregister_key(await identify(request, maf), relative_key_id, maf_fqdn)
        return Response(status_code=204)

    return BodyGuard(app, max_body)
