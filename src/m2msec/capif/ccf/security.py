"""CAPIF Security (TS 29.222 §8.5, `/capif-security/v1`): trustedInvokers, security method selection, AEFPSK, the
token endpoint (:mod:`.security_token`).

- ``PUT /trustedInvokers/{apiInvokerId}`` (the invoker, for itself): each ``securityInfo`` entry is resolved
  (:mod:`.security_context`), gets its ``selSecurityMethod`` (D116, D130), and for PSK the CCF derives AEFPSK from
  *this request's* TLS 1.2 session (TS 33.122 Annex A.1) and keeps it sealed (``capif-aefpsk``); the answer never
  carries it (the invoker derives it itself on the same connection). 201 + Location, also when it replaces (D128).
- ``POST .../update`` (the invoker): entries added or renegotiated, the others kept; 200 with the whole context.
- ``GET`` (an AEF the context names: its entries only, AEFPSK in ``authenticationInfo`` on request, D129; or the
  invoker itself, never with keys); 404 for an AEF the context does not name.
- ``DELETE`` (the invoker: its whole context) and ``POST .../delete`` (an AEF: its own authorization for some service
  APIs, D131); both emit ``API_INVOKER_AUTHORIZATION_REVOKED`` and drop the AEFPSKs no entry uses any more.
- Offboarding (:mod:`.invokers`) purges the invoker's context and AEFPSKs (:func:`purge`).
- A withdrawn service API (publish DELETE, provider deregistration: a :data:`.publish.unpublish_hooks` hook,
  :func:`withdraw`) is revoked from every context as an AEF's ``POST .../delete`` would (D141); a removed AEF leaves no
  AEFPSK (:func:`forget_aefs`).
- Every revocation the invoker did not ask for (an AEF's ``POST .../delete``, a withdrawal) is told to the invoker: a
  ``SecurityNotification`` POSTed to the context's ``notificationDestination`` (the PUT's callback) through the
  events notifier (D140).

Store records: ``capif-security`` / apiInvokerId: ``{"context": ServiceSecurity as answered, "entries": [per
securityInfo entry: {"aefId", "interface": P0 or null, "apis": [[serviceApiId, apiName], ...], "sel": method}],
"generation": random ID (D176)}``;
``capif-aefpsk`` / ``"<apiInvokerId> <aefId> <P0>"``: key = AEFPSK, ``{"invoker", "aefId", "interface"}``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable
from typing import Any, Final

from m2msec.capif.ccf import publish, security_token  # noqa: F401  (security_token: the token and JWKS operations)
from m2msec.capif.ccf.context import CCF, ConcurrentChange, delete_quietly
from m2msec.capif.ccf.events_notifier import send_callback
from m2msec.capif.ccf.http import CCFRequest, Reply, operation
from m2msec.capif.ccf.invokers import purge_hooks, rekey_hooks
from m2msec.capif.ccf.security_context import (
    AEFPSK_KIND,
    GENERATION,
    SECURITY_KIND,
    PublishedService,
    context_generation,
    entry_key,
    narrow,
    psk_record_id,
    resolve_entry,
    revoke,
    scope_of,
    select_for,
)
from m2msec.capif.certificates import CAPIFRole, certificate_thumbprint
from m2msec.capif.kdf import aefpsk
from m2msec.capif.schema import SchemaViolation, validate_request
from m2msec.capif.security_method import SecurityMethod
from m2msec.errors import CAPIFError, Conflict, NotFound
from m2msec.keys.secret import SecretKey
from m2msec.store import Document

__all__ = ["API", "AUTHENTICATION_INFO_ENCODING", "REPLACE_STATUS", "REVOKED_EVENT", "SECURITY_NOTIFICATION",
           "UPDATED_CAUSE", "WITHDRAWN_CAUSE", "forget_aefs", "narrow_to_update", "purge", "security_location",
           "withdraw"]

log = logging.getLogger("m2msec.ccf.security")

API: Final = "capif-security"
#: docs/decisions.md D128: the status of a PUT that replaces an existing security context (the official file gives PUT
#: no other success status; /update is the partial renegotiation)
REPLACE_STATUS: Final = 201
#: docs/decisions.md D131: the TS 29.222 CAPIFEvent of a revocation (the invoker's DELETE, an AEF's POST .../delete)
REVOKED_EVENT: Final = "API_INVOKER_AUTHORIZATION_REVOKED"
#: D152: how often a withdrawal or update re-reads and re-applies its change to a context that changed meanwhile
CHANGE_ATTEMPTS: Final = 5
#: docs/decisions.md D129: how AEFPSK is written in ``SecurityInformation.authenticationInfo`` for the AEF
#: (RFC 4648 §8 base16, lower case: 64 characters, OpenSSL's ``-psk`` form)
AUTHENTICATION_INFO_ENCODING: Final[Callable[[bytes], str]] = bytes.hex
#: docs/decisions.md D140: the official callback the invoker is told of a revocation with (TS 29.222 §8.5: the
#: ``notificationDestination`` callback of the PUT, body ``SecurityNotification``)
SECURITY_NOTIFICATION: Final = "POST /trustedInvokers/{apiInvokerId} callback notificationDestination"
#: docs/decisions.md D141: the ``Cause`` of the SecurityNotification of a withdrawn service API (publish DELETE,
#: provider deregistration): TS 29.222 defines OVERLIMIT_USAGE and UNEXPECTED_REASON only
WITHDRAWN_CAUSE: Final = "UNEXPECTED_REASON"
#: docs/decisions.md D142: the ``Cause`` of the SecurityNotification of an entry a service API update no longer
#: covers (its AEF, interface or selected method is no longer published for it; :func:`narrow_to_update`)
UPDATED_CAUSE: Final = "UNEXPECTED_REASON"
#: the members of a SecurityInformation only the CCF writes (an invoker's values are dropped)
_CCF_MEMBERS: Final = ("selSecurityMethod", "authenticationInfo", "authorizationInfo")


def security_location(ccf: CCF, invoker_id: str) -> str:
    return f"{ccf.policy.api_root}/{API}/v1/trustedInvokers/{invoker_id}"


async def _own_invoker(request: CCFRequest) -> Document:
    """The caller's invoker record, which must be the one the URL names (403 otherwise)."""
    record = await request.ccf.authenticate(request.caller, CAPIFRole.INVOKER)
    if record.record_id != request.params["apiInvokerId"]:
        raise CAPIFError("an API invoker manages only its own security context", status=403)
    return record


