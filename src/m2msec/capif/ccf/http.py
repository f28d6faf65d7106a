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

import json
import logging
import sys
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from m2msec.asgi.scope import EXTENSION, TLSExtension
from m2msec.capif.ccf.context import CCF, Caller
from m2msec.capif.schema import SchemaViolation, validate_request, validate_response
from m2msec.errors import CAPIFError, StorageError

__all__ = ["JSON", "MAX_BODY", "MERGE_PATCH", "OPERATIONS", "PROBLEM", "CCFRequest", "Operation", "Reply",
           "create_app", "operation", "problem"]

log = logging.getLogger("m2msec.ccf")

JSON: Final = "application/json"
MERGE_PATCH: Final = "application/merge-patch+json"
FORM: Final = "application/x-www-form-urlencoded"
PROBLEM: Final = "application/problem+json"
#: the largest request body the CCF reads (a CSR is at most 16 KiB, certificates.MAX_CSR_PEM)
MAX_BODY: Final = 256 * 1024
#: D137: the largest magnitude of a JSON number in a request (RFC 8259 §6: the range of an IEEE 754 double); a
#: larger one (1e999) would pass a schema as infinity and be echoed as ``Infinity``, which is not JSON. Strings must be
#: Unicode text too (RFC 8259 §8.2: no unpaired surrogate escape), or no UTF-8 answer could echo them.
MAX_JSON_NUMBER: Final = sys.float_info.max
#: ProblemDetails.cause of a body that breaks the official schema or is not JSON (TS 29.500 §5.2.7.2)
INVALID_MSG_FORMAT: Final = "INVALID_MSG_FORMAT"
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
    body: Any
    #: the request's headers (lower-case names; a repeated header's values joined by ", ")
    headers: Mapping[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        """The one value of header ``name``; a repeated header is refused (400), never read once and used twice."""
        values = self._raw_headers.get(name.lower(), [])
        if len(values) > 1:
            raise CAPIFError(f"header {name} is repeated", status=400, cause=INVALID_MSG_FORMAT)
        return values[0] if values else None

    _raw_headers: dict[str, list[str]] = field(default_factory=dict, repr=False)

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

    @property
    def name(self) -> str:
        """The operation's name in :mod:`m2msec.capif.schema` (``"<METHOD> <path>"``)."""
        return f"{self.method} {self.path}"

    @property
    def route(self) -> str:
        return f"/{self.api}/v1{self.path}"


#: every operation the API modules declared (filled at their import)
OPERATIONS: list[Operation] = []


def operation(api: str, method: str, path: str, *, media: str | None = JSON) -> Callable[[Handler], Handler]:
    """Declare ``handler`` as ``method path`` of ``api`` (the official file's path template); ``media`` is the
    request body's media type (None: no body; ``application/merge-patch+json`` for PATCH)."""

    def register(handler: Handler) -> Handler:
        OPERATIONS.append(Operation(api, method.upper(), path, handler, media))
        return handler

    return register


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"member {key[:64]!r} is repeated")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not abs(value) <= MAX_JSON_NUMBER:  # 1e999: a double overflows to infinity, which JSON cannot carry back
        raise ValueError("a number is out of the range of a double")
    return value


