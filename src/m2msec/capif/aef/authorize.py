"""The AEF's per-call authorization (TS 33.122 §6.5.2, CAPIF-2e): which method the connection used, whether the
invoker's security context at the CCF selects that method for this AEF and the API being called, and whether the
credential the connection was authenticated with is still the current one of that context (D175, D176): the AEFPSK
of the session, the invoker certificate's thumbprint, the token's context generation.

Pure: the caller gives the :class:`~m2msec.capif.aef.ccf_link.TrustedInvoker` it obtained from the CCF.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Final

from m2msec.capif.aef.ccf_link import TrustedEntry, TrustedInvoker
from m2msec.errors import CAPIFError
from m2msec.keys.secret import SecretKey

__all__ = ["NOT_AUTHORIZED_CAUSE", "WRONG_METHOD_CAUSE", "Presented", "ServedAPI", "StaleCredential", "authorize",
           "current"]

#: D166: the ProblemDetails ``cause`` of a 403 for a call made with a method the invoker's security context does not
#: select for this API (TS 33.122 §6.5.2 failure indication): the invoker renegotiates (trustedInvokers /update)
WRONG_METHOD_CAUSE: Final = "SECURITY_METHOD_NOT_SELECTED"
#: D166: the cause of a 403 for an invoker whose security context grants nothing at this AEF for this API
NOT_AUTHORIZED_CAUSE: Final = "API_INVOKER_NOT_AUTHORIZED"


class StaleCredential(CAPIFError):
    """The connection's credential is not the current one of the invoker's security context (D175, D176): an AEFPSK,
    a certificate or a token from before a re-key or a renegotiation. 403 :data:`NOT_AUTHORIZED_CAUSE`; the front
    closes the connection."""


@dataclass(frozen=True)
class Presented:
    """What a caller authenticated with: the method, and the credential the current entry must match (``psk``: the
    key of the TLS-PSK session; ``thumbprint``: the ``x5t#S256`` of the client certificate; ``generation``: the
    access token's context claim)."""

    method: str
    psk: SecretKey | None = field(default=None, repr=False)
    thumbprint: str | None = None
    generation: str | None = field(default=None, repr=False)


def _same(a: str | bytes, b: str | bytes) -> bool:
    left = a.encode() if isinstance(a, str) else a
    right = b.encode() if isinstance(b, str) else b
    return hmac.compare_digest(left, right)


def current(entry: TrustedEntry, presented: Presented) -> bool:
    """Whether ``entry`` selects the presented method with the presented credential (constant-time comparisons). An
    entry without the credential to compare with never matches (fail closed), except an OAUTH entry of a context
    written before generations existed (D176), which any token of the invoker matches."""
    if entry.method != presented.method:
        return False
    if presented.method == "PSK":
        return entry.aefpsk is not None and presented.psk is not None and \
            _same(entry.aefpsk.reveal(), presented.psk.reveal())
    if presented.method == "PKI":
        return entry.thumbprint is not None and presented.thumbprint is not None and \
            _same(entry.thumbprint, presented.thumbprint)
    if presented.method == "OAUTH":
        return entry.generation is None or (presented.generation is not None and
                                            _same(entry.generation, presented.generation))
    return False


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

    def serves_folded(self, lowered_path: str) -> bool:
        """:meth:`serves` for a lower-cased path, the prefix lower-cased too (D183)."""
        prefix = self.prefix.rstrip("/").lower()
        return lowered_path == prefix or lowered_path.startswith(prefix + "/") or prefix == ""


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


def authorize(trusted: TrustedInvoker | None, presented: Presented, aef_id: str, api: ServedAPI) -> None:
    """Raise CAPIFError 403 unless an entry of ``trusted`` about ``api`` at ``aef_id`` selects the presented method
    (``PSK``, ``PKI``, ``OAUTH``) with the presented credential (:func:`current`). An invoker with entries for the API
    but another method gets :data:`WRONG_METHOD_CAUSE`, naming the method selected (no secret); one whose entry
    selects the method with another credential :class:`StaleCredential`."""
    method = presented.method
    entries = [] if trusted is None else [e for e in trusted.entries if _concerns(e, aef_id, api)]
    if not entries:
        raise CAPIFError(f"the API invoker is not authorized for {api.name} at this AEF", status=403,
                         cause=NOT_AUTHORIZED_CAUSE)
    if any(current(e, presented) for e in entries):
        return
    if any(e.method == method for e in entries):
        raise StaleCredential(f"the {method} credential of this connection is not the current one of the API "
                              "invoker's security context (re-keyed or renegotiated): connect again with the current "
                              "one", status=403, cause=NOT_AUTHORIZED_CAUSE)
    selected = sorted({e.method for e in entries})
    raise CAPIFError(f"security method {method} is not the one selected for {api.name} at this AEF "
                     f"({', '.join(selected)}); update the security context (trustedInvokers /update)",
                     status=403, cause=WRONG_METHOD_CAUSE)
