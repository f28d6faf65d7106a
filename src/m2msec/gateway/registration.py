"""Registration upon SAE at the gateway (issue 17; pure: no I/O).

What the gateway decides for each request before it reaches the CSE, on both bindings (HTTP and coaps), beyond the
``From`` check of :func:`m2msec.gateway.rules.check_originator`:

* **CREATE <AE>** (TS-0001 §10.2.2.2): recognised however the CSE would read the resource type (D100), its body read
  strictly (D101: JSON only, no duplicate member, nothing but ``m2m:ae``) for the App-ID ``api``; with service
  subscription rules configured it is allowed only as they say (:mod:`m2msec.gateway.subscription`, 4128 / 4126).
* **Requests relayed by a CSE** (TS-0004 §7.3.2.1): an SA associated with a CSE-ID carries the requests of the AEs
  registered with that CSE (its C-type AE-IDs), and nobody else's (D102, :func:`check_relayed`).
* **A CSE-ID in From** on an SA known only by its Credential-ID (associated with no AE-ID or CSE-ID: the request is
  outside any SA of that CSE, TS-0004 §7.3.2.1): SECURITY_ASSOCIATION_REQUIRED (4107), whatever the ``--unbound``
  policy (D105). On an SA associated with an AE it stays 4106 (the registree is known as an AE), and so on a
  certificate SA without any identity (its 4106 says why the certificate names none).
* After a successful CREATE <AE>, the AE-ID the CSE assigned (:func:`aei_from_body`) and the ``From`` forms it may be
  used in (:func:`registered_forms`) are what :class:`m2msec.gateway.registrar.Registrar` binds to the Credential-ID.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from m2msec.errors import (
    BadRequest,
    OriginatorNotAuthenticated,
    SecurityAssociationRequired,
    ServiceSubscriptionNotEstablished,
)
from m2msec.gateway.rules import SecurityAssociation, UnboundPolicy, ae_id_forms, check_originator
from m2msec.gateway.subscription import REGISTRAR_ASSIGNED_KIND, RuleTable

__all__ = [
    "AE_RESOURCE_TYPE",
    "JSON_CONTENT_FORMATS",
    "JSON_MEDIA_TYPES",
    "MAX_AE_ID_LENGTH",
    "AECreate",
    "aei_from_body",
    "authorize",
    "check_accept",
    "check_relayed",
    "check_result_content",
    "coap_ae_create",
    "cse_id_of",
    "http_ae_create",
    "is_cse_association",
    "parse_ae_body",
    "registered_forms",
    "relayable_forms",
]

#: TS-0004 Table 6.3.4.2.1-1: resourceType of ``<AE>``.
AE_RESOURCE_TYPE: Final = 2
#: docs/decisions.md D101: the serializations in which the gateway reads a CREATE <AE> (its ``api`` must be checked):
#: JSON media types (HTTP Content-Type) and CoAP Content-Formats (50 application/json, 10001
#: application/vnd.onem2m-res+json, TS-0008 Table 6.2.2.2-1). XML and CBOR CREATE <AE> are refused with 4000.
JSON_MEDIA_TYPES: Final = frozenset({"application/json", "application/vnd.onem2m-res+json"})
JSON_CONTENT_FORMATS: Final = frozenset({50, 10001})
#: Longest AE-ID the gateway binds (an AE-ID is a short identifier; TS-0001 §7.2 sets no limit).
MAX_AE_ID_LENGTH: Final = 256
_AE_ROOT: Final = "m2m:ae"


@dataclass(frozen=True)
class AECreate:
    """A CREATE ``<AE>``: its App-ID (``api``, None when absent) and ``From`` (None when absent)."""

    app_id: str | None
    from_: str | None

    @property
    def registrar_assigns(self) -> bool:
        """True when the registrar chooses the AE-ID-Stem (``From`` absent, empty, ``C`` or ``S``: D98)."""
        return (self.from_ or "") in REGISTRAR_ASSIGNED_KIND


# -- recognising a CREATE <AE>
def _int_or_none(text: str) -> int | None:
    try:
        return int(text)  # as a CSE written in Python reads it: whitespace, sign, leading zeros, any decimal digit
    except ValueError:
        return None


def _http_type_readings(params: str) -> set[int]:
    """Every resource type a CSE could read from the parameters of a Content-Type: each ``name=value`` parameter's
    value, and the text after the first ``=`` (a CSE that does not look at the name, as ACME does)."""
    candidates = [params.partition("=")[2]] + [p.partition("=")[2] for p in params.split(";")]
    return {n for n in (_int_or_none(c) for c in candidates) if n is not None}


def check_result_content(query: Iterable[tuple[str, str]]) -> None:
    """D106: a CREATE <AE> must ask for the created resource in its answer (Result Content ``rcn`` absent or 1,
    Response Type ``rt`` absent or 3 = blocking; TS-0004 §8.1.2), whose ``aei`` the gateway binds: an answer without
    it would leave a registration unbound and uncounted (D103). ``query``: the decoded ``name=value`` pairs of the
    request's query.

    Raises: BadRequest (4000)."""
    for name, value in query:
        key = name.strip().lower()
        if key == "rcn" and value.strip() != "1":
            raise BadRequest("a CREATE <AE> through this gateway must ask for the created resource (rcn absent or 1)")
        if key == "rt" and value.strip() != "3":  # non-blocking: the answer (1001) holds no resource either
            raise BadRequest("a CREATE <AE> through this gateway must be blocking (rt absent or 3)")


def check_accept(media_types: Iterable[str]) -> None:
    """D106: the answer to a CREATE <AE> must be JSON, the gateway's only reading of its ``aei``: every Accept entry
    (HTTP, comma-separated, parameters ignored) a JSON media type or ``*/*`` (the CSE then answers in the request's
    JSON). A CBOR or XML answer would bind nothing, leaving the AE-ID to a former holder and the registration
    uncounted.

    Raises: BadRequest (4000)."""
    for value in media_types:
        for entry in value.split(","):
            media = entry.partition(";")[0].strip().lower()
            if media and media != "*/*" and media not in JSON_MEDIA_TYPES:
                raise BadRequest("a CREATE <AE> through this gateway must accept a JSON answer (Accept)")


