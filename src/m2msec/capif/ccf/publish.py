"""Publish Service (TS 29.222 §8.2, ``/published-apis/v1``): an APF publishes, reads, updates and deletes its service
API descriptions.

Only the APF the URL names, with its current certificate, reaches ``/{apfId}/service-apis`` (403 for another APF or
another role). A description is accepted when (D124) it has ``aefProfiles``, each naming an AEF of the APF's own API
provider domain (403 otherwise) and describing its interfaces (``interfaceDescriptions``), each interface with at
least one security method (its own or its profile's: TS 33.122 §6.3 selection needs one); and when (D125) none of
its interfaces, written as the AEFPSK ``P0`` (:func:`m2msec.capif.kdf.interface_information_of`, D115), is held by
another AEF: two AEFs sharing a P0 would share every invoker's AEFPSK, so the CCF refuses the second (403).

The hold on a P0 is a store record, inserted atomically (so two CCF instances cannot both give one P0 to two AEFs):
``capif-provider`` ``interface:<sha256 hex of P0>`` → ``{"aef": aefId}``, released when no service API of that AEF
uses the interface any more. Services are ``capif-service`` ``<apiId>`` → ``{"apf": apfId, "description":
ServiceAPIDescription}``. Events: SERVICE_API_AVAILABLE, SERVICE_API_UPDATE, SERVICE_API_UNAVAILABLE with
``{"apiIds": [...]}``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

from m2msec.capif.ccf.context import CCF, delete_quietly
from m2msec.capif.ccf.http import MERGE_PATCH, CCFRequest, Reply, operation
from m2msec.capif.ccf.invokers import merge_patch
from m2msec.capif.ccf.providers import PROVIDER_KIND, function_record
from m2msec.capif.certificates import CAPIFRole
from m2msec.capif.kdf import interface_information_of
from m2msec.capif.scope import is_scope_name
from m2msec.capif.security_method import published_methods
from m2msec.errors import CAPIFError, ConfigurationError, Conflict, NotFound
from m2msec.store import Document

__all__ = ["API", "INTERFACE_IN_USE_CAUSE", "NO_SECURITY_METHOD_CAUSE", "SERVICE_KIND", "interfaces_of",
           "service_location", "services", "unpublish_hooks", "update_hooks", "withdraw_services"]

API: Final = "published-apis"
SERVICE_KIND: Final = "capif-service"
INTERFACE_PREFIX: Final = "interface:"
#: D125: ProblemDetails cause (403: the file gives 409 no body) of an interface whose P0 another AEF holds
INTERFACE_IN_USE_CAUSE: Final = "INTERFACE_HELD_BY_ANOTHER_AEF"
#: D124: ProblemDetails cause (400) of an interface without any security method (its own or its profile's)
NO_SECURITY_METHOD_CAUSE: Final = "NO_SECURITY_METHOD"
#: D124: ProblemDetails cause (403) of an aefId that is not an AEF of the publishing APF's provider domain
FOREIGN_AEF_CAUSE: Final = "AEF_NOT_IN_PROVIDER_DOMAIN"
#: D146: an apiName that cannot stand in a scope; a second service API of one name at one AEF
INVALID_API_NAME_CAUSE: Final = "INVALID_API_NAME"
API_NAME_IN_USE_CAUSE: Final = "API_NAME_IN_USE"

#: called with (ccf, [apiId, ...]) after service APIs are deleted (the security module drops what refers to them)
unpublish_hooks: list[Any] = []
#: called with (ccf, apiId, the new ServiceAPIDescription) after a service API is updated (PUT, PATCH): the security
#: module drops what its new description no longer publishes (D142)
update_hooks: list[Any] = []


def service_location(ccf: CCF, apf_id: str, api_id: str) -> str:
    return f"{ccf.policy.api_root}/{API}/v1/{apf_id}/service-apis/{api_id}"


async def services(ccf: CCF) -> list[Document]:
    """Every published service API record (``{"apf", "description"}``)."""
    return await ccf.store.documents(SERVICE_KIND)


def interfaces_of(description: dict[str, Any]) -> set[tuple[str, str]]:
    """(aefId, P0) of every interface of a stored (already checked) description."""
    out = set()
    for profile in description.get("aefProfiles") or []:
        for iface in profile.get("interfaceDescriptions") or []:
            out.add((profile["aefId"], interface_information_of(iface)))
    return out


async def _check(ccf: CCF, domain: str, description: dict[str, Any],
                 api_id: str | None = None) -> set[tuple[str, str]]:
    """D124: the description's AEFs and interfaces; returns its (aefId, P0) pairs (D125 checked within it). D146:
    ``apiName`` can stand in an access token's scope, and no other service API (``api_id`` is this one's) of the same
    AEF has it."""
    profiles = description.get("aefProfiles")
    if not profiles:
        raise CAPIFError("a service API needs aefProfiles: the AEFs exposing it", status=400)
    name = description.get("apiName")
    if not is_scope_name(name):
        raise CAPIFError("apiName must be printable ASCII without space, ';', ',', ':', '#', '\\' or '\"' (it is "
                         "written into access token scopes)", status=400, cause=INVALID_API_NAME_CAUSE)
    pairs: set[tuple[str, str]] = set()
    for profile in profiles:
        aef_id = profile["aefId"]
        record = await function_record(ccf, str(aef_id))
        if record is None or record.body.get("role") != "AEF" or record.body.get("domain") != domain:
            raise CAPIFError(f"aefId {str(aef_id)[:80]!r} is not an AEF of this API provider domain", status=403,
                             cause=FOREIGN_AEF_CAUSE)
        interfaces = profile.get("interfaceDescriptions")
        if not interfaces:
            raise CAPIFError(f"the profile of AEF {aef_id} needs interfaceDescriptions (the interfaces an invoker "
                             "connects to, and AEFPSK's P0)", status=400)
        for iface in interfaces:
            try:
                p0 = interface_information_of(iface)
            except ConfigurationError as exc:
                raise CAPIFError(f"interface of AEF {aef_id}: {exc}", status=400) from None
            if not published_methods(profile.get("securityMethods"), iface.get("securityMethods")):
                raise CAPIFError(f"interface {p0} of AEF {aef_id} has no security method (neither its own "
                                 "securityMethods nor its profile's)", status=400, cause=NO_SECURITY_METHOD_CAUSE)
            pairs.add((str(aef_id), p0))
    holders: dict[str, str] = {}
    for aef_id, p0 in sorted(pairs):
        if holders.setdefault(p0, aef_id) != aef_id:
            raise CAPIFError(f"interface {p0} is given to two AEFs", status=403, cause=INTERFACE_IN_USE_CAUSE)
    active = (description.get("apiStatus") or {}).get("aefIds", [])
    if not set(active) <= {p["aefId"] for p in profiles}:
        raise CAPIFError("apiStatus.aefIds names an AEF without a profile in this service API", status=400)
    aefs = {str(p.get("aefId")) for p in profiles}
    for other in await services(ccf):
        theirs = other.body.get("description") or {}
        if other.record_id != api_id and theirs.get("apiName") == name and \
                aefs & {str(p.get("aefId")) for p in theirs.get("aefProfiles") or []}:
            raise CAPIFError(f"an AEF of this service API already exposes a service API named {name!r}",
                             status=403, cause=API_NAME_IN_USE_CAUSE)
    return pairs


def _claim_id(p0: str) -> str:
    return INTERFACE_PREFIX + hashlib.sha256(p0.encode("utf-8")).hexdigest()


async def _claim(ccf: CCF, pairs: Iterable[tuple[str, str]]) -> None:
    """D125: hold each P0 for its AEF (an atomic insert), or 403 when another AEF holds it."""
    taken: list[tuple[str, str]] = []
    for aef_id, p0 in sorted(pairs):
        try:
            await ccf.store.put_document(Document(PROVIDER_KIND, _claim_id(p0), {"aef": aef_id}))
            taken.append((aef_id, p0))
            continue
        except Conflict:
            held = await ccf.store.get_document(PROVIDER_KIND, _claim_id(p0))
        if held is None or held.body.get("aef") != aef_id:
            await _release(ccf, taken)
            raise CAPIFError(f"interface {p0} is already published by another AEF (two AEFs never share an "
                             "interface: their AEFPSKs would be equal)", status=403, cause=INTERFACE_IN_USE_CAUSE)


async def _release(ccf: CCF, pairs: Iterable[tuple[str, str]]) -> None:
    """Drop the holds no remaining service API of their AEF uses."""
    pairs = set(pairs)
    if not pairs:
        return
    in_use: set[tuple[str, str]] = set()
    for doc in await services(ccf):
        in_use |= interfaces_of(doc.body["description"])
    dropped = set()
    for aef_id, p0 in pairs - in_use:
        held = await ccf.store.get_document(PROVIDER_KIND, _claim_id(p0))
        if held is not None and held.body.get("aef") == aef_id:
            await delete_quietly(ccf, PROVIDER_KIND, _claim_id(p0))
            dropped.add((aef_id, p0))
    if dropped:  # a service API of the same AEF stored since the scan keeps its hold
        used = set().union(*(interfaces_of(d.body["description"]) for d in await services(ccf)))
        for aef_id, p0 in dropped & used:
            with contextlib.suppress(Conflict):
                await ccf.store.put_document(Document(PROVIDER_KIND, _claim_id(p0), {"aef": aef_id}))


async def _confirm(ccf: CCF, pairs: set[tuple[str, str]], undo: Callable[[], Awaitable[None]],
                   functions: Iterable[str] = ()) -> None:
    """D125 again once the service API is stored: a release running meanwhile (of another service API of the same
    AEF, whose scan came before this one was stored) may have dropped a hold; take it again, or undo and refuse.
    D152: the APF and the AEFs (``functions``) must still exist, else a deregistration ran meanwhile: undo, 404."""
    try:
        for func_id in functions:
            if await function_record(ccf, func_id) is None:
                raise CAPIFError("the API provider function was removed while this request was served", status=404)
        await _claim(ccf, pairs)
    except CAPIFError:
        await undo()
        await _release(ccf, pairs)
        raise


async def withdraw_services(ccf: CCF, func_ids: set[str]) -> list[str]:
    """Delete the service APIs published by (APF) or exposed at (AEF) any of ``func_ids`` (deregistered functions);
    their apiIds, reported SERVICE_API_UNAVAILABLE."""
    gone: list[str] = []
    released: set[tuple[str, str]] = set()
    for doc in await services(ccf):
        description = doc.body["description"]
        aefs = {p.get("aefId") for p in description.get("aefProfiles") or []}
        if doc.body.get("apf") in func_ids or aefs & func_ids:
            await delete_quietly(ccf, SERVICE_KIND, doc.record_id)
            released |= interfaces_of(description)
            gone.append(doc.record_id)
    await _gone(ccf, gone, released)
    return gone


async def _gone(ccf: CCF, api_ids: list[str], released: set[tuple[str, str]]) -> None:
    await _release(ccf, released)
    if api_ids:
        for hook in unpublish_hooks:
            await hook(ccf, api_ids)
        await ccf.events.emit("SERVICE_API_UNAVAILABLE", {"apiIds": sorted(api_ids)})


async def _apf(request: CCFRequest) -> Document:
    """The caller's APF record; the caller must be the APF the URL names."""
    record = await request.ccf.authenticate(request.caller, CAPIFRole.APF)
    if request.caller.identity != request.params["apfId"]:
        raise CAPIFError("an APF manages only the service APIs it published", status=403)
    return record


