"""Reading a TOML settings file with errors that name the file (the MAF's config, service subscription rules)."""

from __future__ import annotations

import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any, TypeVar

from m2msec.errors import ConfigurationError

T = TypeVar("T")

__all__ = ["load_settings", "load_toml"]


def load_toml(path: Path) -> dict[str, Any]:
    """The document in ``path``; :class:`ConfigurationError` naming the file when it cannot be read or parsed."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{path}: not valid TOML: {exc}") from None


def load_settings(path: Path, cls: type[T]) -> T:
    """A settings dataclass ``cls`` from the TOML file ``path``: each top-level key sets the field of that name, of
    the default's type (an integer is taken for a float). Unknown keys, wrong types and the dataclass's own
    refusals are :class:`ConfigurationError` naming the file and the key."""
    data = load_toml(path)
    known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    values: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigurationError(f"{path}: unknown key {key!r} (known: {', '.join(known)})")
        default = known[key].default
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if type(value) is not type(default):
            raise ConfigurationError(f"{path}: {key} must be a {type(default).__name__}")
        values[key] = value
    try:
        return cls(**values)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{path}: {exc}") from None
