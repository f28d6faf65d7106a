"""The CCF's operations as routes of one ASGI application (Starlette), with the official contract enforced.

An API module declares each operation of its official file with :func:`operation`, under the name the file gives it
(``"POST /onboardedInvokers"``), and writes a handler ``async (CCFRequest) -> Reply``. Before the handler runs:

- the request must have come over m2msec TLS (the ``m2msec.tls`` scope extension), else 403;
- the caller is read from the client certificate (:class:`~m2msec.capif.ccf.context.Caller`); its record is checked
  by the handler (:meth:`CCF.authenticate <m2msec.capif.ccf.context.CCF.authenticate>`), which knows the roles;
- a body is at most :data:`MAX_BODY` bytes, of the operation's media type, strict JSON (no repeated member, no NaN),
  and valid against the operation's schema in the official file (:mod:`m2msec.capif.schema`); query parameters are
  at most one of each name.

Every refusal is a TS 29.122 ``ProblemDetails`` (``application/problem+json``: title, status, detail, cause,
invalidParams), never a traceback or a key. With ``validate_responses`` (the tests set it), every answer is also
checked against the official file and a violation becomes a 500, so that no test passes over a non-conforming body.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from m2msec.asgi.scope import EXTENSION, TLSExtension
from m2msec.capif.ccf.body import (
    ANONYMOUS_MAX_BODY,
    FORM,
    INVALID_MSG_FORMAT,
    JSON,
    MAX_BODY,
    MERGE_PATCH,
    ClientGone,
    read_body,
)
from m2msec.capif.ccf.context import CCF, Caller, ConcurrentChange
from m2msec.capif.schema import SchemaViolation, validate_request, validate_response
from m2msec.errors import CAPIFError, Conflict, NotFound, StorageError

__all__ = ["FORM", "INVALID_MSG_FORMAT", "JSON", "MAX_BODY", "MERGE_PATCH", "OPERATIONS", "PROBLEM", "CCFRequest",
           "Operation", "Reply", "create_app", "load_modules", "operation", "problem"]

log = logging.getLogger("m2msec.ccf")

PROBLEM: Final = "application/problem+json"
#: D143: request bodies are checked against the official schemas in worker threads, this many at once (a large
#: body takes the validator a while: the event loop, and every other client, must not wait for it)
VALIDATION_THREADS: Final = 2
_TITLES: Final = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
                  405: "Method Not Allowed", 409: "Conflict", 411: "Length Required", 413: "Payload Too Large",
                  415: "Unsupported Media Type", 500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass(frozen=True)
class Reply:
    """A handler's answer: ``body`` is JSON-able (or None), ``headers`` e.g. Location."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = JSON


def problem(status: int, detail: str, cause: str | None = None,
            invalid_params: Iterable[tuple[str, str]] = ()) -> Reply:
    """A TS 29.122 ProblemDetails answer."""
    body: dict[str, Any] = {"title": _TITLES.get(status, "Error"), "status": status, "detail": detail}
    if cause:
        body["cause"] = cause
    params = [{"param": p, "reason": r} for p, r in invalid_params]
    if params:
        body["invalidParams"] = params
    return Reply(status, body, content_type=PROBLEM)


@dataclass
class CCFRequest:
    """What a handler gets: the CCF, the caller, the path parameters, the query, the validated body."""

    ccf: CCF
    caller: Caller
    params: dict[str, str]
    query: dict[str, str]
    body: Any = field(repr=False)
    #: the request's headers (lower-case names; a repeated header's values joined by ", ")
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    def header(self, name: str) -> str | None:
        """The one value of header ``name``; a repeated header is refused (400), never read once and used twice."""
        values = self._raw_headers.get(name.lower(), [])
        if len(values) > 1:
            raise CAPIFError(f"header {name} is repeated", status=400, cause=INVALID_MSG_FORMAT)
        return values[0] if values else None

    _raw_headers: dict[str, list[str]] = field(default_factory=dict, repr=False)
    #: what the operation's ``precheck`` returned (run before the body was read)
    checked: Any = field(default=None, repr=False)

    @property
    def tls(self) -> TLSExtension:
        return self.caller.tls