async def _context(ccf: CCF, invoker_id: str) -> Document:
    doc = await ccf.store.get_document(SECURITY_KIND, invoker_id)
    if doc is None:
        raise CAPIFError(f"no security context for API invoker {invoker_id}", status=404)
    return doc


async def _services(ccf: CCF) -> list[PublishedService]:
    return [PublishedService(d.record_id, d.body.get("description") or {})
            for d in await ccf.store.documents("capif-service")]


async def _put(ccf: CCF, doc: Document) -> bool:
    """Insert ``doc`` or replace the record of its id; True when it was new."""
    try:
        await ccf.store.put_document(doc)
        return True
    except Conflict:
        await ccf.store.put_document(doc, replace=True)
        return False


def _psk_ids(invoker_id: str, entries: list[dict[str, Any]]) -> set[str]:
    return {psk_record_id(invoker_id, e["aefId"], e["interface"]) for e in entries
            if e["sel"] == SecurityMethod.PSK.value and e["interface"] is not None}


async def _negotiate(request: CCFRequest, invoker_id: str, info: list[dict[str, Any]]
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Document]]:
    """Resolve and select every entry of ``info``; derive the AEFPSKs of the PSK ones from this request's session.
    Returns the answered entries, the recorded entries, and the AEFPSK documents by record id."""
    ccf, session = request.ccf, request.tls.session
    services = await _services(ccf)
    answered: list[dict[str, Any]] = []
    recorded: list[dict[str, Any]] = []
    keys: dict[str, Document] = {}
    master: SecretKey | None = None
    for index, entry in enumerate(info):
        resolved = resolve_entry(index, entry, services)
        selected = select_for(index, entry, resolved, session.version, session.session_id)
        out = {k: copy.deepcopy(v) for k, v in entry.items() if k not in _CCF_MEMBERS}
        out["selSecurityMethod"] = selected.value
        answered.append(out)
        recorded.append(resolved.as_json(selected))
        if selected is SecurityMethod.PSK and resolved.interface is not None:
            if master is None:
                master = request.tls.master_secret()
            record_id = psk_record_id(invoker_id, resolved.aef_id, resolved.interface)
            keys[record_id] = Document(AEFPSK_KIND, record_id, {
                "invoker": invoker_id, "aefId": resolved.aef_id, "interface": resolved.interface},
                aefpsk(master, session.session_id, resolved.interface))
    return answered, recorded, keys


