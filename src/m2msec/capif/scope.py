"""The CAPIF access token scope (TS 29.222 ``AccessTokenReq.scope``, TS 33.122 Annex C); pure, no I/O.

TS 29.222 writes the scope ``3gpp#aefId1:apiName1,apiName2;aefId2:apiName3``: one RFC 6749 ``scope-token`` (no space)
that names, per AEF, the service APIs the token is good for. On input the ``3gpp#`` prefix may be left out (issue 18);
on output it is always written. Anything else is refused with the AccessTokenErr ``invalid_scope``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

from m2msec.errors import CAPIFError

__all__ = ["MAX_SCOPE_LENGTH", "SCOPE_PREFIX", "AccessTokenError", "Scope", "is_scope_name", "parse_scope"]

#: the prefix TS 29.222 puts before the scope's AEF list
SCOPE_PREFIX: Final = "3gpp#"
#: the longest scope accepted (characters): it travels in a form body and in every token
MAX_SCOPE_LENGTH: Final = 4096
#: RFC 6749 §3.3 ``NQCHAR`` less the separators of the CAPIF scope (``#`` ``:`` ``,`` ``;``) and the space
_NAME: Final = re.compile(r"[\x21\x24-\x2b\x2d-\x39\x3c-\x5b\x5d-\x7e]+")

#: TS 29.222 / TS 29.510 ``AccessTokenErr.error`` values (RFC 6749 §5.2)
ACCESS_TOKEN_ERRORS: Final = frozenset({"invalid_request", "invalid_client", "invalid_grant", "unauthorized_client",
                                        "unsupported_grant_type", "invalid_scope"})


class AccessTokenError(CAPIFError):
    """The CCF's token endpoint refuses a request: answered as an ``AccessTokenErr`` body (:meth:`body`), HTTP 400,
    401 for ``invalid_client`` (RFC 6749 §5.2). ``error`` is one of the ``AccessTokenErr`` enum values."""

    def __init__(self, error: str, description: str) -> None:
        if error not in ACCESS_TOKEN_ERRORS:
            raise ValueError(f"not an AccessTokenErr error: {error!r}")
        super().__init__(description, status=401 if error == "invalid_client" else 400, cause=error)
        self.error = error

    def body(self) -> dict[str, str]:
        """The ``AccessTokenErr`` JSON object."""
        return {"error": self.error, "error_description": self.detail}


@dataclass(frozen=True, slots=True)
class Scope:
    """A parsed scope: ``(aefId, (apiName, ...))`` pairs in the order given, each AEF once."""

    grants: tuple[tuple[str, tuple[str, ...]], ...]

    def __post_init__(self) -> None:
        """The rules :func:`parse_scope` applies, for a scope built from names (attack18a: an API name holding
        ``;aef:`` would otherwise write a grant for another AEF into the token)."""
        aefs = [aef for aef, _ in self.grants]
        if not self.grants or len(set(aefs)) != len(aefs):
            raise _invalid("no AEF, or an AEF ID named twice")
        for aef, apis in self.grants:
            if not _NAME.fullmatch(aef) or not apis or not all(_NAME.fullmatch(api) for api in apis):
                raise _invalid("an empty or invalid AEF ID or API name")

    def covers(self, aef_id: str, api_name: str) -> bool:
        """True when this scope grants ``api_name`` of the AEF ``aef_id``."""
        return any(aef == aef_id and api_name in apis for aef, apis in self.grants)

    def aef_ids(self) -> tuple[str, ...]:
        return tuple(aef for aef, _ in self.grants)

    def __str__(self) -> str:
        return SCOPE_PREFIX + ";".join(f"{aef}:{','.join(apis)}" for aef, apis in self.grants)


def is_scope_name(text: object) -> bool:
    """Whether ``text`` can stand in a scope as an AEF ID or API name (no ``;``, ``,``, ``:``, ``#``, space...)."""
    return isinstance(text, str) and _NAME.fullmatch(text) is not None


def _invalid(why: str) -> AccessTokenError:
    return AccessTokenError("invalid_scope", f"malformed scope: {why}")


def parse_scope(text: str) -> Scope:
    """Parse ``[3gpp#]aefId:api[,api...][;aefId:api[,api...]...]``.

    Raises: AccessTokenError (``invalid_scope``): empty, too long, a character outside RFC 6749's scope-token set, an
    empty AEF ID or API name, an AEF without APIs, or an AEF named twice. Nothing else, whatever the input."""
    if not isinstance(text, str):
        raise _invalid("not a string")
    if len(text) > MAX_SCOPE_LENGTH:
        raise _invalid(f"longer than {MAX_SCOPE_LENGTH} characters")
    body = text[len(SCOPE_PREFIX):] if text.startswith(SCOPE_PREFIX) else text
    if not body:
        raise _invalid("no AEF")
    grants: list[tuple[str, tuple[str, ...]]] = []
    seen: set[str] = set()
    for part in body.split(";"):
        aef, colon, api_list = part.partition(":")
        if not colon:
            raise _invalid("an AEF without ':' and API names")
        if not _NAME.fullmatch(aef):
            raise _invalid("an empty or invalid AEF ID")
        apis = tuple(api_list.split(","))
        if not all(_NAME.fullmatch(api) for api in apis):
            raise _invalid("an empty or invalid API name")
        if aef in seen:
            raise _invalid("an AEF ID named twice")
        seen.add(aef)
        grants.append((aef, tuple(dict.fromkeys(apis))))
    return Scope(tuple(grants))
