"""What every fuzz target shares (fuzz_targets.py lists them all)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from m2msec.errors import M2MSecError

__all__ = ["ALLOWED", "LibraryRefusal", "Target", "text_of"]


class LibraryRefusal(Exception):
    """The input never reached m2msec's code: the library in front (h11, cryptography's loader) refused it, as it
    does in the service. Counted apart so that the figures show how many inputs went further."""


ALLOWED: tuple[type[BaseException], ...] = (M2MSecError, LibraryRefusal)


@dataclass(frozen=True)
class Target:
    name: str
    what: str
    run: Callable[[bytes], None]
    seeds: list[bytes]
    allowed: tuple[type[BaseException], ...] = ALLOWED
    dictionary: list[bytes] = field(default_factory=list)
    max_len: int = 4096


def text_of(data: bytes) -> str:
    """Bytes as the text a parser gets: UTF-8 when it decodes, else Latin-1 (every byte a character)."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")
