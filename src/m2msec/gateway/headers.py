"""Header hygiene of the HTTP gateway (pure: no I/O).

The gateway checks one ``X-M2M-Origin`` and forwards the request; if a request could carry two
(repeated header, a comma-joined list, an obs-fold continuation that h11 joins with a space, or a
``_`` spelling that a WSGI/CGI server maps onto the same name), the CSE might read another value than
the one checked. Such requests are refused with 400 / rsc 4000 and never forwarded
(:func:`check_request_headers`). The gateway's own ``X-M2MSEC-*`` namespace is removed from whatever
a client sends and from whatever the CSE answers (:func:`strip_gateway_headers`). A request whose framing
two parsers could read differently (Content-Length with Transfer-Encoding, Transfer-Encoding on HTTP/1.0) or
whose head exceeds the limit is refused before its body is read (:func:`check_request_framing`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Final

from m2msec.errors import BadRequest

__all__ = [
    "GATEWAY_HEADER_PREFIX",
    "SINGLE_VALUED_HEADERS",
    "UNAMBIGUOUS_VALUE_HEADERS",
    "check_request_framing",
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

#: Largest request head (bytes: request line and header lines) the gateway reads, whether it arrives in pieces
#: (h11's ``max_incomplete_event_size``) or in one TLS record (counted by :func:`check_request_framing`). D226.
MAX_REQUEST_HEAD: Final = 16384

#: A request with both framings is refused (400, connection closed), not read by Transfer-Encoding alone as
#: RFC 9112 §6.3 item 3 permits: §6.1 calls it a possible smuggling attempt and a CSE or proxy in between may
#: pick the other one. D225.
REFUSE_CONTENT_LENGTH_WITH_TRANSFER_ENCODING: Final = True

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


def check_request_framing(http_version: str, method: str, target: str,
                          headers: Sequence[tuple[str, str]]) -> None:
    """Refuse a request head whose body framing is ambiguous or which is larger than :data:`MAX_REQUEST_HEAD`.

    Raises:
        BadRequest: both Content-Length and Transfer-Encoding (D225, RFC 9112 §6.1), Transfer-Encoding on an
            HTTP/1.0 request (§6.1: its framing is faulty), a head over the limit (D226).
    """
    size = len(method) + len(target) + len(" HTTP/1.1\r\n") + sum(len(k) + len(v) + 4 for k, v in headers)
    if size > MAX_REQUEST_HEAD:
        raise BadRequest(f"request head of {size} bytes exceeds the {MAX_REQUEST_HEAD}-byte limit")
    names = {k.lower() for k, _ in headers}
    if "transfer-encoding" in names:
        if "content-length" in names and REFUSE_CONTENT_LENGTH_WITH_TRANSFER_ENCODING:
            raise BadRequest("both Content-Length and Transfer-Encoding (ambiguous framing)")
        if http_version == "1.0":
            raise BadRequest("Transfer-Encoding on an HTTP/1.0 request (faulty framing)")