Handler = Callable[[CCFRequest], Awaitable[Reply]]


@dataclass(frozen=True)
class Operation:
    api: str
    method: str
    path: str
    handler: Handler
    media: str | None
    #: False for a resource of m2msec's own, not in the API's official file: its answers are not schema-checked
    official: bool = True
    #: how a refusal is answered (None: ProblemDetails); the token endpoint's are AccessTokenErr bodies
    render_error: Callable[[CAPIFError], Reply] | None = None
    #: run before the body is read (the body is then None): refuse early and cheaply, e.g. a bad credential
    precheck: Callable[[CCFRequest], Awaitable[Any]] | None = None

    @property
    def name(self) -> str:
        """The operation's name in :mod:`m2msec.capif.schema` (``"<METHOD> <path>"``)."""
        return f"{self.method} {self.path}"

    @property
    def route(self) -> str:
        return f"/{self.api}/v1{self.path}"


#: every operation the API modules declared (filled at their import)
OPERATIONS: list[Operation] = []


def operation(api: str, method: str, path: str, *, media: str | None = JSON, official: bool = True,
              render_error: Callable[[CAPIFError], Reply] | None = None,
              precheck: Callable[[CCFRequest], Awaitable[Any]] | None = None) -> Callable[[Handler], Handler]:
    """Declare ``handler`` as ``method path`` of ``api`` (the official file's path template); ``media`` is the
    request body's media type (None: no body; ``application/merge-patch+json`` for PATCH). ``official=False``: a
    non-3GPP resource under the API's root (documented as such), without a body schema to check.
    ``render_error``: the answer to a CAPIFError of this operation (also of its body's parsing) instead of
    ProblemDetails. ``precheck``: run before the body is read (its result is ``request.checked``)."""

    def register(handler: Handler) -> Handler:
        OPERATIONS.append(Operation(api, method.upper(), path, handler, media, official, render_error, precheck))
        return handler

    return register


def _query(request: Request) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key in out:
            raise CAPIFError(f"query parameter {key[:64]!r} is repeated", status=400, cause=INVALID_MSG_FORMAT)
        out[key] = value
    return out