def _check_entries(info: list[dict[str, Any]]) -> None:
    if not info:  # the file says ``minimum: 1`` where minItems was meant (docs/capif.md)
        raise CAPIFError("securityInfo must name at least one AEF or interface", status=400,
                         cause="INVALID_MSG_FORMAT")
    seen: set[tuple[str, str, str]] = set()
    for index, entry in enumerate(info):
        key = entry_key(entry)
        if key in seen:
            raise CAPIFError(f"securityInfo[{index}] names an AEF or interface (and apiId) named before",
                             status=400)
        seen.add(key)


async def _store(ccf: CCF, invoker_id: str, context: dict[str, Any], entries: list[dict[str, Any]],
                 keys: dict[str, Document], old: Document | None, *, anew: bool = False) -> Document:
    """Write the AEFPSKs, then the context over exactly ``old`` (compare-and-swap; None: a new context), then drop
    the AEFPSKs no entry uses any more. Returns the context written. Raises ConcurrentChange when the context changed
    meanwhile (a concurrent update, an AEF's revocation, a withdrawal: D152), its new AEFPSKs removed again.
    ``anew`` (a PUT) or no ``old``: the context gets a new generation (D176), else it keeps ``old``'s."""
    old_entries: list[dict[str, Any]] = [] if old is None else old.body.get("entries", [])
    before = _psk_ids(invoker_id, old_entries)
    for doc in keys.values():
        await _put(ccf, doc)
    kept = None if old is None or anew else context_generation(old)
    generation = kept if kept is not None else ccf.new_id()
    new = Document(SECURITY_KIND, invoker_id, {"context": context, "entries": entries, GENERATION: generation})
    try:
        if old is None:
            await ccf.store.put_document(new)
        else:
            await ccf.store.put_document(new, expect=old)
    except (Conflict, NotFound):
        for record_id in set(keys) - before:
            await delete_quietly(ccf, AEFPSK_KIND, record_id)
        raise ConcurrentChange("the security context changed while this request was served; read it and "
                               "retry") from None
    for stale in before - _psk_ids(invoker_id, entries):
        await delete_quietly(ccf, AEFPSK_KIND, stale)
    return new


async def _confirm(request: CCFRequest, invoker: Document, written: Document) -> None:
    """D152: after the write, the invoker must still hold the certificate it was authenticated with (not offboarded,
    not re-keyed) and every service API the entries name must still be published; else what was written is
    removed (fail closed) and the request refused: nothing negotiated just before an offboarding, a re-key or a
    withdrawal outlives it."""
    ccf = request.ccf
    now = await ccf.store.get_document("capif-invoker", invoker.record_id)
    named = {str(a[0]) for e in written.body.get("entries", []) for a in e.get("apis", [])}
    published = {d.record_id for d in await ccf.store.documents("capif-service")}
    if now is not None and now.body.get("certificate") == invoker.body.get("certificate") and named <= published:
        return
    await _remove(ccf, invoker.record_id, written)
    raise ConcurrentChange("the API invoker or the service APIs changed while this request was served")


