"""Secret byte strings that do not leak.

:class:`SecretKey` wraps key material so that it never shows up in ``repr``/``str``, logs or
exception messages, and compares in constant time. Code that must hand the raw bytes to a cipher
calls :meth:`SecretKey.reveal` at that single spot.
"""

from __future__ import annotations

import hmac
import secrets

from m2msec.errors import ConfigurationError

__all__ = ["MAX_PSK_LENGTH", "SecretKey"]

#: OpenSSL's PSK_MAX_PSK_LEN is 512 in 3.x but 256 in older releases; 256 is portable (RFC 4279 §5.3
#: lets a PSK be up to 2^16-1 bytes, implementations cap it).
MAX_PSK_LENGTH = 256


class SecretKey:
    """Immutable key material with a redacted repr and constant-time equality."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        if not isinstance(value, bytes | bytearray):
            raise TypeError("SecretKey takes bytes")
        if not 1 <= len(value) <= MAX_PSK_LENGTH:
            raise ConfigurationError(f"key length must be 1..{MAX_PSK_LENGTH} bytes, not {len(value)}")
        self._value = bytes(value)

    @classmethod
    def from_hex(cls, text: str) -> SecretKey:
        """Parse hex (whitespace and ``:`` separators allowed). The error never echoes the input."""
        cleaned = "".join(text.split()).replace(":", "")
        if cleaned.lower().startswith("0x"):
            cleaned = cleaned[2:]
        try:
            raw = bytes.fromhex(cleaned)
        except ValueError:
            raise ConfigurationError("key is not valid hexadecimal") from None
        return cls(raw)

    @classmethod
    def generate(cls, length: int = 32) -> SecretKey:
        return cls(secrets.token_bytes(length))

    def reveal(self) -> bytes:
        """The raw key bytes. Call only where a cipher needs them; never log the result."""
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, SecretKey):
            return NotImplemented
        return hmac.compare_digest(self._value, other._value)

    def __hash__(self) -> int:
        # Hash of a keyed digest would still be derived from the secret; keys are not meant as dict keys.
        raise TypeError("SecretKey is not hashable")

    def __repr__(self) -> str:
        return f"SecretKey(<{len(self._value)} bytes redacted>)"

    __str__ = __repr__

    def __reduce__(self) -> str | tuple[object, ...]:
        raise TypeError("SecretKey cannot be pickled")
