"""The AEF Security API (TS 29.222 §8.6, ``specs/3gpp/TS29222_AEF_Security_API.yaml``) on the AEF front.

* ``POST /aef-security/v1/check-authentication`` (``CheckAuthenticationReq``): asked by an API invoker authenticated
  on this connection (TLS-PSK with AEFPSK, or its CCF-issued certificate), for its own ``apiInvokerId``; the AEF asks
  the CCF (not its cache) whether the invoker's security context names this AEF: 200 ``CheckAuthenticationRsp``, else
  403 ``API_INVOKER_NOT_AUTHORIZED`` (D172).
* ``POST /aef-security/v1/revoke-authorization`` (``RevokeAuthorizationReq``): asked by the CCF only, authenticated by
  a client certificate chaining to the CCF's CA that is no CAPIF function's and names the CCF's host (D172);
  ``revokeInfo.aefId`` must be this AEF (404 otherwise); the invoker's state is dropped as on a revocation
  notification (:meth:`AEFFront.revoke`): 200 ``RevokeAuthorizationRsp``.

Requests and answers are validated against the official file (:mod:`m2msec.capif.schema`); refusals are TS 29.122
ProblemDetails.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final

from cryptography import x509
from cryptography.x509.oid import NameOID

from m2msec.asgi import tls_extension
from m2msec.capif.aef.app import SECURITY_API_PREFIX, AEFFront, Message
from m2msec.capif.aef.authorize import Presented, StaleCredential, current
from m2msec.capif.aef.ccf_link import CCFLinkError
from m2msec.capif.certificates import CAPIFRole, capif_identity, certificate_thumbprint
from m2msec.capif.schema import SchemaViolation, validate_request, validate_response
from m2msec.errors import CAPIFError

__all__ = ["CALLERS", "SUPPORTED_FEATURES", "SecurityAPI"]

log = logging.getLogger("m2msec.aef.security")

_API: Final = "aef-security"
#: D172: who may call each operation (TS 29.222 §8.6 names the consumers: the API invoker for check-authentication,
#: the CCF for revoke-authorization); the front checks the connection's credential against it
CALLERS: Final = {"check-authentication": "an API invoker on TLS-PSK or with its CCF certificate, for its own ID",
                  "revoke-authorization": "the CCF: a client certificate from the CCF's CA naming the CCF host"}
#: D172: no optional feature of the AEF Security API is supported (TS 29.222 §8.6.6)
SUPPORTED_FEATURES: Final = "0"
_JSON: Final = [(b"content-type", b"application/json")]

Answer = tuple[int, list[tuple[bytes, bytes]], bytes]


class SecurityAPI:
    """The two operations; ``front.security_api = SecurityAPI(front, ccf_host=...)`` serves them."""

    def __init__(self, front: AEFFront, *, ccf_host: str) -> None:
        self.front, self.ccf_host = front, ccf_host

    async def __call__(self, scope: Message, body: bytes) -> Answer:
        name = scope["path"][len(SECURITY_API_PREFIX):]
        if name not in ("check-authentication", "revoke-authorization") or scope["method"] != "POST":
            raise CAPIFError("no such operation of the AEF Security API", status=404)
        operation = f"POST /{name}"
        try:
            request: Any = json.loads(body)
            validate_request(_API, operation, request)
        except (ValueError, RecursionError, SchemaViolation) as exc:  # RecursionError: deep nesting (issue 21)
            detail = str(exc) if isinstance(exc, SchemaViolation) else "the body is not JSON"
            raise CAPIFError(detail, status=400, cause="MANDATORY_IE_INCORRECT") from None
        if name == "check-authentication":
            await self._check(scope, request)
        else:
            self._revoke(scope, request)
        answer = {"supportedFeatures": SUPPORTED_FEATURES}
        validate_response(_API, operation, 200, answer)
        return 200, list(_JSON), json.dumps(answer).encode()

    async def _check(self, scope: Message, request: dict[str, Any]) -> None:
        session = tls_extension(scope).session
        if session.authentication == "psk":
            caller, presented = session.psk_identity, Presented("PSK", psk=session.psk_key)
        elif session.peer_certificate is not None:
            role, caller = capif_identity(session.peer_certificate)
            if role is not CAPIFRole.INVOKER:
                raise CAPIFError("check-authentication is asked by an API invoker", status=403)
            presented = Presented("PKI", thumbprint=certificate_thumbprint(session.peer_certificate))
        else:
            raise CAPIFError("check-authentication needs TLS-PSK or an API invoker certificate", status=401)
        invoker_id = request["apiInvokerId"]
        if invoker_id != caller:
            raise CAPIFError("an API invoker checks its own authentication only", status=403)
        try:
            trusted = await self.front.ccf.trusted_invoker(invoker_id)
        except CCFLinkError as exc:
            log.warning("AEF: check-authentication of %r: the CCF cannot be asked: %s", invoker_id, exc)
            raise CAPIFError("the CCF cannot be asked now; try again later", status=503) from None
        if trusted is None or not trusted.entries:
            raise CAPIFError("no security context of this API invoker names this AEF", status=403,
                             cause="API_INVOKER_NOT_AUTHORIZED")
        if not any(current(e, presented) for e in trusted.entries):  # D175: a replaced certificate, an old AEFPSK
            raise StaleCredential("the credential of this connection is not the current one of the API invoker's "
                                  "security context at this AEF", status=403, cause="API_INVOKER_NOT_AUTHORIZED")

    def _revoke(self, scope: Message, request: dict[str, Any]) -> None:
        cert = tls_extension(scope).session.peer_certificate
        if cert is None:
            raise CAPIFError("revoke-authorization is asked by the CCF with its certificate", status=401)
        if not self._is_ccf(cert):
            raise CAPIFError("revoke-authorization is asked by the CCF only", status=403)
        info = request["revokeInfo"]
        if info.get("aefId", self.front.aef_id) != self.front.aef_id:
            raise CAPIFError("revokeInfo names another AEF", status=404)
        self.front.revoke(str(info["apiInvokerId"]))

    def _is_ccf(self, cert: x509.Certificate) -> bool:
        """The engine verified the chain against the CCF's CA; a CAPIF function's certificate (an OU naming a role)
        is not the CCF's, and the CCF's names its host (as the CCF link checks it, D172)."""
        ous = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
        if any(str(o.value) in {r.value for r in CAPIFRole} for o in ous):
            return False
        try:
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            return False
        return self.ccf_host.lower() in (n.lower() for n in names.get_values_for_type(x509.DNSName))