def _ae_create(app_id: str | None, origin: str | None) -> AECreate:
    create = AECreate(app_id, origin)
    if origin and not create.registrar_assigns and not _plausible_ae_id(origin):
        raise BadRequest("the From of a CREATE <AE> must be an AE-ID-Stem the gateway can bind (at most "
                         f"{MAX_AE_ID_LENGTH} printable characters, no wildcard, quote or separator)")
    return create


def http_ae_create(method: str, content_type: str | None, body: bytes, origin: str | None,
                   target: str = "/", accept: Iterable[str] = ()) -> AECreate | None:
    """The CREATE ``<AE>`` an HTTP request is (TS-0009 §6.4.2: POST with ``ty=2`` in Content-Type), else None.

    D100: any reading of the Content-Type parameters that gives 2 makes the request a CREATE <AE>, which must then
    be spelt plainly (one parameter ``ty=2`` after a JSON media type) and have a JSON body (D101).

    Raises: BadRequest (4000): an ambiguous Content-Type, another serialization, or a malformed body."""
    if method.upper() != "POST" or content_type is None:  # Werkzeug (ACME) upper-cases the method
        return None
    media, _, params = content_type.partition(";")
    if AE_RESOURCE_TYPE not in _http_type_readings(params):
        return None
    name, _, value = params.partition("=")
    if ";" in params or name.strip().lower() != "ty" or value.strip() != str(AE_RESOURCE_TYPE):
        raise BadRequest("a CREATE <AE> must give its resource type as the one Content-Type parameter ty=2")
    if media.strip().lower() not in JSON_MEDIA_TYPES:
        raise BadRequest("a CREATE <AE> through this gateway must be JSON (application/json or "
                         "application/vnd.onem2m-res+json)")
    check_result_content(urllib.parse.parse_qsl(urllib.parse.urlsplit(target).query, keep_blank_values=True))
    check_accept(accept)
    return _ae_create(parse_ae_body(body), origin)


def coap_ae_create(code_is_post: bool, resource_type: int | None, content_format: int | None, payload: bytes,
                   origin: str | None, *, block1: bool = False, queries: Iterable[str] = (),
                   accept: Iterable[int] = ()) -> AECreate | None:
    """The CREATE ``<AE>`` a CoAP request is (TS-0008: POST with oneM2M-TY 2), else None.

    Raises: BadRequest (4000): not JSON, malformed, or sent block-wise (D101: the rules need the whole body)."""
    if not code_is_post or resource_type != AE_RESOURCE_TYPE:
        return None
    if content_format is not None and content_format not in JSON_CONTENT_FORMATS:
        raise BadRequest("a CREATE <AE> through this gateway must be JSON (Content-Format 50 or 10001)")
    if block1:
        raise BadRequest("a CREATE <AE> through this gateway must fit one CoAP message (no Block1)")
    check_result_content(q.partition("=")[::2] for q in queries)
    if any(a not in JSON_CONTENT_FORMATS for a in accept):
        raise BadRequest("a CREATE <AE> through this gateway must accept a JSON answer (Accept 50 or 10001)")
    return _ae_create(parse_ae_body(payload), origin)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:  # parsers disagree on which copy counts: the rules would check one, the CSE use another
            raise BadRequest(f"JSON member {key[:40]!r} repeated in a CREATE <AE>")
        obj[key] = value
    return obj


