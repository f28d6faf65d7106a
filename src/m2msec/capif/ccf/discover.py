"""Discover Service (TS 29.222 §8.1, ``/service-apis/v1/allServiceAPIs``): an onboarded invoker discovers the
published service APIs.

Only an onboarded invoker with its current certificate discovers, and ``api-invoker-id`` must be its own (403
otherwise, whatever the URL says: D127). The query filters (D126) are those of the official file: ``api-name``,
``api-cat`` select service APIs; ``aef-id``, ``api-version``, ``protocol``, ``data-format``, ``comm-type`` select AEF
profiles (TS 29.222: each description answered "shall include AEF profiles matching the filter criteria", so a
service API is answered with its matching profiles only, and not at all when none matches); ``supported-features``
is checked (hex) and negotiates nothing; ``api-supported-features`` (only with ``api-name``) makes the answered
``apiSuppFeats`` the features both sides support; ``preferred-aef-loc`` is a preference, checked (a JSON
``AefLocation`` object) and not used to filter. ``ue-ip-addr``, ``service-kpis`` and ``req-api-prov-name`` (which
nothing in a Rel-18 description carries) are refused (400) rather than ignored, as is any name the file does not
list: a filter the CCF does not apply must not answer as if it had. No service API matching: 404 (D127).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Final

from m2msec.capif.ccf.http import CCFRequest, Reply, operation
from m2msec.capif.ccf.publish import services
from m2msec.capif.certificates import CAPIFRole
from m2msec.errors import CAPIFError

__all__ = ["API", "INVALID_QUERY_CAUSE", "NOTHING_DISCOVERED_STATUS", "QUERY_PARAMETERS", "UNEVALUATED_PARAMETERS"]

API: Final = "service-apis"
#: D126: every query parameter of GET /allServiceAPIs in the official file (Rel-18); any other name is refused
QUERY_PARAMETERS: Final = frozenset({
    "api-invoker-id", "api-name", "api-version", "comm-type", "protocol", "aef-id", "data-format", "api-cat",
    "preferred-aef-loc", "req-api-prov-name", "supported-features", "api-supported-features", "ue-ip-addr",
    "service-kpis"})
#: D126: the file's parameters this CCF does not evaluate: refused (400), never silently ignored
UNEVALUATED_PARAMETERS: Final = frozenset({"ue-ip-addr", "service-kpis", "req-api-prov-name"})
#: D126: ProblemDetails cause of a refused query parameter (TS 29.500 §5.2.7.2)
INVALID_QUERY_CAUSE: Final = "INVALID_QUERY_PARAM"
#: D127: the status when no published service API matches (the file lists 404; DiscoveredAPIs cannot be empty:
#: serviceAPIDescriptions has minItems 1)
NOTHING_DISCOVERED_STATUS: Final = 404
_HEX: Final = re.compile(r"[A-Fa-f0-9]*")


def _refuse(name: str, reason: str) -> CAPIFError:
    return CAPIFError(f"query parameter {name}: {reason}", status=400, cause=INVALID_QUERY_CAUSE)


def _check_query(query: dict[str, str]) -> None:
    for name in query:
        if name not in QUERY_PARAMETERS:
            raise _refuse(name[:64], "not a parameter of the Discover Service API")
        if name in UNEVALUATED_PARAMETERS:
            raise _refuse(name, "not evaluated by this CCF")
    for name in ("supported-features", "api-supported-features"):
        if name in query and not _HEX.fullmatch(query[name]):
            raise _refuse(name, "a SupportedFeatures value is hexadecimal")
    if "api-supported-features" in query and "api-name" not in query:
        raise _refuse("api-supported-features", "only with api-name")
    if "preferred-aef-loc" in query:
        try:
            location = json.loads(query["preferred-aef-loc"])
        except (ValueError, RecursionError):
            location = None
        if not isinstance(location, dict):
            raise _refuse("preferred-aef-loc", "an AefLocation JSON object")


def _versions(profile: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in profile.get("versions") or [] if isinstance(v, dict)]


def _comm_types(profile: dict[str, Any]) -> set[str]:
    out: set[str] = set()
    for version in _versions(profile):
        for item in (version.get("resources") or []) + (version.get("custOperations") or []):
            out.add(item.get("commType"))
            out |= {op.get("commType") for op in item.get("custOperations") or []}
    return out


def _profile_matches(profile: dict[str, Any], query: dict[str, str]) -> bool:
    checks: dict[str, Callable[[str], bool]] = {
        "aef-id": lambda v: profile.get("aefId") == v,
        "api-version": lambda v: any(x.get("apiVersion") == v for x in _versions(profile)),
        "protocol": lambda v: profile.get("protocol") == v,
        "data-format": lambda v: profile.get("dataFormat") == v,
        "comm-type": lambda v: v in _comm_types(profile),
    }
    return all(check(query[name]) for name, check in checks.items() if name in query)


def _common_features(published: str, requested: str) -> str:
    """TS 29.571 SupportedFeatures: the bits set in both, as long as the longer of the two."""
    width = max(len(published), len(requested))
    value = int(published or "0", 16) & int(requested or "0", 16)
    return format(value, "X").rjust(width, "0")[-width:] if width else ""


def _discovered(description: dict[str, Any], query: dict[str, str]) -> dict[str, Any] | None:
    if "api-name" in query and description.get("apiName") != query["api-name"]:
        return None
    if "api-cat" in query and description.get("serviceAPICategory") != query["api-cat"]:
        return None
    profiles = [p for p in description.get("aefProfiles") or [] if _profile_matches(p, query)]
    if not profiles:
        return None
    out = dict(description, aefProfiles=profiles)
    if "api-supported-features" in query:
        out["apiSuppFeats"] = _common_features(str(description.get("apiSuppFeats", "")),
                                               query["api-supported-features"])
    return out


@operation(API, "GET", "/allServiceAPIs", media=None)
async def discover(request: CCFRequest) -> Reply:
    ccf, query = request.ccf, request.query
    invoker = await ccf.authenticate(request.caller, CAPIFRole.INVOKER)
    if "api-invoker-id" not in query:
        raise _refuse("api-invoker-id", "required")
    if query["api-invoker-id"] != invoker.record_id:
        raise CAPIFError("an API invoker discovers only as itself (api-invoker-id names another)", status=403)
    _check_query(query)
    found = []
    for doc in sorted(await services(ccf), key=lambda d: d.record_id):
        item = _discovered(doc.body["description"], query)
        if item is not None:
            found.append(item)
    if not found:
        raise CAPIFError("no published service API matches the query", status=NOTHING_DISCOVERED_STATUS)
    return Reply(200, {"serviceAPIDescriptions": found})
