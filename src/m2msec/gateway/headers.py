"""Header hygiene of the HTTP gateway (pure: no I/O).

The gateway checks one ``X-M2M-Origin`` and forwards the request; if a request could carry two
(repeated header, a comma-joined list, an obs-fold continuation that h11 joins with a space, or a
``_`` spelling that a WSGI/CGI server maps onto the same name), the CSE might read another value than
the one checked. Such requests are refused with 400 / rsc 4000 and never forwarded
(:func:`check_request_headers`). The gateway's own ``X-M2MSEC-*`` namespace is removed from whatever
a client sends and from whatever the CSE answers (:func:`strip_gateway_headers`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Final

from m2msec.errors import BadRequest

__all__ = [
    "GATEWAY_HEADER_PREFIX",
    "SINGLE_VALUED_HEADERS",
    "UNAMBIGUOUS_VALUE_HEADERS",
    "check_request_headers",
    "is_single_valued",
    "normalize_header_name",
    "strip_gateway_headers",
]

#: Request headers that must appear at most once (docs/decisions.md D21). ``x-m2m-*`` is every oneM2M
#: TS-0009 parameter header (From, Request Identifier, release version, group request, notification URIs,
#: ..., and any vendor one such as ACME's ``X-M2M-UTCMD``): none of them is a list, and a CSE keeps one
#: value (Werkzeug's ``headers.get`` keeps the first, a dict built from the list the last).
#: ``authorization`` carries HTTP credentials some CSEs (ACME) take an identity from; ``content-type``
#: carries the resource type (``ty``) of a CREATE.
SINGLE_VALUED_HEADERS: Final = ("x-m2m-*", "authorization", "content-type")

#: Identity headers whose single value must also not hold a ``,`` (a list to a CSE that splits one) or
#: whitespace (what is left of an obs-fold continuation after h11 joins it): a oneM2M ID has neither.
UNAMBIGUOUS_VALUE_HEADERS: Final = frozenset({"x-m2m-origin"})

#: The gateway's own namespace: every header whose name starts with it is removed from client requests
#: and from CSE responses; the gateway adds its identity headers after that.
GATEWAY_HEADER_PREFIX: Final = "x-m2msec-"


def normalize_header_name(name: str) -> str:
    """The name as a CSE behind WSGI/CGI may see it: lower case, ``_`` read as ``-``."""
    return name.strip().lower().replace("_", "-")


def is_single_valued(name: str) -> bool:
    """True when ``name`` (normalized) is one of :data:`SINGLE_VALUED_HEADERS`."""
    norm = normalize_header_name(name)
    return any(norm == p or (p.endswith("*") and norm.startswith(p[:-1])) for p in SINGLE_VALUED_HEADERS)


def check_request_headers(headers: Iterable[tuple[str, str]]) -> None:
    """Refuse a request whose single-valued headers are repeated, misspelt or ambiguous.

    Raises:
        BadRequest: (400 / rsc 4000) naming the header; the request must not be forwarded.
    """
    seen: Counter[str] = Counter()
    for name, value in headers:
        norm = normalize_header_name(name)
        if not is_single_valued(norm):
            continue
        if norm != name.lower():
            raise BadRequest(f"header {name[:40]!r} is a disguised {norm!r} header")
        seen[norm] += 1
        if seen[norm] > 1:
            raise BadRequest(f"header {norm!r} is repeated (it must appear once)")
        if norm in UNAMBIGUOUS_VALUE_HEADERS and any(c == "," or c.isspace() for c in value.strip()):
            raise BadRequest(f"header {norm!r} holds a list or a folded value (one identifier expected)")


def strip_gateway_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """``headers`` without any in the gateway's namespace (:data:`GATEWAY_HEADER_PREFIX`, any spelling)."""
    return [(k, v) for k, v in headers if not normalize_header_name(k).startswith(GATEWAY_HEADER_PREFIX)]
