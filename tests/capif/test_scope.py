"""m2msec.capif.scope: the ``3gpp#aefId:api,api;...`` access token scope (TS 29.222) and AccessTokenErr."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from m2msec.capif.scope import MAX_SCOPE_LENGTH, AccessTokenError, Scope, parse_scope


def test_parse_with_and_without_prefix() -> None:
    for text in ("3gpp#aefId1:api1,api2;aefId2:api3", "aefId1:api1,api2;aefId2:api3"):
        scope = parse_scope(text)
        assert scope == Scope((("aefId1", ("api1", "api2")), ("aefId2", ("api3",))))
        assert str(scope) == "3gpp#aefId1:api1,api2;aefId2:api3"
        assert scope.aef_ids() == ("aefId1", "aefId2")
        assert scope.covers("aefId1", "api2") and scope.covers("aefId2", "api3")
        assert not scope.covers("aefId2", "api1") and not scope.covers("aefId3", "api1")
        assert not scope.covers("aefId", "api1") and not scope.covers("aefId1", "api")


def test_parse_keeps_names_exact_and_drops_repeated_apis() -> None:
    assert str(parse_scope("AEF-1.x:Api_1,api_1,Api_1")) == "3gpp#AEF-1.x:Api_1,api_1"
    assert parse_scope("a:b").covers("a", "b") and not parse_scope("a:b").covers("A", "b")


@pytest.mark.parametrize("text", [
    "", "3gpp#", "aef1", "aef1:", ":api1", "aef1:api1,", "aef1:,api1", "aef1:api1;", ";aef1:api1",
    "aef1:api1;;aef2:api2", "aef1:api1;aef1:api2", "aef 1:api1", "aef1:api 1", "aef1:api1 aef2:api2",
    "aef1:a:b", "3gpp#3gpp#aef1:api1", 'aef1:"api"', "aef1:api\\1", "aef1:api1\n", "aéf:api", "aef1:api\x00",
    "a:" + "b" * MAX_SCOPE_LENGTH,
])
def test_malformed_scopes_are_invalid_scope(text: str) -> None:
    with pytest.raises(AccessTokenError) as info:
        parse_scope(text)
    assert info.value.error == "invalid_scope" and info.value.status == 400 and info.value.cause == "invalid_scope"
    assert info.value.body()["error"] == "invalid_scope"


def test_not_a_string() -> None:
    with pytest.raises(AccessTokenError):
        parse_scope(None)  # type: ignore[arg-type]


@given(st.text(max_size=200) | st.from_regex(r"(3gpp#)?[a-z:,;#]{0,30}", fullmatch=True))
def test_parser_raises_nothing_but_invalid_scope(text: str) -> None:
    try:
        scope = parse_scope(text)
    except AccessTokenError as exc:
        assert exc.error == "invalid_scope"
    else:
        assert parse_scope(str(scope)) == scope  # the canonical form parses back to the same scope


_NAMES = st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x7E, exclude_characters='"#,:;\\'),
                 min_size=1, max_size=12)


@given(st.dictionaries(_NAMES, st.lists(_NAMES, min_size=1, max_size=4, unique=True), min_size=1, max_size=5),
       st.booleans())
def test_well_formed_scopes_round_trip(grants: dict[str, list[str]], prefix: bool) -> None:
    text = ";".join(f"{aef}:{','.join(apis)}" for aef, apis in grants.items())
    scope = parse_scope(("3gpp#" if prefix else "") + text)
    assert str(scope) == "3gpp#" + text
    for aef, apis in grants.items():
        assert all(scope.covers(aef, api) for api in apis)
