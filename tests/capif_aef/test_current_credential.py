"""The AEF's check that a call's credential is the current one of the invoker's security context (D175, D176):
:func:`m2msec.capif.aef.authorize.authorize` with each method's credential, without sockets (the same checks over
real TLS against a real CCF are in test_attack_aef.py)."""

from __future__ import annotations

import pytest

from m2msec.capif.aef.authorize import (
    NOT_AUTHORIZED_CAUSE,
    WRONG_METHOD_CAUSE,
    Presented,
    ServedAPI,
    StaleCredential,
    authorize,
    current,
)
from m2msec.capif.aef.ccf_link import TrustedEntry, TrustedInvoker
from m2msec.errors import CAPIFError
from m2msec.keys.secret import SecretKey

AEF = "AEFone"
P0 = "aef.example:8443/api"
API = ServedAPI("api", "/api", P0)
KEY, OTHER_KEY = SecretKey(bytes(range(32))), SecretKey(bytes(range(1, 33)))
PRINT, OTHER_PRINT = "A" * 43, "B" * 43


def invoker(*entries: TrustedEntry) -> TrustedInvoker:
    return TrustedInvoker("INV1", entries)


def entry(method: str, **kw: object) -> TrustedEntry:
    return TrustedEntry(method, P0, AEF, None, **kw)  # type: ignore[arg-type]


def test_the_current_credential_of_each_method_is_authorized() -> None:
    authorize(invoker(entry("PSK", aefpsk=KEY)), Presented("PSK", psk=SecretKey(bytes(range(32)))), AEF, API)
    authorize(invoker(entry("PKI", thumbprint=PRINT)), Presented("PKI", thumbprint=PRINT), AEF, API)
    authorize(invoker(entry("OAUTH", generation="g1")), Presented("OAUTH", generation="g1"), AEF, API)


@pytest.mark.parametrize(("stored", "presented"), [
    (entry("PSK", aefpsk=KEY), Presented("PSK", psk=OTHER_KEY)),
    (entry("PSK", aefpsk=KEY), Presented("PSK")),
    (entry("PKI", thumbprint=PRINT), Presented("PKI", thumbprint=OTHER_PRINT)),
    (entry("PKI"), Presented("PKI", thumbprint=PRINT)),  # an entry without a thumbprint: fail closed
    (entry("OAUTH", generation="g2"), Presented("OAUTH", generation="g1")),
    (entry("OAUTH", generation="g2"), Presented("OAUTH")),  # a token without the claim
], ids=["old-aefpsk", "no-key", "replaced-certificate", "no-thumbprint", "old-generation", "no-generation"])
def test_a_stale_credential_is_refused_and_says_so(stored: TrustedEntry, presented: Presented) -> None:
    with pytest.raises(StaleCredential) as refused:
        authorize(invoker(stored), presented, AEF, API)
    assert refused.value.status == 403 and refused.value.cause == NOT_AUTHORIZED_CAUSE
    assert KEY.reveal().hex() not in str(refused.value) and PRINT not in str(refused.value)


def test_another_method_is_still_the_wrong_method_indication() -> None:
    with pytest.raises(CAPIFError) as refused:
        authorize(invoker(entry("PKI", thumbprint=PRINT)), Presented("PSK", psk=KEY), AEF, API)
    assert not isinstance(refused.value, StaleCredential) and refused.value.cause == WRONG_METHOD_CAUSE


def test_a_context_from_before_generations_accepts_the_invokers_tokens() -> None:
    """D176: a context the CCF stored before it gave generations has no authenticationInfo for OAUTH."""
    assert current(entry("OAUTH"), Presented("OAUTH"))
    assert current(entry("OAUTH"), Presented("OAUTH", generation="g1"))


def test_the_presented_credential_is_not_in_repr() -> None:
    text = repr(Presented("PSK", psk=KEY)) + repr(Presented("OAUTH", generation="secret-generation"))
    assert KEY.reveal().hex() not in text and "secret-generation" not in text
