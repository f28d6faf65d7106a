"""The MEF as an ASGI application (FastAPI): docs/mef.md's resources over :mod:`m2msec.mef.procedures`.

Served over m2msec's TLS (:mod:`m2msec.asgi`): the requester's identity and the exporter of the MEF Handshake
come from the ``m2msec.tls`` scope extension, never from the request (an ``X-M2M-Origin`` that differs from the
handshake's identity is refused). Every refusal is problem+json ``urn:m2msec:mef:<name>`` with ``status: false``
and ``errorString`` (TS-0003 §8.3.2.1's failure answer); bodies are capped at 64 KiB.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from m2msec.errors import IdentifierError, StorageError
from m2msec.keys.secret import SecretKey
from m2msec.maf.app import TLS_EXTENSION
from m2msec.maf.wire import MAFProblem
from m2msec.mef import kdf, wire
from m2msec.mef.procedures import MEF, Credential
from m2msec.mef.wire import API_PREFIX, MAX_BODY, PROBLEMS, MEFProblem
from m2msec.service_app import PROBLEM_JSON, ASGIApp, JSONBodyGuard, Send, send_problem

__all__ = ["create_app", "identify", "problem"]

log = logging.getLogger("m2msec.mef")


def problem_body(name: str, detail: str | None = None, status: int | None = None) -> bytes:
    """RFC 9457 problem+json; ``status`` is the HTTP status (RFC 9457), so §8.3.2.1's ``Status: False`` is the
    refusal itself and ``errorString`` carries its reason (the problem name)."""
    body: dict[str, Any] = {"type": wire.PROBLEM_TYPE_PREFIX + name, "title": PROBLEMS.get(name, (0, name))[1],
                            "status": status or PROBLEMS[name][0], "errorString": name}
    if detail:
        body["detail"] = detail
    return json.dumps(body).encode()


def server_problem(status: int) -> tuple[str, bytes]:
    """The problem+json of a refusal ``m2msec.asgi`` makes itself (``serve(error_body=...)``): 400, 408, 413, 431."""
    name = {408: "request-timeout", 413: "body-too-large", 431: "header-too-large"}.get(status, "bad-request")
    return PROBLEM_JSON, problem_body(name, status=status)


def problem(name: str, detail: str | None = None, status: int | None = None) -> Response:
    return Response(problem_body(name, detail, status), status_code=status or PROBLEMS[name][0],
                    media_type=PROBLEM_JSON)


class _BodyGuard(JSONBodyGuard):
    """A request body must be JSON and at most ``max_body`` bytes, checked before the app reads it (the MAF's
    :class:`~m2msec.maf.app.BodyGuard` rule, answered with the MEF's problem types)."""

    async def refuse(self, send: Send, name: str) -> None:
        await send_problem(send, PROBLEMS[name][0], problem_body(name, PROBLEMS[name][1]))

    def too_large(self) -> Exception:
        return MEFProblem("body-too-large", PROBLEMS["body-too-large"][1])


def _session(request: Request) -> Any:
    ext = request.scope.get("extensions", {}).get(TLS_EXTENSION)
    if ext is None or getattr(ext, "session", None) is None:
        raise MEFProblem("unidentified-client", "requests reach the MEF only over a MEF Handshake")
    return ext


def identify(request: Request, sp_id: str) -> tuple[str, Credential]:
    """The requester's identity and how it authenticated, from the MEF Handshake only (docs/mef.md)."""
    session = _session(request).session
    if session.psk_identity is not None:
        identity, credential = str(session.psk_identity), "psk"
    else:
        identity, credential = _certificate_identity(session, sp_id), "certificate"
    origins = request.headers.getlist("x-m2m-origin")  # every copy: a repeated header is never checked once
    if origins and (len(origins) != 1 or not hmac.compare_digest(origins[0].encode(), identity.encode())):
        raise MEFProblem("originator-mismatch", "X-M2M-Origin is not (exactly once) the identity of this MEF "
                         "Handshake")
    return identity, credential  # type: ignore[return-value]


def _certificate_identity(session: Any, sp_id: str) -> str:
    from m2msec.gateway.rules import associate
    from m2msec.maf.wire import absolute_id
    from m2msec.pki import CertificateFlavour, identity_from_certificate

    if session.peer_certificate is None:
        raise MEFProblem("unidentified-client", "the MEF Handshake authenticated no identity")
    try:
        ident = identity_from_certificate(session.peer_certificate)
    except IdentifierError:
        ident = None
    if ident is not None and ident.flavour is CertificateFlavour.FQDN:
        return ident.value.lower()  # an Enrolment Target (a MAF, a CSE by its FQDN)
    sa = associate(session, None, None, sp_id)
    try:
        if sa.associated is not None:
            return absolute_id(sa.associated, sp_id)
    except MAFProblem:
        pass
    if sa.credential_id is not None:
        return str(sa.credential_id)
    raise MEFProblem("unidentified-client", "the client certificate names no identity")


def create_app(mef: MEF, *, sp_id: str, max_body: int = MAX_BODY) -> ASGIApp:
    """The MEF's ASGI application."""
    app = FastAPI(title="m2msec MEF (oneM2M TS-0003 §8.3)", version="1", openapi_url=None, docs_url=None,
                  redoc_url=None)

    @app.exception_handler(MEFProblem)
    async def _problem(_: Request, exc: MEFProblem) -> Response:
        return problem(exc.name, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        return problem("bad-request", f"{where}: {first.get('msg', 'invalid')}")  # never the offending input

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            return problem("method-not-allowed")
        return problem("not-found" if exc.status_code == 404 else "bad-request", None, exc.status_code)

    @app.exception_handler(StorageError)
    async def _storage(_: Request, exc: StorageError) -> Response:
        log.error("key store error: %s", type(exc).__name__)
        return problem("storage-unavailable", "the key store cannot be used now; retry later")

    def _export(request: Request) -> Callable[[], SecretKey]:
        def export() -> SecretKey:
            key: SecretKey = _session(request).export_keying_material(kdf.EXPORTER_BOOTSTRAP_LABEL,
                                                                       kdf.BOOTSTRAP_EXPORT_LENGTH)
            return key
        return export

    @app.post(f"{API_PREFIX}/enrolment", status_code=201, response_model=wire.EnrolmentResponse,
              response_model_exclude_none=True)
    async def enrolment(body: wire.EnrolmentRequest, request: Request) -> wire.EnrolmentResponse:
        identity, credential = identify(request, sp_id)
        return await mef.enrol(identity, credential, body, _export(request))

    @app.post(f"{API_PREFIX}/enrolment/done", status_code=204)
    async def enrolment_done(request: Request) -> Response:
        identify(request, sp_id)
        # §8.3.2.1 step 5: the end of the Enrolment Exchange; the MEF closes the MEF Handshake's connection
        return Response(status_code=204, headers={"Connection": "close"})

    @app.get(f"{API_PREFIX}/fetchCredentials/{{keid}}/{{suid}}", response_model=wire.FetchResponse)
    async def fetch_credentials(keid: str, suid: str, request: Request) -> Response:
        identity, credential = identify(request, sp_id)
        fetched = await mef.fetch(identity, credential, keid, suid)
        out = mef.fetch_response(fetched)
        return JSONResponse(out.model_dump(), headers={"Cache-Control": "no-store"})

    return _BodyGuard(app, max_body)
