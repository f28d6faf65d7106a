"""The AEF's per-call authorization (TS 33.122 §6.5.2, CAPIF-2e): which method the connection used, and whether the
invoker's security context at the CCF selects that method for this AEF and the API being called.

Pure: the caller gives the :class:`~m2msec.capif.aef.ccf_link.TrustedInvoker` it obtained from the CCF.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from m2msec.capif.aef.ccf_link import TrustedEntry, TrustedInvoker
from m2msec.errors import CAPIFError

__all__ = ["NOT_AUTHORIZED_CAUSE", "WRONG_METHOD_CAUSE", "ServedAPI", "authorize"]

#: D166: the ProblemDetails ``cause`` of a 403 for a call made with a method the invoker's security context does not
#: select for this API (TS 33.122 §6.5.2 failure indication): the invoker renegotiates (trustedInvokers /update)
WRONG_METHOD_CAUSE: Final = "SECURITY_METHOD_NOT_SELECTED"
#: D166: the cause of a 403 for an invoker whose security context grants nothing at this AEF for this API
NOT_AUTHORIZED_CAUSE: Final = "API_INVOKER_NOT_AUTHORIZED"


@dataclass(frozen=True)
class ServedAPI:
    """One service API the AEF front serves: its name (as published), the path prefix requests to it start with, its
    ``apiId`` at the CCF (when known) and the P0 of the listener's interface (D115)."""

    name: str
    prefix: str
    interface: str
    api_id: str | None = None

    def serves(self, path: str) -> bool:
        prefix = self.prefix.rstrip("/")
        return path == prefix or path.startswith(prefix + "/") or prefix == ""


def _concerns(entry: TrustedEntry, aef_id: str, api: ServedAPI) -> bool:
    """Whether ``entry`` is about ``api`` at ``aef_id``: it names the listener's interface, the API's ID, or the AEF;
    and its grant (when it has one) covers the API."""
    if entry.interface is not None:
        located = entry.interface == api.interface
    elif entry.api_id is not None:
        located = api.api_id is not None and entry.api_id == api.api_id
    else:
        located = entry.aef_id == aef_id
    return located and (entry.scope is None or entry.scope.covers(aef_id, api.name))


def authorize(trusted: TrustedInvoker | None, method: str, aef_id: str, api: ServedAPI) -> None:
    """Raise CAPIFError 403 unless an entry of ``trusted`` about ``api`` at ``aef_id`` selects ``method`` (``PSK``,
    ``PKI``, ``OAUTH``). An invoker with entries for the API but another method gets :data:`WRONG_METHOD_CAUSE`,
    naming the method selected (no secret)."""
    entries = [] if trusted is None else [e for e in trusted.entries if _concerns(e, aef_id, api)]
    if not entries:
        raise CAPIFError(f"the API invoker is not authorized for {api.name} at this AEF", status=403,
                         cause=NOT_AUTHORIZED_CAUSE)
    if any(e.method == method for e in entries):
        return
    selected = sorted({e.method for e in entries})
    raise CAPIFError(f"security method {method} is not the one selected for {api.name} at this AEF "
                     f"({', '.join(selected)}); update the security context (trustedInvokers /update)",
                     status=403, cause=WRONG_METHOD_CAUSE)