def _render(reply: Reply) -> Response:
    headers = dict(reply.headers)
    if reply.status == 401 and "WWW-Authenticate" not in headers:  # RFC 9110 §15.5.2
        headers["WWW-Authenticate"] = 'Bearer realm="CAPIF"'
    if reply.body is None:
        return Response(status_code=reply.status, headers=headers)
    try:
        body = json.dumps(reply.body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    except (ValueError, TypeError, RecursionError) as exc:  # never a half-written or non-JSON answer
        log.error("an answer could not be written as JSON: %s", type(exc).__name__)
        return _render(problem(500, "the CCF failed to answer this request"))
    return Response(body, status_code=reply.status, headers=headers, media_type=reply.content_type)


def _handle(ccf: CCF, op: Operation, validate_responses: bool,
            limit: asyncio.Semaphore) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        reply = await _answer(ccf, op, request, limit)
        if validate_responses and op.official:
            try:
                validate_response(op.api, op.name, reply.status, reply.body, reply.content_type)
            except Exception as exc:  # the tests' guard: a non-conforming answer must not pass as a good one
                # where, not the offending value (it could be anything the answer held); the message at DEBUG
                where = ": ".join(str(exc).split(": ")[:2])
                log.error("response breaks the official schema: %s", where)
                log.debug("response schema violation: %s", exc)
                reply = problem(500, f"the CCF's answer broke the official schema: {where}")
        return _render(reply)

    return endpoint


def _headers(request: Request) -> tuple[dict[str, str], dict[str, list[str]]]:
    raw: dict[str, list[str]] = {}
    for key, value in request.headers.items():
        raw.setdefault(key.lower(), []).append(value)
    return {k: ", ".join(v) for k, v in raw.items()}, raw


async def _validate(op: Operation, body: Any, limit: asyncio.Semaphore) -> Reply | None:
    async with limit:
        try:
            await asyncio.to_thread(validate_request, op.api, op.name, body, op.media)
        except SchemaViolation as exc:
            where, _, reason = str(exc).partition(": ")[2].partition(": ")
            return problem(400, f"the body breaks the {op.api} schema: {where}: {reason}"[:512],
                           INVALID_MSG_FORMAT, [(where, reason[:256])])
    return None


async def _answer(ccf: CCF, op: Operation, request: Request, limit: asyncio.Semaphore) -> Reply:
    try:
        tls = (request.scope.get("extensions") or {}).get(EXTENSION)
        if not isinstance(tls, TLSExtension):
            return problem(403, "requests reach the CCF only over its TLS")
        caller = Caller.of(tls)
        headers, raw = _headers(request)
        req = CCFRequest(ccf, caller, dict(request.path_params), _query(request), None, headers, raw)
        if op.precheck is not None:
            req.checked = await op.precheck(req)
        elif caller.certificate is None and op.media is not None:
            # D143: a body is read only from a client that may send it: with a certificate, or an onboarding
            # credential (the precheck above); no parsing or schema work for anyone else
            raise CAPIFError("this operation needs the client certificate the CCF issued", status=401)
        req.body = await read_body(request, op.media,
                                   limit=MAX_BODY if caller.certificate is not None else ANONYMOUS_MAX_BODY)
        if op.media not in (None, FORM):
            refused = await _validate(op, req.body, limit)
            if refused is not None:
                return refused
        return await op.handler(req)
    except CAPIFError as exc:
        if op.render_error is not None:
            return op.render_error(exc)
        reply = problem(exc.status, exc.detail, exc.cause)
        if isinstance(exc, ConcurrentChange):
            reply.headers["Retry-After"] = "1"
        bearer = getattr(exc, "bearer_error", None)
        if exc.status == 401 and bearer:
            reply.headers["WWW-Authenticate"] = f'Bearer realm="CAPIF", error="{bearer}"'
        return reply
    except ClientGone:
        log.debug("client left in the middle of its request (%s)", op.name)
        return problem(400, "the request body was not complete")
    except NotFound:  # the record went away while the request was served (e.g. offboarded meanwhile)
        return problem(404, "the resource no longer exists")
    except Conflict:
        reply = problem(ConcurrentChange.status, "the resource changed while this request was served; read it again "
                        "and retry", ConcurrentChange.cause)
        reply.headers["Retry-After"] = "1"
        return reply
    except StorageError as exc:
        log.error("key store error in %s: %s", op.name, type(exc).__name__)
        return problem(503, "the key store cannot be used now; retry later")
    except Exception as exc:  # never a traceback to the client; the type only in the log (no key material)
        log.error("unexpected %s answering %s", type(exc).__name__, op.name)
        return problem(500, "the CCF failed to answer this request")


async def _not_found(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    detail = "no such method for this resource" if status == 405 else "no such resource at this CCF"
    reply = problem(status, detail)
    reply.headers.update(getattr(exc, "headers", None) or {})  # 405: Allow
    return _render(reply)


def load_modules() -> None:
    """Import every API module: their operations, and the hooks they register with one another."""
    from m2msec.capif.ccf import discover, events, invokers, providers, publish, security  # noqa: F401


def create_app(ccf: CCF, *, validate_responses: bool = False) -> Starlette:
    """The CCF's ASGI application (serve it with :func:`m2msec.asgi.serve`)."""
    load_modules()

    routes: dict[str, list[Operation]] = {}
    for op in OPERATIONS:
        routes.setdefault(op.route, []).append(op)
    limit = asyncio.Semaphore(VALIDATION_THREADS)
    table = []
    for path, ops in routes.items():
        for op in ops:
            table.append(Route(path, _handle(ccf, op, validate_responses, limit), methods=[op.method],
                               name=f"{op.api} {op.name}"))
    from starlette.exceptions import HTTPException

    app = Starlette(routes=table, exception_handlers={HTTPException: _not_found})
    app.router.redirect_slashes = False  # never a redirect built from the client's Host header
    return app
