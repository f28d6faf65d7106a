"""Validate CAPIF request/response bodies against the official TS 29.222 schemas (docs/capif.md).

Built from the bundles (``capif/bundled/*.json``, made from the official files by :mod:`m2msec.capif.openapi`), **not
from our generated models**: a test of the CCF that validates what the CCF sends and accepts with this module checks the
CCF against 3GPP's text, not against our reading of it. The validation is OpenAPI 3.0 semantics
(``openapi-schema-validator``: ``nullable``, ``writeOnly`` refused in responses, formats; ``readOnly`` is not
enforced in requests: :data:`REQUEST_VALIDATOR`). 3GPP enumerations are mostly extensible (``anyOf: [enum, string]``):
any string passes those, as the contract says; closed ones (``enum`` alone, e.g. ``token_type``) refuse other values.

An operation is named ``"<METHOD> <path template>"`` as in the file (``"POST /onboardedInvokers"``,
``"GET /trustedInvokers/{apiInvokerId}"``), by its ``operationId`` where the file has one, and a callback (the
notification the CCF sends) by ``"<METHOD> <path> callback <name>"`` (``"POST /{subscriberId}/subscriptions callback
notificationDestination"``). The CCF validates every request with it (D122).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from typing import Any, Final

from jsonschema.exceptions import best_match
from jsonschema.protocols import Validator
from openapi_schema_validator import OAS30ReadValidator, OAS30Validator, oas30_format_checker

from m2msec.capif.openapi import APIS, BUNDLED_DIR
from m2msec.errors import M2MSecError

# D113: requests are validated without OpenAPI's "readOnly" rule (OAS30Validator, not OAS30WriteValidator): TS 29.222
# marks APIInvokerEnrolmentDetails.apiInvokerId readOnly yet requires it "in all other HTTP requests" (the PUT);
# responses are validated with the "writeOnly" rule.
REQUEST_VALIDATOR: Final = OAS30Validator
RESPONSE_VALIDATOR: Final = OAS30ReadValidator

_METHODS: Final = ("get", "put", "post", "delete", "patch", "head", "options", "trace")
_JSON: Final = "application/json"


class SchemaViolation(M2MSecError, ValueError):
    """A body the official schema refuses; the message names the API, operation, member path and rule."""


class UnknownOperation(M2MSecError, LookupError):
    """An API, operation, status or media type the official file does not define."""


@dataclass(frozen=True)
class _Operation:
    request: dict[str, Any]  # media type -> schema
    request_required: bool
    responses: dict[str, dict[str, Any]]  # status ("200", "default") -> media type -> schema (empty: no body)


@cache
def _bundle(api: str) -> dict[str, Any]:
    if api not in APIS:
        raise UnknownOperation(f"unknown CAPIF API {api!r} (one of {', '.join(sorted(APIS))})")
    loaded: dict[str, Any] = json.loads((BUNDLED_DIR / f"{api}.json").read_text(encoding="utf-8"))
    return loaded


def _resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    """A requestBody/response object, following its ``$ref`` into ``components``."""
    while "$ref" in node:
        _, _, kind, name = node["$ref"].split("/")
        node = doc["components"][kind][name]
    return node


def _media(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    content = _resolve(doc, node).get("content", {})
    return {media: spec.get("schema", {}) for media, spec in content.items()}


def _operation(doc: dict[str, Any], op: dict[str, Any]) -> _Operation:
    body = op.get("requestBody")
    return _Operation(
        request=_media(doc, body) if body else {},
        request_required=bool(body and _resolve(doc, body).get("required", False)),
        responses={str(status): _media(doc, r) for status, r in op.get("responses", {}).items()},
    )


@cache
def _operations(api: str) -> dict[str, _Operation]:
    doc = _bundle(api)
    ops: dict[str, _Operation] = {}
    for path, item in doc["paths"].items():
        for method in _METHODS:
            op = item.get(method)
            if op is None:
                continue
            key = f"{method.upper()} {path}"
            ops[key] = _operation(doc, op)
            if "operationId" in op:
                ops[op["operationId"]] = ops[key]
            for name, callback in op.get("callbacks", {}).items():
                for cb_item in callback.values():
                    for cb_method in _METHODS:
                        if cb_method in cb_item:
                            ops[f"{cb_method.upper()} {path} callback {name}"] = _operation(doc, cb_item[cb_method])
    return ops


def operations(api: str) -> list[str]:
    """The operation names :func:`validate_request` and :func:`validate_response` accept for ``api``."""
    return sorted(_operations(api))


def _find(api: str, operation: str) -> _Operation:
    ops = _operations(api)
    if operation not in ops:
        raise UnknownOperation(f"{api}: no operation {operation!r} (one of: {'; '.join(sorted(ops))})")
    return ops[operation]


@cache
def _validator(api: str, schema_json: str, write: bool) -> Validator:
    # the operation's schema, with the bundle's components beside it so "#/components/..." resolves
    schema = {"allOf": [json.loads(schema_json)], "components": _bundle(api)["components"]}
    cls = REQUEST_VALIDATOR if write else RESPONSE_VALIDATOR
    validator: Validator = cls(schema, format_checker=oas30_format_checker)
    return validator


def _check(api: str, what: str, schema: dict[str, Any], body: Any, write: bool) -> None:
    validator = _validator(api, json.dumps(schema, sort_keys=True), write)
    error = best_match(validator.iter_errors(body))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(body)"
        raise SchemaViolation(f"{api} {what}: {where}: {error.message}")


def _pick(api: str, what: str, media: dict[str, Any], content_type: str | None) -> dict[str, Any]:
    if content_type is None:
        content_type = _JSON if _JSON in media or not media else next(iter(media))
    if content_type not in media:
        raise UnknownOperation(f"{api} {what}: media type {content_type!r} not in {sorted(media)}")
    schema: dict[str, Any] = media[content_type]
    return schema


def validate_request(api: str, operation: str, body: Any, content_type: str | None = None) -> None:
    """Check a request ``body`` (parsed JSON; ``None``: no body) of ``operation`` against the official schema.

    Raises :class:`SchemaViolation` (the body breaks the schema, or a required body is missing, or a body where the
    operation takes none) or :class:`UnknownOperation`.
    """
    op = _find(api, operation)
    what = f"{operation} request"
    if body is None:
        if op.request_required:
            raise SchemaViolation(f"{api} {what}: the body is required")
        return
    if not op.request:
        raise SchemaViolation(f"{api} {what}: the operation takes no body")
    _check(api, what, _pick(api, what, op.request, content_type), body, write=True)


def validate_response(api: str, operation: str, status: int, body: Any, content_type: str | None = None) -> None:
    """Check a response ``body`` (parsed JSON; ``None``: no body) of ``operation`` with ``status``.

    The status must be one the file lists (or covered by its ``default``); a status without content must come with
    no body. Raises :class:`SchemaViolation` or :class:`UnknownOperation`.
    """
    op = _find(api, operation)
    key = str(status) if str(status) in op.responses else f"{str(status)[0]}XX"
    if key not in op.responses:
        if "default" not in op.responses:
            raise UnknownOperation(f"{api} {operation}: status {status} not in {sorted(op.responses)}")
        key = "default"
    media = op.responses[key]
    what = f"{operation} response {status}"
    if not media:
        if body is not None:
            raise SchemaViolation(f"{api} {what}: the status has no body")
        return
    if body is None:
        raise SchemaViolation(f"{api} {what}: a body is required")
    _check(api, what, _pick(api, what, media, content_type), body, write=False)
