"""The pure part of the CAPIF security API (TS 29.222 §8.5, TS 33.122 §6.3, Annex A): which AEF, which interfaces
and which service APIs a ``SecurityInformation`` entry of an API invoker names, and the security method the CCF
selects for it; no I/O (the handlers of :mod:`.security` read the store and the TLS session).

An entry names either an AEF (``aefId``, optionally narrowed to one service API by ``apiId``) or one interface
(``interfaceDetails``, matched by its D115 interface information ``P0`` against the published
``AefProfile.interfaceDescriptions``, optionally narrowed by ``apiId``). The methods it may get are those every
interface it covers publishes (interface level over profile level,
:func:`~m2msec.capif.security_method.published_methods`).
PSK is selectable only when the CCF can derive exactly one AEFPSK for the entry (D130): the CAPIF-1e session is a
TLS 1.2 full handshake (a session ID) and the entry covers exactly one interface.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from m2msec.capif.kdf import interface_information_of
from m2msec.capif.scope import Scope
from m2msec.capif.security_method import (
    DEFAULT_PRIORITY,
    NO_COMMON_METHOD_CAUSE,
    SecurityMethod,
    published_methods,
    select_method,
)
from m2msec.errors import CAPIFError, ConfigurationError
from m2msec.store import Document

__all__ = [
    "AEFPSK_KIND",
    "GENERATION",
    "PSK_TLS_VERSIONS",
    "SECURITY_KIND",
    "UNKNOWN_AEF_CAUSE",
    "PublishedService",
    "Resolved",
    "api_names",
    "context_generation",
    "entry_key",
    "narrow",
    "psk_record_id",
    "psk_selectable",
    "resolve_entry",
    "revoke",
    "scope_of",
    "select_for",
    "still_granted",
]

#: store kinds (context.py's table): the security context of an invoker; one AEFPSK per invoker, AEF and interface
SECURITY_KIND: Final = "capif-security"
AEFPSK_KIND: Final = "capif-aefpsk"
#: D176: the member of a ``capif-security`` record naming the context's generation: a random ID given when the
#: context is created or replaced by a PUT, kept by /update and the CCF's own narrowing; access tokens carry it
#: (:data:`m2msec.capif.tokens.CONTEXT_CLAIM`) and an AEF refuses a token of another generation
GENERATION: Final = "generation"

#: the TLS versions whose session can key AEFPSK (TS 33.122 Annex A.1: the master secret and the session ID of a
#: full handshake; D130)
PSK_TLS_VERSIONS: Final = frozenset({"TLSv1.2"})
#: the ``cause`` of a 400 for an entry naming no published AEF or interface, or an interface two AEFs publish
UNKNOWN_AEF_CAUSE: Final = "UNKNOWN_AEF_OR_INTERFACE"


@dataclass(frozen=True)
class PublishedService:
    """A ``capif-service`` record: its ``serviceApiId`` and its ``ServiceAPIDescription``."""

    api_id: str
    description: Mapping[str, Any]

    @property
    def api_name(self) -> str:
        return str(self.description.get("apiName", ""))

    def profiles(self) -> list[Mapping[str, Any]]:
        profiles = self.description.get("aefProfiles") or []
        return [p for p in profiles if isinstance(p, Mapping)]


@dataclass(frozen=True)
class Resolved:
    """What one entry names: the AEF, the single interface's P0 (None when it covers none or several), the service
    APIs (IDs and names, in the order published), and the methods published for all its interfaces."""

    aef_id: str
    interface: str | None
    #: (serviceApiId, apiName) of each service API the entry covers
    apis: tuple[tuple[str, str], ...]
    published: frozenset[SecurityMethod]

    def as_json(self, selected: SecurityMethod) -> dict[str, Any]:
        """The entry's record in the ``capif-security`` document (``entries``)."""
        return {"aefId": self.aef_id, "interface": self.interface, "apis": [list(a) for a in self.apis],
                "sel": selected.value}


def context_generation(doc: Document) -> str | None:
    """D176: the generation of a ``capif-security`` record (a :class:`~m2msec.store.Document`), None for a record
    written before generations existed."""
    value = doc.body.get(GENERATION)
    return value if isinstance(value, str) and value else None


def psk_record_id(invoker_id: str, aef_id: str, interface: str) -> str:
    """The ``capif-aefpsk`` record of the AEFPSK of ``invoker_id`` for ``interface`` (P0) of ``aef_id``."""
    return f"{invoker_id} {aef_id} {interface}"


def _methods(values: object) -> list[SecurityMethod]:
    out: list[SecurityMethod] = []
    for value in values if isinstance(values, list) else []:
        try:
            out.append(SecurityMethod(value))
        except ValueError:
            continue  # an extension value this CCF does not implement
    return out


