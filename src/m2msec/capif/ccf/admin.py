"""The operator's actions on a CCF's store (``m2msec ccf onboarding-credential|revoke-credential|offboard``).

Every credential issued is recorded (``capif-credential`` / jti: subject and expiry, no secret: the JWT itself is
not kept), so that revoking an unknown ``jti`` (a typo) is an error rather than a silent no-op (D145). Revoking a
credential that was already used cuts off what it created: the invoker it onboarded is offboarded.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Final

from m2msec.capif.ccf.context import CCF, load_or_create_token_key
from m2msec.capif.ccf.invokers import INVOKER_KIND, REVOKED_KIND, offboard_invoker
from m2msec.capif.tokens import issue_onboarding_credential
from m2msec.errors import CAPIFError, Conflict, NotFound
from m2msec.store import Document, KeyStore

__all__ = ["CREDENTIAL_KIND", "IssuedCredential", "issue_credential", "revoke_credential"]

#: the store kind of the record of each onboarding credential issued (record id: its jti)
CREDENTIAL_KIND: Final = "capif-credential"


@dataclass(frozen=True)
class IssuedCredential:
    token: str
    jti: str
    expires: int

    def __repr__(self) -> str:
        return f"IssuedCredential(jti={self.jti!r}, expires={self.expires})"


def issue_credential(store: KeyStore, *, issuer: str, subject: str, lifetime: int, now: int, purpose: str,
                     audience: str | None = None, jti: str | None = None) -> IssuedCredential:
    """Sign an onboarding credential for ``purpose`` (``invoker`` or ``provider``, D147) with the CCF's token key
    and record its jti."""
    jti = jti or secrets.token_hex(16)
    token = issue_onboarding_credential(load_or_create_token_key(store), issuer=issuer, subject=subject,
                                        lifetime=lifetime, now=now, jti=jti, audience=audience, purpose=purpose)
    store.put_document(Document(CREDENTIAL_KIND, jti, {"subject": subject, "purpose": purpose,
                                                       "expires": now + lifetime}, expires=float(now + lifetime)))
    return IssuedCredential(token, jti, now + lifetime)


async def revoke_credential(ccf: CCF, jti: str) -> str:
    """Revoke the credential ``jti``: before its use it can no longer onboard anyone; after, the invoker it
    onboarded is offboarded. Returns what was done. Raises CAPIFError: unknown jti, or used by a provider."""
    store = ccf.store
    if await store.get_document(CREDENTIAL_KIND, jti) is None:
        raise CAPIFError(f"no onboarding credential with jti {jti} was issued by this CCF (or it has expired)",
                         status=404)
    try:
        await store.put_document(Document(REVOKED_KIND, "jti:" + jti, {"reason": "revoked", "at": ccf.clock()}))
        return f"revoked onboarding credential {jti}"
    except Conflict:
        pass
    doc = await store.get_document(REVOKED_KIND, "jti:" + jti)
    if doc is None or doc.body.get("reason") != "used":
        return f"onboarding credential {jti} was already revoked"
    created = str(doc.body.get("by", ""))
    if await store.get_document(INVOKER_KIND, created) is None:
        if created.startswith("INV"):
            return f"onboarding credential {jti} was used by API invoker {created}, offboarded since"
        raise CAPIFError(f"onboarding credential {jti} registered API provider {created}: its AMF deregisters it",
                         status=409)
    try:
        await offboard_invoker(ccf, created)
    except NotFound:
        return f"onboarding credential {jti} was used by API invoker {created}, offboarded since"
    return f"onboarding credential {jti} was used by API invoker {created}: offboarded"