def _no_constant(name: str) -> Any:
    raise BadRequest(f"JSON constant {name} in a CREATE <AE>")


def _strict_json(body: bytes, what: str) -> Any:
    try:
        text = body.decode("utf-8")  # strict: a BOM or UTF-16 is refused, not guessed
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadRequest(f"{what} is not a well-formed UTF-8 JSON document") from None


def _check_strings(doc: object) -> None:
    """D101: no JSON string (member name or value) may end in a backslash. ACME strips "comments" (``//``, ``/*``,
    ``#``, ``;;``) from JSON text before parsing it, finding strings with a regular expression that takes the escaped
    backslash before a closing quote for an escaped quote: it would read another document than the one checked."""
    stack = [doc]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if item.endswith("\\"):
                raise BadRequest("a JSON string ending in a backslash is refused in a CREATE <AE>")
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def parse_ae_body(body: bytes) -> str | None:
    """The App-ID (``api``) of a CREATE <AE> body ``{"m2m:ae": {...}}`` (None when it has no ``api``).

    Raises: BadRequest (4000): not strict JSON (D101), another root, a string ending in a backslash, or an ``api``
    that is not a string."""
    doc = _strict_json(body, "the CREATE <AE> body")
    _check_strings(doc)
    if not isinstance(doc, dict) or list(doc) != [_AE_ROOT] or not isinstance(doc[_AE_ROOT], dict):
        raise BadRequest('a CREATE <AE> body must be one JSON object {"m2m:ae": {...}}')
    api = doc[_AE_ROOT].get("api")
    if api is not None and not isinstance(api, str):
        raise BadRequest("the api of a CREATE <AE> must be a string")
    return api


def aei_from_body(body: bytes) -> str | None:
    """The AE-ID (``aei``) in a CREATE <AE> response body, None when the response has none that can be bound."""
    try:
        doc = _strict_json(body, "the CSE's response")
    except BadRequest:
        return None
    return _aei(doc)


def _aei(doc: object) -> str | None:
    ae = doc.get(_AE_ROOT) if isinstance(doc, Mapping) else None
    aei = ae.get("aei") if isinstance(ae, Mapping) else None
    if not isinstance(aei, str) or not _plausible_ae_id(aei):
        return None
    return aei


def _plausible_ae_id(aei: str) -> bool:
    if not aei or len(aei) > MAX_AE_ID_LENGTH or "*" in aei:
        return False
    return all(0x21 <= ord(c) < 0x7F and c not in ",;\\\"'" for c in aei)


# -- identities
def cse_id_of(origin: str | None) -> str | None:
    """The CSE-ID ``origin`` names when it is a CSE-ID (TS-0001 §7.2), in the form given, else None.

    SP-relative ``/cse`` (one segment) and absolute ``//sp/cse``; D102: ``//sp/S...`` is read as an S-type
    Absolute AE-ID (an S-type AE-ID-Stem starts with ``S``), not as a CSE-ID."""
    if not origin:
        return None
    if origin.startswith("//"):
        parts = origin[2:].split("/")
        if len(parts) == 2 and all(parts) and not parts[1].startswith("S"):
            return origin
        return None
    if origin.startswith("/") and "/" not in origin[1:] and len(origin) > 1:
        return origin
    return None


def is_cse_association(sa: SecurityAssociation) -> bool:
    """True when the SA is associated with a CSE-ID (a CSE's certificate, or a PSK bound to a CSE-ID)."""
    return cse_id_of(sa.associated) is not None


def relayable_forms(relaying: str, sp_id: str | None) -> tuple[str, ...]:
    """The ``From`` prefixes a CSE relays for (D102): the C-type AE-IDs registered with *that* CSE, SP-relative
    ``/<its CSE-ID>/C`` (a CSE of our SP) and absolute ``//<sp>/<its CSE-ID>/C``."""
    if relaying.startswith("//"):
        return (relaying + "/C",)
    prefixes = [relaying + "/C"]
    if sp_id is not None:
        prefixes.append(f"//{sp_id}{relaying}/C")
    return tuple(prefixes)