@operation(API, "PUT", "/trustedInvokers/{apiInvokerId}")
async def create_context(request: CCFRequest) -> Reply:
    invoker = await _own_invoker(request)
    invoker_id = invoker.record_id
    ccf, body = request.ccf, request.body
    info = list(body["securityInfo"])
    _check_entries(info)
    answered, entries, keys = await _negotiate(request, invoker_id, info)
    context = {**copy.deepcopy(body), "securityInfo": answered}
    old = await ccf.store.get_document(SECURITY_KIND, invoker_id)
    written = await _store(ccf, invoker_id, context, entries, keys, old, anew=True)
    await _confirm(request, invoker, written)
    if old is not None:  # D182: the replaced context's AEFs drop what they cached of it (its AEFPSKs, generation)
        await _revoked(ccf, invoker_id, _all_api_ids(old.body.get("entries", [])))
    return Reply(201 if old is None else REPLACE_STATUS, context, {"Location": security_location(ccf, invoker_id)})


@operation(API, "POST", "/trustedInvokers/{apiInvokerId}/update")
async def update_context(request: CCFRequest) -> Reply:
    invoker = await _own_invoker(request)
    invoker_id = invoker.record_id
    ccf, body = request.ccf, request.body
    doc = await _context(ccf, invoker_id)
    info = list(body["securityInfo"])
    _check_entries(info)
    answered, entries, keys = await _negotiate(request, invoker_id, info)
    replaced = {entry_key(e) for e in info}
    old_info: list[dict[str, Any]] = doc.body["context"]["securityInfo"]
    old_entries: list[dict[str, Any]] = doc.body.get("entries", [])
    kept = [(i, e) for i, e in zip(old_info, old_entries, strict=True) if entry_key(i) not in replaced]
    context = {**copy.deepcopy(body), "securityInfo": [i for i, _ in kept] + answered}
    written = await _store(ccf, invoker_id, context, [e for _, e in kept] + entries, keys, doc)
    await _confirm(request, invoker, written)
    gone = [e for i, e in zip(old_info, old_entries, strict=True) if entry_key(i) in replaced]
    if gone:  # D182: the AEFs of the replaced entries drop what they cached of them
        await _revoked(ccf, invoker_id, _all_api_ids(gone))
    return Reply(200, context)


def _flag(request: CCFRequest, name: str) -> bool:
    value = request.query.get(name)
    if value is None or value == "false":
        return False
    if value == "true":
        return True
    raise CAPIFError(f"query parameter {name} is true or false", status=400, cause="INVALID_QUERY_PARAM")


@operation(API, "GET", "/trustedInvokers/{apiInvokerId}", media=None)
async def get_context(request: CCFRequest) -> Reply:
    ccf, caller, invoker_id = request.ccf, request.caller, request.params["apiInvokerId"]
    if caller.role is CAPIFRole.INVOKER:
        await _own_invoker(request)
        return Reply(200, (await _context(ccf, invoker_id)).body["context"])  # never a key to the invoker
    record = await ccf.authenticate(caller, CAPIFRole.AEF)
    aef_id = record.record_id.removeprefix("func:")
    authentication, authorization = _flag(request, "authenticationInfo"), _flag(request, "authorizationInfo")
    doc = await ccf.store.get_document(SECURITY_KIND, invoker_id)
    pairs = [] if doc is None else [
        (i, e) for i, e in zip(doc.body["context"]["securityInfo"], doc.body.get("entries", []), strict=True)
        if e["aefId"] == aef_id]
    if doc is None or not pairs:  # an AEF the context does not name learns nothing, not even that it exists
        raise CAPIFError(f"no security context of API invoker {invoker_id} for this AEF", status=404)
    info: list[dict[str, Any]] = []
    for item, entry in pairs:
        out = dict(item)
        if authentication:
            out.update(await _authentication_info(ccf, invoker_id, entry, doc))
        if authorization and (scope := scope_of([entry])) is not None:
            out["authorizationInfo"] = scope
        info.append(out)
    context = doc.body["context"]
    answer = {"securityInfo": info, "notificationDestination": context["notificationDestination"]}
    if "supportedFeatures" in context:
        answer["supportedFeatures"] = context["supportedFeatures"]
    return Reply(200, answer)


