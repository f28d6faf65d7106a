"""Reading a CCF request body: media type, size, strict JSON or a form (docs/ccf.md "Errors").

JSON is read strictly: UTF-8, no repeated member at any depth, no NaN/Infinity (also not by overflow: ``1e999``),
no lone surrogate (it could not be written back as UTF-8), at most :data:`MAX_DEPTH` levels of nesting. A client
without a certificate (onboarding, registration) may send at most :data:`ANONYMOUS_MAX_BODY` bytes.
"""

from __future__ import annotations

import json
import math
import urllib.parse
from typing import Any, Final

from starlette.requests import ClientDisconnect, Request

from m2msec.errors import CAPIFError

__all__ = ["ANONYMOUS_MAX_BODY", "FORM", "INVALID_MSG_FORMAT", "JSON", "MAX_BODY", "MAX_DEPTH", "MERGE_PATCH",
           "ClientGone", "parse_form", "parse_json", "read_body"]

JSON: Final = "application/json"
MERGE_PATCH: Final = "application/merge-patch+json"
FORM: Final = "application/x-www-form-urlencoded"
#: the largest request body the CCF reads from a client with a CCF certificate
MAX_BODY: Final = 256 * 1024
#: D143: the largest body of a client without a certificate (onboarding and
#: registration requests: a CSR is at most 16 KiB, certificates.MAX_CSR_PEM)
ANONYMOUS_MAX_BODY: Final = 64 * 1024
#: D143: the deepest nesting of arrays and objects read (the official schemas nest far less)
MAX_DEPTH: Final = 32
#: ProblemDetails.cause of a body that breaks the official schema or is not JSON (TS 29.500 §5.2.7.2)
INVALID_MSG_FORMAT: Final = "INVALID_MSG_FORMAT"


class ClientGone(Exception):
    """The client went away in the middle of its body (nothing to answer, nothing to log as an error)."""


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
    if not math.isfinite(value):
        raise ValueError("a number overflows")
    return value


def _check(value: Any) -> None:
    """Depth and lone surrogates, iteratively (no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                raise ValueError("a string holds a lone surrogate") from None
        elif isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def parse_json(raw: bytes) -> Any:
    """Strict JSON (module docstring). Raises ValueError (or UnicodeDecodeError, RecursionError)."""
    value = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constant,
                       parse_float=_finite)
    _check(value)
    return value


def parse_form(raw: bytes) -> dict[str, str]:
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


async def read_body(request: Request, media: str | None, *, limit: int) -> Any:
    """The body of ``request`` as ``media`` (None: the operation takes none), at most ``limit`` bytes.
    Raises CAPIFError (413, 415, 400) or ClientGone."""
    if media is None:
        return None
    got = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if got != media:
        raise CAPIFError(f"the request body must be {media}", status=415)
    length = request.headers.get("content-length")
    if length is not None and (not length.isdigit() or int(length) > limit):
        raise CAPIFError(f"the largest request body here is {limit} bytes", status=413)
    raw = bytearray()
    try:
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > limit:
                raise CAPIFError(f"the largest request body here is {limit} bytes", status=413)
    except ClientDisconnect:
        raise ClientGone from None
    if media == FORM:
        return parse_form(bytes(raw))
    try:
        return parse_json(bytes(raw))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        text = str(exc) if isinstance(exc, ValueError) and not isinstance(exc, UnicodeDecodeError) else ""
        known = ("repeated", "overflows", "surrogate", "nested")
        detail = text if any(k in text for k in known) else "not strict JSON"
        raise CAPIFError(f"the request body is {detail}", status=400, cause=INVALID_MSG_FORMAT) from None