async def _service(request: CCFRequest) -> Document:
    doc = await request.ccf.store.get_document(SERVICE_KIND, request.params["serviceApiId"])
    if doc is None or doc.body.get("apf") != request.params["apfId"]:
        raise CAPIFError("no such service API published by this APF", status=404)
    return doc


@operation(API, "POST", "/{apfId}/service-apis")
async def publish(request: CCFRequest) -> Reply:
    apf = await _apf(request)
    ccf, apf_id = request.ccf, request.params["apfId"]
    body: dict[str, Any] = request.body
    if "apiId" in body:
        raise CAPIFError("apiId is assigned by the CCF: it must not be sent when publishing", status=400)
    pairs = await _check(ccf, str(apf.body["domain"]), body)
    await _claim(ccf, pairs)
    api_id = ccf.new_id()
    answer = dict(copy.deepcopy(body), apiId=api_id)
    await ccf.store.put_document(Document(SERVICE_KIND, api_id, {"apf": apf_id, "description": answer}))
    await _confirm(ccf, pairs, lambda: delete_quietly(ccf, SERVICE_KIND, api_id), {apf_id, *(a for a, _ in pairs)})
    await ccf.events.emit("SERVICE_API_AVAILABLE", {"apiIds": [api_id]})
    return Reply(201, answer, {"Location": service_location(ccf, apf_id, api_id)})


