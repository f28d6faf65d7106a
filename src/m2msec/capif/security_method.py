"""Selection of the CAPIF-2e security method (TS 33.122 §6.3; TS 29.222 CAPIF_Security_API, trustedInvokers PUT);
pure, no I/O.

The API invoker names, per interface (``interfaceDetails``) or per AEF (``aefId``), the methods it prefers
(``prefSecurityMethods``); the AEF published the methods it supports in its ``AefProfile.securityMethods`` and,
overriding them, per ``InterfaceDescription.securityMethods`` (TS 29.222: "it take[s] precedence over the security
methods provided in AefProfile"). The CCF selects one method of both lists (``selSecurityMethod``) by its own fixed
priority (D116), so the answer never depends on the order of a list the schema gives no meaning to.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from typing import Final

from m2msec.errors import CAPIFError

__all__ = ["DEFAULT_PRIORITY", "NO_COMMON_METHOD_CAUSE", "SecurityMethod", "published_methods", "select_method"]


class SecurityMethod(enum.StrEnum):
    """TS 29.222 ``SecurityMethod`` (CAPIF_Publish_Service_API)."""

    PSK = "PSK"  # security method 1, TLS-PSK with AEFPSK (TS 33.122 §6.5.2.1)
    PKI = "PKI"  # security method 2, mutual TLS with the invoker's CAPIF certificate (§6.5.2.2)
    OAUTH = "OAUTH"  # security method 3, TLS + OAuth 2.0 access token from the CCF (§6.5.2.3, Annex C)


#: docs/decisions.md D116: the CCF's priority among the methods both sides allow. PSK first: it binds CAPIF-2e to the
#: invoker's authenticated CAPIF-1e session (AEFPSK) and needs no per-call token; then PKI (the invoker's certificate,
#: revocable at the CCF); OAUTH last (a bearer token, valid until it expires). A CCF config may give another order.
DEFAULT_PRIORITY: Final[tuple[SecurityMethod, ...]] = (SecurityMethod.PSK, SecurityMethod.PKI, SecurityMethod.OAUTH)
#: the ``cause`` of the ProblemDetails when no method is common (TS 29.122 leaves the value to the API)
NO_COMMON_METHOD_CAUSE: Final = "NO_COMMON_SECURITY_METHOD"


def published_methods(profile_methods: Iterable[SecurityMethod] | None,
                      interface_methods: Iterable[SecurityMethod] | None) -> frozenset[SecurityMethod]:
    """The methods an AEF publishes for one interface: the interface's own when it lists any, else its profile's."""
    own = frozenset(interface_methods or ())
    return own if own else frozenset(profile_methods or ())


def select_method(preferred: Iterable[SecurityMethod], published: Iterable[SecurityMethod],
                  priority: Sequence[SecurityMethod] = DEFAULT_PRIORITY) -> SecurityMethod:
    """The method of both ``preferred`` (the invoker's) and ``published`` (the AEF's) that comes first in
    ``priority``.

    Raises: CAPIFError (400, cause :data:`NO_COMMON_METHOD_CAUSE`): none in common (the invoker may re-negotiate
    with other preferences)."""
    common = frozenset(preferred) & frozenset(published)
    for method in priority:
        if method in common:
            return method
    wanted = ", ".join(sorted(m.value for m in frozenset(preferred))) or "none"
    offered = ", ".join(sorted(m.value for m in frozenset(published))) or "none"
    raise CAPIFError(f"no security method in common: the API invoker prefers {wanted}, the AEF offers {offered}",
                     status=400, cause=NO_COMMON_METHOD_CAUSE)
