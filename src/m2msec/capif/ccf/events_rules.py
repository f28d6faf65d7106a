"""What a CAPIF event subscription may ask for, and which notifications it gets (pure; docs/ccf.md "Events").

- D133: which events each role may subscribe to (:data:`ROLE_EVENTS`); the events this CCF emits
  (:data:`EMITTED_EVENTS`); others are refused, never accepted to stay silent.
- D134: ``eventFilters`` correspond one to one with ``events`` (same length, same order); each filter may carry only
  the ID lists that apply to its event (:data:`FILTERABLE`); a filter matches a notification when every list it
  carries shares an ID with the event's detail. ``eventReq`` is refused (not honoured); ``requestTestNotification``
  and ``websockNotifConfig`` are ignored (features not negotiated: ``supportedFeatures`` answers "0").
- D136: a notification destination is an absolute ``http``/``https`` URL with a host, without user information or
  fragment, at most :data:`MAX_DESTINATION` characters; a subscriber holds at most :data:`MAX_SUBSCRIPTIONS`.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any, Final

from m2msec.capif.certificates import CAPIFRole
from m2msec.errors import CAPIFError

__all__ = [
    "EMITTED_EVENTS",
    "FILTERABLE",
    "INVOKER_EVENTS",
    "MAX_DESTINATION",
    "MAX_SUBSCRIPTIONS",
    "ROLE_EVENTS",
    "SERVICE_EVENTS",
    "SUPPORTED_FEATURES",
    "check_destination",
    "check_subscription",
    "destination_origin",
    "matches",
]

#: events about published service APIs; detail ``apiIds``
SERVICE_EVENTS: Final = frozenset({"SERVICE_API_AVAILABLE", "SERVICE_API_UNAVAILABLE", "SERVICE_API_UPDATE"})
#: events about API invokers; detail ``apiInvokerIds`` (and ``apiIds`` for a revocation)
INVOKER_EVENTS: Final = frozenset({"API_INVOKER_ONBOARDED", "API_INVOKER_OFFBOARDED",
                                   "API_INVOKER_AUTHORIZATION_REVOKED"})
#: D133: every event this CCF emits; a subscription to another CAPIFEvent value is refused (400)
EMITTED_EVENTS: Final = SERVICE_EVENTS | INVOKER_EVENTS
#: D133: the events each role may subscribe to (403 otherwise): an API invoker learns of service APIs, never of other
#: invokers' onboarding, offboarding or revocation, which are for the provider side (AEF, APF, AMF)
ROLE_EVENTS: Final[Mapping[CAPIFRole, frozenset[str]]] = {
    CAPIFRole.INVOKER: SERVICE_EVENTS,
    CAPIFRole.AEF: EMITTED_EVENTS,
    CAPIFRole.APF: EMITTED_EVENTS,
    CAPIFRole.AMF: EMITTED_EVENTS,
}
#: D134: the CAPIFEventFilter lists that apply to each event (matched against the CAPIFEventDetail lists)
FILTERABLE: Final[Mapping[str, frozenset[str]]] = {
    **{event: frozenset({"apiIds"}) for event in SERVICE_EVENTS},
    "API_INVOKER_ONBOARDED": frozenset({"apiInvokerIds"}),
    "API_INVOKER_OFFBOARDED": frozenset({"apiInvokerIds"}),
    "API_INVOKER_AUTHORIZATION_REVOKED": frozenset({"apiInvokerIds", "apiIds"}),
}
#: D134: the optional features of the Events API this CCF negotiates (none: hex "0")
SUPPORTED_FEATURES: Final = "0"
#: D136: the longest notification destination accepted
MAX_DESTINATION: Final = 2048
#: D136: subscriptions one subscriber may hold (each event fans out to at most this many deliveries per subscriber)
MAX_SUBSCRIPTIONS: Final = 32
_SCHEMES: Final = ("http", "https")
#: TS 29.500 §5.2.7.2 application errors
MANDATORY_IE_INCORRECT: Final = "MANDATORY_IE_INCORRECT"
OPTIONAL_IE_INCORRECT: Final = "OPTIONAL_IE_INCORRECT"


def check_destination(url: str) -> urllib.parse.SplitResult:
    """The parts of a notification destination (D136). Raises CAPIFError 400."""

    def refuse(why: str) -> CAPIFError:
        return CAPIFError(f"notificationDestination {why}", status=400, cause=MANDATORY_IE_INCORRECT)

    if len(url) > MAX_DESTINATION:
        raise refuse(f"is longer than {MAX_DESTINATION} characters")
    if any(not c.isprintable() or c.isspace() for c in url):
        raise refuse("contains white space or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        raise refuse("is not a URL") from None
    if parts.scheme.lower() not in _SCHEMES:
        raise refuse("must be an http:// or https:// URL")
    if not parts.hostname:
        raise refuse("has no host")
    if parts.username is not None or parts.password is not None:
        raise refuse("must not carry user information")
    if parts.fragment or url.endswith("#"):
        raise refuse("must not carry a fragment")
    if port == 0:
        raise refuse("has port 0")
    return parts


def destination_origin(url: str) -> str:
    """``scheme://host:port`` of a destination: what logs show of it (a path or query may carry a receiver's token)."""
    try:
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        port = parts.port or (443 if scheme == "https" else 80)
        host = parts.hostname or "?"
    except ValueError:
        return "<invalid destination>"
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port}"