def _p0(description: Mapping[str, Any]) -> str | None:
    try:
        return interface_information_of(description)
    except ConfigurationError:
        return None


def _invalid(index: int, why: str, cause: str = UNKNOWN_AEF_CAUSE) -> CAPIFError:
    return CAPIFError(f"securityInfo[{index}]: {why}", status=400, cause=cause)


def entry_key(entry: Mapping[str, Any]) -> tuple[str, str, str]:
    """What identifies an entry across PUT and /update: (``"aef"``, aefId, apiId) or (``"if"``, P0, apiId); an
    interface whose P0 cannot be written keys by its JSON text (it is refused later)."""
    api = str(entry.get("apiId") or "")
    if "aefId" in entry:
        return ("aef", str(entry["aefId"]), api)
    details = entry.get("interfaceDetails") or {}
    return ("if", _p0(details) or repr(sorted(details.items())), api)


def resolve_entry(index: int, entry: Mapping[str, Any], services: Sequence[PublishedService]) -> Resolved:
    """What ``entry`` (a SecurityInformation the invoker sent, already schema-valid) names among ``services``.

    Raises: CAPIFError 400 (cause :data:`UNKNOWN_AEF_CAUSE`): no published AEF profile or interface matches, the
    interface is published by two AEFs, or its description cannot be written as P0 (D115)."""
    api_id = entry.get("apiId")
    chosen = [s for s in services if api_id is None or s.api_id == api_id]
    if "aefId" in entry:
        aef_id = str(entry["aefId"])
        covered = [(s, p) for s in chosen for p in s.profiles() if p.get("aefId") == aef_id]
        if not covered:
            where = f" for service API {api_id}" if api_id is not None else ""
            raise _invalid(index, f"no AEF {aef_id} is published{where}")
        interfaces: set[str | None] = set()
        method_sets: list[frozenset[SecurityMethod]] = []
        for _, profile in covered:
            descriptions: list[Mapping[str, Any] | None] = [
                d for d in profile.get("interfaceDescriptions") or [] if isinstance(d, Mapping)]
            for description in descriptions or [None]:
                own = None if description is None else description.get("securityMethods")
                method_sets.append(published_methods(_methods(profile.get("securityMethods")), _methods(own)))
                interfaces.add(None if description is None else _p0(description))
        services_of = [s for s, _ in covered]
        single = next(iter(interfaces)) if len(interfaces) == 1 else None
    else:
        p0 = _p0(entry.get("interfaceDetails") or {})
        if p0 is None:
            raise _invalid(index, "interfaceDetails cannot be written as interface information (D115)")
        matches = [(s, p, d) for s in chosen for p in s.profiles()
                   for d in p.get("interfaceDescriptions") or [] if isinstance(d, Mapping) and _p0(d) == p0]
        aefs = {str(p.get("aefId")) for _, p, _ in matches}
        if not aefs:
            raise _invalid(index, f"no AEF publishes the interface {p0}")
        if len(aefs) > 1:
            raise _invalid(index, f"the interface {p0} is published by several AEFs; name one with aefId")
        aef_id = aefs.pop()
        method_sets = [published_methods(_methods(p.get("securityMethods")), _methods(d.get("securityMethods")))
                       for _, p, d in matches]
        services_of = [s for s, _, _ in matches]
        single = p0
    published = frozenset.intersection(*method_sets) if method_sets else frozenset()
    apis = tuple(dict.fromkeys((s.api_id, s.api_name) for s in services_of))
    return Resolved(aef_id, single, apis, published)


def psk_selectable(resolved: Resolved, tls_version: str, session_id: bytes) -> str | None:
    """None when PSK may be selected for ``resolved`` on this CAPIF-1e session, else why not (D130)."""
    if tls_version not in PSK_TLS_VERSIONS or not session_id:
        return "AEFPSK needs a TLS 1.2 full-handshake session with a session ID (TS 33.122 Annex A.1)"
    if resolved.interface is None:
        return ("the entry covers several interfaces (or one that cannot be written as P0): name one with "
                "interfaceDetails")
    return None


def select_for(index: int, entry: Mapping[str, Any], resolved: Resolved, tls_version: str, session_id: bytes,
               priority: Sequence[SecurityMethod] = DEFAULT_PRIORITY) -> SecurityMethod:
    """The method for ``entry`` (D116 priority), PSK left out when :func:`psk_selectable` says why (D130).

    Raises: CAPIFError 400 (cause ``NO_COMMON_SECURITY_METHOD``)."""
    preferred = _methods(entry.get("prefSecurityMethods"))
    published = resolved.published
    why_not = psk_selectable(resolved, tls_version, session_id) if SecurityMethod.PSK in published else None
    if why_not is not None:
        published = published - {SecurityMethod.PSK}
    try:
        return select_method(preferred, published, priority)
    except CAPIFError as exc:
        extra = f" (PSK is not selectable: {why_not})" if why_not and SecurityMethod.PSK in preferred else ""
        raise _invalid(index, exc.detail + extra, NO_COMMON_METHOD_CAUSE) from None