async def _authentication_info(ccf: CCF, invoker_id: str, entry: dict[str, Any], doc: Document) -> dict[str, str]:
    """D129: the AEFPSK (hex) of a PSK entry; D175: the thumbprint of the invoker's current certificate for a PKI
    entry; D176: the context's generation for an OAUTH entry."""
    if entry["sel"] == SecurityMethod.PSK.value and entry["interface"] is not None:
        psk = await ccf.store.get_document(AEFPSK_KIND, psk_record_id(invoker_id, entry["aefId"], entry["interface"]))
        if psk is None or psk.key is None:
            raise CAPIFError("the AEFPSK of this security context is missing", status=500)
        return {"authenticationInfo": AUTHENTICATION_INFO_ENCODING(psk.key.reveal())}
    if entry["sel"] == SecurityMethod.PKI.value:  # D175: the invoker's current certificate, not the CA
        invoker = await ccf.store.get_document("capif-invoker", invoker_id)
        if invoker is None or not isinstance(digest := invoker.body.get("certificate"), str):
            raise CAPIFError("the API invoker of this security context is gone", status=404)
        return {"authenticationInfo": certificate_thumbprint(digest)}
    generation = context_generation(doc)
    if entry["sel"] == SecurityMethod.OAUTH.value and generation is not None:  # D176: what its tokens must carry
        return {"authenticationInfo": generation}
    return {}


async def _remove(ccf: CCF, invoker_id: str, doc: Document) -> None:
    for record_id in _psk_ids(invoker_id, doc.body.get("entries", [])):
        await delete_quietly(ccf, AEFPSK_KIND, record_id)
    await delete_quietly(ccf, SECURITY_KIND, invoker_id)


def _all_api_ids(entries: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(str(a[0]) for e in entries for a in e.get("apis", [])))


async def _revoked(ccf: CCF, invoker_id: str, api_ids: list[str]) -> None:
    detail: dict[str, Any] = {"apiInvokerIds": [invoker_id]}
    if api_ids:
        detail["apiIds"] = api_ids
    await ccf.events.emit(REVOKED_EVENT, detail)


@operation(API, "DELETE", "/trustedInvokers/{apiInvokerId}", media=None)
async def delete_context(request: CCFRequest) -> Reply:
    invoker_id = (await _own_invoker(request)).record_id
    ccf = request.ccf
    doc = await _context(ccf, invoker_id)
    await _remove(ccf, invoker_id, doc)
    await _revoked(ccf, invoker_id, _all_api_ids(doc.body.get("entries", [])))
    return Reply(204)