def _unicode_only(value: Any) -> None:
    """Every string (and member name) must be Unicode text: a lone surrogate escape (``"\\ud800"``) is valid JSON
    syntax but cannot be encoded in UTF-8, so an answer echoing it could not be sent (iterative: no recursion)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            item.encode("utf-8")  # UnicodeEncodeError is a ValueError
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def parse_json(raw: bytes) -> Any:
    """Strict JSON: UTF-8, no repeated member at any depth, no NaN/Infinity (nor a number that overflows to it),
    no lone surrogate in a string. Raises ValueError."""
    value = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant,
                       parse_float=_finite)
    _unicode_only(value)
    return value


def _parse_form(raw: bytes) -> dict[str, str]:
    try:
        pairs = urllib.parse.parse_qsl(raw.decode("ascii"), keep_blank_values=True, strict_parsing=True,
                                       max_num_fields=32)
    except (UnicodeDecodeError, ValueError):
        raise CAPIFError("the body is not application/x-www-form-urlencoded", status=400,
                         cause=INVALID_MSG_FORMAT) from None
    out: dict[str, str] = {}
    for key, value in pairs:
        if key in out:
            raise CAPIFError(f"form parameter {key[:64]!r} is repeated", status=400, cause=INVALID_MSG_FORMAT)
        out[key] = value
    return out


async def _read_body(request: Request, op: Operation) -> Any:
    if op.media is None:
        return None
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != op.media and not (op.media == MERGE_PATCH and media == JSON):
        raise CAPIFError(f"the request body must be {op.media}", status=415)
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > MAX_BODY):
        raise CAPIFError(f"the largest request body is {MAX_BODY} bytes", status=413)
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise CAPIFError(f"the largest request body is {MAX_BODY} bytes", status=413)
    if op.media == FORM:
        return _parse_form(raw)
    try:
        return parse_json(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        detail = str(exc) if isinstance(exc, ValueError) and "repeated" in str(exc) else "not strict JSON"
        raise CAPIFError(f"the request body is {detail}", status=400, cause=INVALID_MSG_FORMAT) from None


def _query(request: Request) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key in out:
            raise CAPIFError(f"query parameter {key[:64]!r} is repeated", status=400, cause=INVALID_MSG_FORMAT)
        out[key] = value
    return out


def _render(reply: Reply) -> Response:
    headers = dict(reply.headers)
    if reply.body is None:
        return Response(status_code=reply.status, headers=headers)
    body = json.dumps(reply.body, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(body, status_code=reply.status, headers=headers, media_type=reply.content_type)


def _handle(ccf: CCF, op: Operation, validate_responses: bool) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        reply = await _answer(ccf, op, request)
        if validate_responses:
            try:
                validate_response(op.api, op.name, reply.status, reply.body, reply.content_type)
            except Exception as exc:  # the tests' guard: a non-conforming answer must not pass as a good one
                log.error("response breaks the official schema: %s", exc)
                reply = problem(500, f"the CCF's answer broke the official schema: {exc}")
        return _render(reply)

    return endpoint


async def _answer(ccf: CCF, op: Operation, request: Request) -> Reply:
    try:
        tls = (request.scope.get("extensions") or {}).get(EXTENSION)
        if not isinstance(tls, TLSExtension):
            return problem(403, "requests reach the CCF only over its TLS")
        caller = Caller.of(tls)
        body = await _read_body(request, op)
        if op.media not in (None, FORM):
            try:
                validate_request(op.api, op.name, body, op.media)
            except SchemaViolation as exc:
                where, _, reason = str(exc).partition(": ")[2].partition(": ")
                return problem(400, f"the body breaks the {op.api} schema: {where}: {reason}"[:512],
                               INVALID_MSG_FORMAT, [(where, reason[:256])])
        query = _query(request)
        raw: dict[str, list[str]] = {}
        for key, value in request.headers.items():
            raw.setdefault(key.lower(), []).append(value)
        headers = {k: ", ".join(v) for k, v in raw.items()}
        return await op.handler(CCFRequest(ccf, caller, dict(request.path_params), query, body, headers, raw))
    except CAPIFError as exc:
        return problem(exc.status, exc.detail, exc.cause)
    except StorageError as exc:
        log.error("key store error in %s: %s", op.name, type(exc).__name__)
        return problem(503, "the key store cannot be used now; retry later")
    except Exception as exc:  # never a traceback to the client; the type only in the log (no key material)
        log.error("unexpected %s answering %s", type(exc).__name__, op.name)
        return problem(500, "the CCF failed to answer this request")


async def _not_found(request: Request, exc: Exception) -> Response:
    status = getattr(exc, "status_code", 404)
    detail = "no such method for this resource" if status == 405 else "no such resource at this CCF"
    return _render(problem(status, detail))


def create_app(ccf: CCF, *, validate_responses: bool = False) -> Starlette:
    """The CCF's ASGI application (serve it with :func:`m2msec.asgi.serve`)."""
    from m2msec.capif.ccf import discover, events, invokers, providers, publish, security  # noqa: F401

    routes: dict[str, list[Operation]] = {}
    for op in OPERATIONS:
        routes.setdefault(op.route, []).append(op)
    table = []
    for path, ops in routes.items():
        for op in ops:
            table.append(Route(path, _handle(ccf, op, validate_responses), methods=[op.method],
                               name=f"{op.api} {op.name}"))
    from starlette.exceptions import HTTPException

    return Starlette(routes=table, exception_handlers={HTTPException: _not_found})
