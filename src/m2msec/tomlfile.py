"""Reading a TOML settings file with errors that name the file (the MAF's config, service subscription rules)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from m2msec.errors import ConfigurationError

__all__ = ["load_toml"]


def load_toml(path: Path) -> dict[str, Any]:
    """The document in ``path``; :class:`ConfigurationError` naming the file when it cannot be read or parsed."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot read: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{path}: not valid TOML: {exc}") from None