@operation(API, "POST", "/trustedInvokers/{apiInvokerId}/delete")
async def revoke_authorization(request: CCFRequest) -> Reply:
    ccf, body, invoker_id = request.ccf, request.body, request.params["apiInvokerId"]
    record = await ccf.authenticate(request.caller, CAPIFRole.AEF)
    aef_id = record.record_id.removeprefix("func:")
    if body["apiInvokerId"] != invoker_id:
        raise CAPIFError("apiInvokerId does not match the resource", status=400)
    if body.get("aefId", aef_id) != aef_id:
        raise CAPIFError("an AEF revokes only its own authorization of an API invoker", status=403)
    doc = await ccf.store.get_document(SECURITY_KIND, invoker_id)
    old_entries: list[dict[str, Any]] = [] if doc is None else doc.body.get("entries", [])
    if doc is None or not any(e["aefId"] == aef_id for e in old_entries):
        raise CAPIFError(f"no security context of API invoker {invoker_id} for this AEF", status=404)
    info, entries, revoked = revoke(doc.body["context"]["securityInfo"], old_entries, aef_id, body["apiIds"])
    if not revoked:
        raise CAPIFError("the security context authorizes none of these service APIs at this AEF", status=404)
    if entries:
        await _store(ccf, invoker_id, {**doc.body["context"], "securityInfo": info}, entries, {}, doc)
    else:
        await _remove(ccf, invoker_id, doc)
    await _revoked(ccf, invoker_id, revoked)
    _tell_invoker(ccf, invoker_id, doc.body["context"], aef_id, revoked, str(body["cause"]))
    return Reply(204)


def _tell_invoker(ccf: CCF, invoker_id: str, context: dict[str, Any], aef_id: str, api_ids: list[str],
                  cause: str) -> None:
    """D140: queue the SecurityNotification of a revocation for the context's notificationDestination."""
    body = {"apiInvokerId": invoker_id, "aefId": aef_id, "apiIds": api_ids, "cause": cause}
    try:
        validate_request(API, SECURITY_NOTIFICATION, body)
    except SchemaViolation:
        log.error("SecurityNotification to API invoker %s not sent: it breaks the official schema", invoker_id)
        return
    send_callback(ccf, str(context.get("notificationDestination", "")), body,
                  f"SecurityNotification to API invoker {invoker_id}")


Change = tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, list[str]]] | None


async def _each_context(ccf: CCF, change: Callable[[Document], Change], cause: str) -> None:
    """Apply ``change`` (None: nothing to do) to every security context, each over the version it read: a context
    changed meanwhile (:class:`ConcurrentChange` from :func:`_store`) is read again and changed again, a few times
    (D152)."""
    for doc in await ccf.store.documents(SECURITY_KIND):
        current: Document | None = doc
        for _ in range(CHANGE_ATTEMPTS):
            if current is None:
                break
            planned = change(current)
            if planned is None:
                break
            try:
                await _apply(ccf, current, *planned, cause)
                break
            except ConcurrentChange:
                current = await ccf.store.get_document(SECURITY_KIND, doc.record_id)
        else:
            log.error("security context of API invoker %s changed %d times while a service API was withdrawn or "
                      "updated; left as it is", doc.record_id, CHANGE_ATTEMPTS)


async def withdraw(ccf: CCF, api_ids: list[str]) -> None:
    """D141 (a :data:`.publish.unpublish_hooks` hook): service APIs that no longer exist grant nothing. Each context
    loses them as by each AEF's ``POST .../delete`` (:func:`.security_context.revoke`): entries naming only withdrawn
    APIs go, the others keep their remaining APIs; AEFPSKs no entry uses are deleted; a context left empty is
    deleted. The invoker gets one SecurityNotification per AEF (cause :data:`WITHDRAWN_CAUSE`) and the
    ``API_INVOKER_AUTHORIZATION_REVOKED`` event is emitted."""
    gone = set(api_ids)

    def change(doc: Document) -> Change:
        old_entries: list[dict[str, Any]] = doc.body.get("entries", [])
        if not any(str(a[0]) in gone for e in old_entries for a in e.get("apis", [])):
            return None
        info: list[dict[str, Any]] = doc.body["context"]["securityInfo"]
        entries = old_entries
        by_aef: dict[str, list[str]] = {}
        for aef_id in dict.fromkeys(str(e["aefId"]) for e in old_entries):
            info, entries, revoked = revoke(info, entries, aef_id, gone)
            if revoked:
                by_aef[aef_id] = revoked
        return info, entries, by_aef

    await _each_context(ccf, change, WITHDRAWN_CAUSE)