def check_relayed(sa: SecurityAssociation, origin: str | None, cse_id: str | None, sp_id: str | None) -> None:
    """``From`` on an SA associated with a CSE-ID (TS-0004 §7.3.2.1, D102): the CSE's own ID, or an AE registered
    with that CSE (a C-type AE-ID whose CSE-ID part is the relaying CSE's: ``/<its CSE-ID>/Cx``,
    ``//<sp>/<its CSE-ID>/Cx``). Anything else is refused: another CSE-ID or its AEs (it could be another registree),
    S-type AE-IDs (SP-wide: one may be registered here), CSE-relative stems, the gateway's own CSE and its AEs.

    Raises: OriginatorNotAuthenticated (4106)."""
    if not origin:
        raise OriginatorNotAuthenticated("request has no X-M2M-Origin inside a security association")
    if origin in sa.allowed_originators:
        return
    relaying = sa.associated
    if relaying is not None and cse_id is not None and relaying.rstrip("/").rsplit("/", 1)[-1] == cse_id.lstrip("/"):
        relaying = None  # a certificate of the gateway's own CSE-ID relays nothing
    prefixes = relayable_forms(relaying, sp_id) if relaying is not None else ()
    stem = next((origin[len(p) - 1:] for p in prefixes if origin.startswith(p)), "")
    if len(stem) < 2 or "/" in stem:
        raise OriginatorNotAuthenticated(
            f"originator {origin[:80]!r} is not the CSE of this security association nor an AE registered with it")


def authorize(sa: SecurityAssociation, origin: str | None, policy: UnboundPolicy, *, create: AECreate | None = None,
              rules: RuleTable | None = None, cse_id: str | None = None, sp_id: str | None = None) -> None:
    """Whether the request may go to the CSE; raises the oneM2M error to answer otherwise.

    Order: a CREATE <AE> through an SA with a Credential-ID is checked against ``rules`` first (4128 / 4126, D99);
    on a credential-only SA (associated with no AE-ID or CSE-ID) the rules alone decide its ``From``. Then a CSE's
    SA relays (:func:`check_relayed`); a CSE-ID in ``From`` on an SA associated with nothing is 4107; the rest is
    :func:`check_originator` (4106)."""
    if create is not None and rules is not None and is_cse_association(sa):
        raise ServiceSubscriptionNotEstablished(
            "a CSE's security association has no Credential-ID: no service subscription rule lets it register an AE")
    if create is not None and rules is not None and sa.credential_id is not None:
        if cse_id_of(origin) is not None:
            raise SecurityAssociationRequired(f"a CREATE <AE> cannot use the CSE-ID {str(origin)[:80]!r} as From")
        rules.check_ae_registration(sa.credential_id, create.app_id, origin)
        if sa.associated is None:
            return
    if is_cse_association(sa):
        check_relayed(sa, origin, cse_id, sp_id)
        return
    if (sa.associated is None and sa.credential_id is not None and cse_id_of(origin) is not None
            and origin not in sa.allowed_originators):
        raise SecurityAssociationRequired(
            f"originator {str(origin)[:80]!r} is a CSE-ID: a CSE must use its own security association")
    check_originator(sa, origin, policy)


def registered_forms(aei: str, cse_id: str | None, sp_id: str | None) -> frozenset[str]:
    """The ``From`` forms of the AE-ID ``aei`` a CSE assigned (as it wrote it: stem, SP-relative or absolute).

    A C-type stem ``Cx`` registered with ``cse_id`` is also ``/cse/Cx`` and, with ``sp_id``, ``//sp/cse/Cx``; an S-type
    stem ``Sx`` is also ``//sp/Sx``. Forms that need a ``cse_id`` / ``sp_id`` the gateway was not given are left out."""
    cse = cse_id.lstrip("/") if cse_id else None
    absolute: str | None
    local: set[str] = {aei}  # the forms that need no SP-ID
    if aei.startswith("//"):
        absolute = aei
    elif aei.startswith("/"):  # SP-relative /cse/Cx
        if aei.count("/") != 2 or not aei.split("/")[2].startswith("C"):
            return frozenset({aei})  # not an SP-relative C-type AE-ID: no other form
        absolute = f"//{sp_id}{aei}" if sp_id else None
        if cse and aei.startswith(f"/{cse}/") and aei.count("/") == 2:
            local.add(aei.rsplit("/", 1)[1])
    elif aei.startswith("S"):
        absolute = f"//{sp_id}/{aei}" if sp_id else None
    else:  # a C-type stem of the CSE behind the gateway
        absolute = f"//{sp_id}/{cse}/{aei}" if sp_id and cse else None
        if cse:
            local.add(f"/{cse}/{aei}")
    if absolute is None:
        return frozenset(local)
    return ae_id_forms(absolute, cse_id, sp_id) | local
