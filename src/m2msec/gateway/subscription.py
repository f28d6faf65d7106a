"""Service subscription rules for CREATE ``<AE>`` (issue 17, pure: no I/O but reading a rule file).

TS-0001 §10.2.2.2 (AE registration) and Table 9.6.29-2: a ``<serviceSubscribedAppRule>`` (``asar``) holds

* ``applicableCredIDs`` (``apci``; older texts and TS-0013 say ``aci``): the Credential-IDs it applies to,
* ``allowedApp-IDs`` (``aai``): the App-IDs (request attribute ``api``) it admits,
* ``allowedAEs`` (``aae``): the AE-ID-Stems (request ``From``) it admits,
* ``allowedRole-IDs`` (``ari``): kept, not evaluated here.

Each is a list of patterns where ``*`` stands for any sequence of characters (zero or more), anywhere in the
pattern; every other character is literal (no regular expression is ever built from a pattern).

A CREATE ``<AE>`` through an SA of Credential-ID C with App-ID A and ``From`` F is allowed when a rule that
applies to C (one of its ``apci`` patterns matches C) has an ``aai`` pattern matching A and an ``aae``
pattern matching F. No rule applies to C: SERVICE_SUBSCRIPTION_NOT_ESTABLISHED (4128); rules apply but none
admits (A, F): APP_RULE_VALIDATION_FAILED (4126). F absent, empty, ``C`` or ``S`` asks the registrar to
assign an AE-ID-Stem of that kind (D98, :data:`REGISTRAR_ASSIGNED_KIND`).

:class:`RuleTable` is also a :class:`m2msec.gateway.rules.CredentialResolver` (D99): not wired into the
gateway yet.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Final

from m2msec.errors import AppRuleValidationFailed, ConfigurationError, ServiceSubscriptionNotEstablished
from m2msec.tomlfile import load_toml

__all__ = [
    "MAX_PATTERNS_PER_FIELD",
    "MAX_PATTERN_LENGTH",
    "MAX_RULES",
    "REGISTRAR_ASSIGNED_KIND",
    "WILDCARD",
    "AppRule",
    "RuleTable",
    "check_ae_registration",
    "covers_kind",
    "load_rules",
    "match",
    "rules_from_json",
]

#: The only wildcard: any sequence of characters, zero or more. A pattern containing it names no single
#: identity, so :meth:`RuleTable.resolve` answers only the ``aae`` patterns without it (docs/decisions.md D99).
WILDCARD: Final = "*"

#: Longest pattern accepted (Credential-IDs, App-IDs and AE-ID-Stems are short identifiers).
MAX_PATTERN_LENGTH: Final = 256
#: Most patterns in one field (``apci``, ``aai``, ``aae``, ``ari``) of one rule.
MAX_PATTERNS_PER_FIELD: Final = 64
#: Most rules in one table (one rule file or one set of resources).
MAX_RULES: Final = 4096

#: docs/decisions.md D98: a ``From`` the registrar replaces by an AE-ID-Stem it assigns (TS-0001 §10.2.2.2:
#: absent or empty, or ``C`` / ``S`` to choose the kind), mapped to the first letter of what it assigns
#: (absent or empty: a C-type stem, as ACME does). Such a registration is admitted only when one ``aae``
#: pattern admits *every* stem of that kind (``*``, ``C*``, ``*C*``...): a pattern naming particular stems
#: (``C123``, ``C1*``) cannot know which stem the registrar will pick.
REGISTRAR_ASSIGNED_KIND: Final[Mapping[str, str]] = MappingProxyType({"": "C", "C": "C", "S": "S"})

# JSON short names (TS-0004 V3.32) -> AppRule fields; "aci" is the older name of "apci"
_FIELDS: Final = {"apci": "credential_ids", "aci": "credential_ids", "aai": "app_ids", "aae": "ae_ids",
                  "ari": "role_ids"}
_REQUIRED: Final = ("apci", "aai", "aae")


@functools.lru_cache(maxsize=4096)
def _segments(pattern: str) -> tuple[str, ...]:
    return tuple(pattern.split(WILDCARD))


def match(pattern: str, subject: str) -> bool:
    """Whether ``subject`` matches ``pattern``, where ``*`` is any sequence of characters (zero or more).

    No backtracking: the literal segments between wildcards are located once each, left to right, at their
    leftmost position (which is optimal for ``*``-only patterns), so the work is linear in ``subject`` for a
    bounded pattern."""
    parts = _segments(pattern)
    if len(parts) == 1:
        return pattern == subject
    head, tail = parts[0], parts[-1]
    if len(subject) < len(head) + len(tail) or not subject.startswith(head) or not subject.endswith(tail):
        return False
    pos, end = len(head), len(subject) - len(tail)
    for seg in parts[1:-1]:
        if seg:
            found = subject.find(seg, pos, end)
            if found < 0:
                return False
            pos = found + len(seg)
    return True


def covers_kind(pattern: str, kind: str) -> bool:
    """Whether ``pattern`` matches every string that starts with ``kind`` (D98).

    It must end with ``*`` (the rest of the stem is arbitrary) and its literal characters must fit in every
    such string, the shortest being ``kind`` itself: none, or exactly ``kind``."""
    return pattern.endswith(WILDCARD) and pattern.replace(WILDCARD, "") in ("", kind)


def _validate_pattern(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ConfigurationError(f"{where}: a pattern must be a string, not {type(value).__name__}")
    if not value:
        raise ConfigurationError(f"{where}: empty pattern")
    if len(value) > MAX_PATTERN_LENGTH:
        raise ConfigurationError(f"{where}: pattern longer than {MAX_PATTERN_LENGTH} characters")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in value):
        raise ConfigurationError(f"{where}: pattern {value[:40]!r} contains a control character")
    return value


def _patterns(value: object, where: str) -> tuple[str, ...]:
    items: Sequence[object]
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, list | tuple):
        items = value
    else:
        raise ConfigurationError(f"{where}: must be a string or a list of strings, not {type(value).__name__}")
    if len(items) > MAX_PATTERNS_PER_FIELD:
        raise ConfigurationError(f"{where}: more than {MAX_PATTERNS_PER_FIELD} patterns")
    return tuple(_validate_pattern(item, f"{where}[{i}]") for i, item in enumerate(items))


@dataclass(frozen=True)
class AppRule:
    """One ``<serviceSubscribedAppRule>``: ``apci``, ``aai``, ``aae`` pattern lists (``ari`` kept only)."""

    credential_ids: tuple[str, ...]
    app_ids: tuple[str, ...]
    ae_ids: tuple[str, ...]
    role_ids: tuple[str, ...] = ()

    def applies_to(self, credential_id: str) -> bool:
        """Whether one ``apci`` pattern matches ``credential_id``."""
        return any(match(p, credential_id) for p in self.credential_ids)

    def admits_app(self, app_id: str) -> bool:
        return any(match(p, app_id) for p in self.app_ids)

    def admits_ae(self, from_: str | None) -> bool:
        """Whether one ``aae`` pattern admits ``From`` (or, for a stem the registrar assigns, its kind: D98)."""
        kind = REGISTRAR_ASSIGNED_KIND.get(from_ or "")
        if kind is not None:
            return any(covers_kind(p, kind) for p in self.ae_ids)
        assert from_ is not None
        return any(match(p, from_) for p in self.ae_ids)

    @classmethod
    def from_json(cls, data: Mapping[str, object], where: str = "rule", *, strict: bool = False) -> AppRule:
        """A rule from its oneM2M JSON short names (``apci`` or ``aci``, ``aai``, ``aae``, ``ari``), each a
        string or a list of strings. ``strict``: other keys are errors (rule files), else ignored (resource
        attributes such as ``rn``, ``ri``). Raises :class:`ConfigurationError` naming ``where`` and the field."""
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"{where}: must be a table of apci, aai, aae, not {type(data).__name__}")
        if "apci" in data and "aci" in data:
            raise ConfigurationError(f"{where}: both apci and aci (aci is the older name of apci): give one")
        if strict:
            unknown = sorted(str(k) for k in data if k not in _FIELDS)
            if unknown:
                raise ConfigurationError(f"{where}: unknown field {unknown[0]!r} (known: apci, aci, aai, aae, ari)")
        values: dict[str, tuple[str, ...]] = {}
        for name in _REQUIRED:
            key = "aci" if name == "apci" and "aci" in data else name
            if key not in data:
                raise ConfigurationError(f"{where}: missing field {name}")
            values[_FIELDS[name]] = _patterns(data[key], f"{where}.{key}")
            if not values[_FIELDS[name]]:
                raise ConfigurationError(f"{where}.{key}: no pattern (a rule needs at least one)")
        values["role_ids"] = _patterns(data["ari"], f"{where}.ari") if "ari" in data else ()
        return cls(**values)


def rules_from_json(items: Iterable[Mapping[str, object]], source: str = "rules") -> tuple[AppRule, ...]:
    """Rules from oneM2M JSON (``asar`` short names), errors naming ``source`` and the rule index."""
    rules: list[AppRule] = []
    for index, item in enumerate(items):
        if index >= MAX_RULES:
            raise ConfigurationError(f"{source}: more than {MAX_RULES} rules")
        rules.append(AppRule.from_json(item, f"{source}: rule {index}"))
    return tuple(rules)


def load_rules(path: Path) -> tuple[AppRule, ...]:
    """The rules of a TOML file: ``[[app_rule]]`` tables with ``apci`` (or ``aci``), ``aai``, ``aae``, ``ari``.

    Raises :class:`ConfigurationError` naming the file, the rule index and the field."""
    data = load_toml(path)
    unknown = sorted(k for k in data if k != "app_rule")
    if unknown:
        raise ConfigurationError(f"{path}: unknown key {unknown[0]!r} (rules are [[app_rule]] tables)")
    items = data.get("app_rule", [])
    if not isinstance(items, list):
        raise ConfigurationError(f"{path}: app_rule must be an array of tables ([[app_rule]])")
    if len(items) > MAX_RULES:
        raise ConfigurationError(f"{path}: more than {MAX_RULES} rules")
    return tuple(AppRule.from_json(item, f"{path}: app_rule {i}", strict=True) for i, item in enumerate(items))


def _shown(value: str | None) -> str:
    return "none" if value is None else repr(value[:80])


def check_ae_registration(credential_id: str | None, app_id: str | None, from_: str | None,
                          rules: Iterable[AppRule]) -> None:
    """Raise unless the rules allow a CREATE ``<AE>`` with App-ID ``app_id`` and ``From`` ``from_`` through an
    SA of Credential-ID ``credential_id`` (None: the SA has none, so no rule can apply).

    Raises: ServiceSubscriptionNotEstablished (4128): no rule applies to the Credential-ID.
    AppRuleValidationFailed (4126): rules apply, none admits the App-ID (absent or empty admits nothing) and
    the ``From`` (D98 for an absent one)."""
    applicable = [] if credential_id is None else [r for r in rules if r.applies_to(credential_id)]
    if not applicable:
        raise ServiceSubscriptionNotEstablished(
            f"no service subscription rule applies to Credential-ID {_shown(credential_id)}")
    if app_id:
        if any(rule.admits_app(app_id) and rule.admits_ae(from_) for rule in applicable):
            return
    raise AppRuleValidationFailed(
        f"no service subscription rule for Credential-ID {_shown(credential_id)} admits App-ID "
        f"{_shown(app_id)} with From {_shown(from_)}")


class RuleTable:
    """A set of rules (from a file or from resources): the registration check and a ``CredentialResolver``."""

    def __init__(self, rules: Iterable[AppRule] = ()) -> None:
        self.rules: tuple[AppRule, ...] = tuple(rules)
        if len(self.rules) > MAX_RULES:
            raise ConfigurationError(f"more than {MAX_RULES} rules")

    @classmethod
    def from_file(cls, path: Path) -> RuleTable:
        return cls(load_rules(path))

    def __len__(self) -> int:
        return len(self.rules)

    def applicable(self, credential_id: str) -> tuple[AppRule, ...]:
        """The rules whose ``apci`` matches ``credential_id``."""
        return tuple(r for r in self.rules if r.applies_to(credential_id))

    def resolve(self, credential_id: str) -> frozenset[str] | None:
        """:class:`m2msec.gateway.rules.CredentialResolver` (TS-0003 §8.2.1), D99: the AE-ID-Stems the
        Credential-ID may act as, i.e. the ``aae`` patterns without :data:`WILDCARD` of the rules applying to
        it (empty when they have only wildcards: a pattern names no identity); None when no rule applies."""
        applicable = self.applicable(credential_id)
        if not applicable:
            return None
        return frozenset(p for rule in applicable for p in rule.ae_ids if WILDCARD not in p)

    def check_ae_registration(self, credential_id: str | None, app_id: str | None, from_: str | None) -> None:
        """:func:`check_ae_registration` against this table's rules."""
        check_ae_registration(credential_id, app_id, from_, self.rules)