async def narrow_to_update(ccf: CCF, api_id: str, description: dict[str, Any]) -> None:
    """D142 (a :data:`.publish.update_hooks` hook): a service API updated (publish PUT/PATCH) stops granting what its
    new description no longer publishes (an AEF, an interface, the selected method), as a withdrawal of that API
    for those entries (:func:`withdraw`'s consequences); entries still valid record its new ``apiName``."""

    def change(doc: Document) -> Change:
        old_entries: list[dict[str, Any]] = doc.body.get("entries", [])
        if not any(str(a[0]) == api_id for e in old_entries for a in e.get("apis", [])):
            return None
        info, entries, lost = narrow(doc.body["context"]["securityInfo"], old_entries, api_id, description)
        return (info, entries, lost) if lost or entries != old_entries else None

    await _each_context(ccf, change, UPDATED_CAUSE)


async def _apply(ccf: CCF, doc: Document, info: list[dict[str, Any]], entries: list[dict[str, Any]],
                 by_aef: dict[str, list[str]], cause: str) -> None:
    """Store a context some service APIs were taken from (deleted when nothing is left), then emit the event and
    tell the invoker (D140) with ``cause``."""
    invoker_id, context = doc.record_id, doc.body["context"]
    if entries:
        await _store(ccf, invoker_id, {**context, "securityInfo": info}, entries, {}, doc)
    else:
        await _remove(ccf, invoker_id, doc)
    if not by_aef:
        return
    await _revoked(ccf, invoker_id, list(dict.fromkeys(i for ids in by_aef.values() for i in ids)))
    for aef_id, revoked in by_aef.items():
        _tell_invoker(ccf, invoker_id, context, aef_id, revoked, cause)


async def forget_aefs(ccf: CCF, aef_ids: Iterable[str]) -> None:
    """A removed AEF (deregistration) leaves no AEFPSK: after :func:`withdraw` has dropped the entries naming its
    service APIs, any AEFPSK record still naming it (none should be left) is deleted."""
    removed = set(aef_ids)
    for doc in await ccf.store.documents(AEFPSK_KIND):
        if doc.body.get("aefId") in removed:
            await delete_quietly(ccf, AEFPSK_KIND, doc.record_id)


async def purge(ccf: CCF, invoker_id: str) -> None:
    """Offboarding (TS 33.122 §6.8): the invoker's security context and every AEFPSK of it go."""
    doc = await ccf.store.get_document(SECURITY_KIND, invoker_id)
    if doc is not None:
        await _remove(ccf, invoker_id, doc)
    for stray in await ccf.store.documents(AEFPSK_KIND):  # none should be left; a crash between writes could
        if stray.body.get("invoker") == invoker_id:
            await delete_quietly(ccf, AEFPSK_KIND, stray.record_id)


async def rekeyed(ccf: CCF, invoker_id: str) -> None:
    """D153 (an :data:`.invokers.rekey_hooks` hook): an invoker that replaced its key loses the security context and
    the AEFPSKs negotiated under the old one (whoever held the old key derived them too); the revocation is emitted,
    and the invoker negotiates again with its new certificate."""
    doc = await ccf.store.get_document(SECURITY_KIND, invoker_id)
    await purge(ccf, invoker_id)
    if doc is not None:
        await _revoked(ccf, invoker_id, _all_api_ids(doc.body.get("entries", [])))


if purge not in purge_hooks:
    purge_hooks.append(purge)
if rekeyed not in rekey_hooks:
    rekey_hooks.append(rekeyed)
if withdraw not in publish.unpublish_hooks:
    publish.unpublish_hooks.append(withdraw)
if narrow_to_update not in publish.update_hooks:
    publish.update_hooks.append(narrow_to_update)