def _invalid(detail: str, cause: str = OPTIONAL_IE_INCORRECT) -> CAPIFError:
    return CAPIFError(detail, status=400, cause=cause)


def check_subscription(role: CAPIFRole, subscription: Mapping[str, Any]) -> dict[str, Any]:
    """The EventSubscription as the CCF keeps and answers it, for a subscriber in ``role`` (D133, D134, D136).

    ``subscription`` has passed the official schema. Raises CAPIFError: 400 for what the CCF cannot honour, 403 for
    an event the role may not learn of."""
    events: Sequence[str] = subscription["events"]
    unknown = sorted({e for e in events if e not in EMITTED_EVENTS})
    if unknown:
        raise _invalid(f"events {', '.join(unknown)[:200]} are not emitted by this CCF (it emits "
                       f"{', '.join(sorted(EMITTED_EVENTS))})", MANDATORY_IE_INCORRECT)
    forbidden = sorted({e for e in events if e not in ROLE_EVENTS[role]})
    if forbidden:
        raise CAPIFError(f"a {role.value} may not subscribe to {', '.join(forbidden)}", status=403)
    filters = subscription.get("eventFilters")
    if filters is not None:
        if len(filters) != len(events):
            raise _invalid("eventFilters must hold one filter per event, in the order of events")
        for i, (event, flt) in enumerate(zip(events, filters, strict=True)):
            extra = sorted(set(flt) - FILTERABLE[event])
            if extra:
                raise _invalid(f"eventFilters[{i}] filters {event} by {', '.join(extra)}, which it does not carry "
                               f"(only {', '.join(sorted(FILTERABLE[event]))})")
    if subscription.get("eventReq") is not None:
        raise _invalid("eventReq (reporting requirements) is not supported by this CCF")
    check_destination(subscription["notificationDestination"])
    kept = {k: subscription[k] for k in ("events", "eventFilters", "notificationDestination") if k in subscription}
    if "supportedFeatures" in subscription:
        kept["supportedFeatures"] = SUPPORTED_FEATURES
    return kept


def matches(subscription: Mapping[str, Any], event: str, detail: Mapping[str, Any]) -> bool:
    """Whether ``event`` with ``detail`` is notified to ``subscription`` (D134)."""
    events: Sequence[str] = subscription.get("events", ())
    filters: Sequence[Mapping[str, Any]] | None = subscription.get("eventFilters")
    for i, subscribed in enumerate(events):
        if subscribed != event:
            continue
        if filters is None or i >= len(filters):
            return True
        if all(set(wanted) & set(detail.get(name) or ()) for name, wanted in filters[i].items()):
            return True
    return False
