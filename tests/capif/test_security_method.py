"""CAPIF-2e security method selection (TS 33.122 §6.3): interface level overrides profile level (TS 29.222
InterfaceDescription.securityMethods), the intersection with the invoker's preferences, one fixed priority (D116)."""

from __future__ import annotations

import itertools

import pytest

from m2msec.capif.security_method import (
    DEFAULT_PRIORITY,
    NO_COMMON_METHOD_CAUSE,
    SecurityMethod,
    published_methods,
    select_method,
)
from m2msec.errors import CAPIFError

PSK, PKI, OAUTH = SecurityMethod.PSK, SecurityMethod.PKI, SecurityMethod.OAUTH


def test_the_enum_is_the_spec_s() -> None:
    assert [m.value for m in SecurityMethod] == ["PSK", "PKI", "OAUTH"]  # TS 29.222 SecurityMethod


def test_interface_methods_take_precedence_over_the_profile() -> None:
    assert published_methods([PSK, PKI], [OAUTH]) == {OAUTH}
    assert published_methods([PSK, PKI], []) == {PSK, PKI}  # an empty list overrides nothing
    assert published_methods([PSK], None) == {PSK}
    assert published_methods(None, None) == set()


@pytest.mark.parametrize(("preferred", "published", "selected"), [
    ([PSK, PKI, OAUTH], [PSK, PKI, OAUTH], PSK),
    ([OAUTH, PKI], [PSK, PKI, OAUTH], PKI),
    ([OAUTH], [OAUTH, PSK], OAUTH),
    ([PKI, PSK], [PSK], PSK),
])
def test_the_first_common_method_in_priority(preferred: list[SecurityMethod], published: list[SecurityMethod],
                                             selected: SecurityMethod) -> None:
    assert select_method(preferred, published) == selected


def test_the_order_of_the_lists_does_not_matter() -> None:
    for preferred in itertools.permutations([PSK, PKI, OAUTH]):
        for published in itertools.permutations([PKI, OAUTH]):
            assert select_method(preferred, published) == PKI


def test_a_ccf_policy_may_reorder() -> None:
    assert select_method([PSK, OAUTH], [PSK, OAUTH], priority=(OAUTH, PSK, PKI)) == OAUTH
    assert DEFAULT_PRIORITY == (PSK, PKI, OAUTH)


def test_nothing_in_common_is_a_problem_with_a_cause() -> None:
    with pytest.raises(CAPIFError) as err:
        select_method([PSK], [PKI, OAUTH])
    assert err.value.status == 400 and err.value.cause == NO_COMMON_METHOD_CAUSE
    assert "prefers PSK" in err.value.detail and "offers OAUTH, PKI" in err.value.detail
    with pytest.raises(CAPIFError):
        select_method([PSK], [])