def scope_of(entries: Iterable[Mapping[str, Any]]) -> str | None:
    """The canonical scope (``3gpp#aef:api,...;...``) of the recorded entries' service APIs, AEFs in first-seen
    order; None when they name no API."""
    grants: dict[str, list[str]] = {}
    for entry in entries:
        names = grants.setdefault(str(entry["aefId"]), [])
        names.extend(n for n in api_names(entry) if n not in names)
    kept = tuple((aef, tuple(names)) for aef, names in grants.items() if names)
    # built as a Scope, never by joining strings: a name that could write another grant fails closed (attack2 F8)
    return str(Scope(kept)) if kept else None


def api_names(entry: Mapping[str, Any]) -> list[str]:
    """The apiNames a recorded entry covers."""
    return [str(name) for _, name in entry.get("apis", []) if name]


def revoke(info: Sequence[Mapping[str, Any]], entries: Sequence[Mapping[str, Any]], aef_id: str,
           api_ids: Iterable[str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """TS 29.222 ``POST /trustedInvokers/{id}/delete``: the security context without AEF ``aef_id``'s authorization
    for ``api_ids``. An entry of that AEF covering some of them only is split into one entry per service API it keeps
    (``apiId`` set). Returns the new ``securityInfo``, the new recorded entries, and the API IDs revoked."""
    gone = set(api_ids)
    new_info: list[dict[str, Any]] = []
    new_entries: list[dict[str, Any]] = []
    revoked: list[str] = []
    for item, entry in zip(info, entries, strict=True):
        apis = [tuple(a) for a in entry.get("apis", [])]
        if entry.get("aefId") != aef_id or not any(a[0] in gone for a in apis):
            new_info.append(dict(item))
            new_entries.append(dict(entry))
            continue
        revoked.extend(a[0] for a in apis if a[0] in gone and a[0] not in revoked)
        kept = [a for a in apis if a[0] not in gone]
        for api in kept:
            new_info.append({**item, "apiId": api[0]})
            new_entries.append({**entry, "apis": [list(api)]})
    return new_info, new_entries, revoked


def still_granted(item: Mapping[str, Any], entry: Mapping[str, Any], api_id: str,
                  description: Mapping[str, Any]) -> bool:
    """D142: whether the recorded ``entry`` (and its SecurityInformation ``item``) still holds for service API
    ``api_id`` as now described: the same AEF (and interface, for ``interfaceDetails``) publishes it, with the
    selected method, and a PSK entry still covers exactly the interface its AEFPSK was derived for."""
    try:
        resolved = resolve_entry(0, {**item, "apiId": api_id}, [PublishedService(api_id, description)])
    except CAPIFError:
        return False
    try:
        selected = SecurityMethod(str(entry.get("sel")))
    except ValueError:
        return False
    if resolved.aef_id != entry.get("aefId") or selected not in resolved.published:
        return False
    return selected is not SecurityMethod.PSK or resolved.interface == entry.get("interface")


def narrow(info: Sequence[Mapping[str, Any]], entries: Sequence[Mapping[str, Any]], api_id: str,
           description: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, list[str]]]:
    """D142: the security context after service API ``api_id`` was updated to ``description``: each entry covering it
    that no longer holds (:func:`still_granted`) loses it as by :func:`revoke`; the others record its new
    ``apiName`` (what the token endpoint grants). Returns the new ``securityInfo``, the new entries, and the AEFs
    that lost it (aefId → [api_id])."""
    name = str(description.get("apiName", ""))
    new_info: list[dict[str, Any]] = []
    new_entries: list[dict[str, Any]] = []
    lost: dict[str, list[str]] = {}
    for item, entry in zip(info, entries, strict=True):
        apis = [list(a) for a in entry.get("apis", [])]
        if not any(a[0] == api_id for a in apis):
            new_info.append(dict(item))
            new_entries.append(dict(entry))
        elif still_granted(item, entry, api_id, description):
            new_info.append(dict(item))
            new_entries.append({**entry, "apis": [[a[0], name] if a[0] == api_id else a for a in apis]})
        else:
            aef_id = str(entry["aefId"])
            kept_info, kept_entries, _ = revoke([item], [entry], aef_id, [api_id])
            new_info.extend(kept_info)
            new_entries.extend(kept_entries)
            lost[aef_id] = [api_id]
    return new_info, new_entries, lost