@operation(API, "GET", "/{apfId}/service-apis", media=None)
async def list_published(request: CCFRequest) -> Reply:
    await _apf(request)
    apf_id = request.params["apfId"]
    found = sorted((d for d in await services(request.ccf) if d.body.get("apf") == apf_id),
                   key=lambda d: d.record_id)
    return Reply(200, [d.body["description"] for d in found])


@operation(API, "GET", "/{apfId}/service-apis/{serviceApiId}", media=None)
async def read(request: CCFRequest) -> Reply:
    await _apf(request)
    return Reply(200, (await _service(request)).body["description"])


async def _replace(request: CCFRequest, apf: Document, doc: Document, description: dict[str, Any]) -> Reply:
    ccf, api_id = request.ccf, doc.record_id
    if description.get("apiId", api_id) != api_id:
        raise CAPIFError("apiId does not match the resource", status=400)
    pairs = await _check(ccf, str(apf.body["domain"]), description, api_id)
    await _claim(ccf, pairs)
    answer = dict(copy.deepcopy(description), apiId=api_id)
    try:
        await ccf.store.put_document(Document(SERVICE_KIND, api_id, dict(doc.body, description=answer)),
                                     replace=True)
    except NotFound:  # unpublished meanwhile
        await _release(ccf, pairs)
        raise CAPIFError("no such service API published by this APF", status=404) from None

    async def undo() -> None:
        with contextlib.suppress(NotFound):
            await ccf.store.put_document(doc, replace=True)

    await _confirm(ccf, pairs, undo, {str(doc.body["apf"]), *(a for a, _ in pairs)})
    await _release(ccf, interfaces_of(doc.body["description"]) - pairs)
    for hook in update_hooks:
        await hook(ccf, api_id, answer)
    await ccf.events.emit("SERVICE_API_UPDATE", {"apiIds": [api_id]})
    return Reply(200, answer)


@operation(API, "PUT", "/{apfId}/service-apis/{serviceApiId}")
async def update(request: CCFRequest) -> Reply:
    apf = await _apf(request)
    return await _replace(request, apf, await _service(request), request.body)


@operation(API, "PATCH", "/{apfId}/service-apis/{serviceApiId}", media=MERGE_PATCH)
async def modify(request: CCFRequest) -> Reply:
    apf = await _apf(request)
    doc = await _service(request)
    merged = merge_patch(doc.body["description"], request.body)
    if not isinstance(merged, dict) or "apiName" not in merged:
        raise CAPIFError("the patch removes a required member of the service API description", status=400)
    return await _replace(request, apf, doc, merged)


@operation(API, "DELETE", "/{apfId}/service-apis/{serviceApiId}", media=None)
async def unpublish(request: CCFRequest) -> Reply:
    await _apf(request)
    doc = await _service(request)
    ccf = request.ccf
    await delete_quietly(ccf, SERVICE_KIND, doc.record_id)
    await _gone(ccf, [doc.record_id], interfaces_of(doc.body["description"]))
    return Reply(204)
