"""AES-256-GCM sealing of key material under a 32-byte master key: the one implementation.

Used by the PSK store (:mod:`m2msec.keys.sqlite_store`) and the record stores (:mod:`m2msec.store`). A sealed
value is a fresh random 96-bit nonce plus the AES-GCM ciphertext and tag; the associated data binds it to
the row it belongs to, so a sealed key moved to another row does not open. A *check value* (a known plaintext
sealed under the master key) tells a wrong master key apart from a damaged row when a store is opened.
"""

from __future__ import annotations

import secrets
from typing import Protocol

from cryptography.exceptions import InvalidTag

__all__ = ["AEAD", "NONCE_LENGTH", "TAG_LENGTH", "aad_field", "open_check", "open_sealed", "seal", "seal_check"]

#: AES-GCM nonce (random per sealing: 2^32 sealings per master key keep the collision chance below 2^-32)
NONCE_LENGTH = 12
TAG_LENGTH = 16


class AEAD(Protocol):
    """What a store needs of its cipher (AES-256-GCM; injectable to observe what a lookup does)."""

    def encrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes: ...

    def decrypt(self, nonce: bytes, data: bytes, associated_data: bytes | None) -> bytes: ...


def aad_field(value: str | None) -> bytes:
    """One column in associated data: absent (``00``) or present (``01``, 4-byte length, UTF-8)."""
    if value is None:
        return b"\0"
    raw = value.encode("utf-8", "surrogatepass")
    return b"\1" + len(raw).to_bytes(4, "big") + raw


def seal(aead: AEAD, plaintext: bytes, aad: bytes) -> tuple[bytes, bytes]:
    """``(nonce, sealed)`` of ``plaintext`` under a fresh random nonce."""
    nonce = secrets.token_bytes(NONCE_LENGTH)
    return nonce, aead.encrypt(nonce, plaintext, aad)


def open_sealed(aead: AEAD, nonce: bytes, sealed: bytes, aad: bytes) -> bytes | None:
    """The plaintext, or None when the row fails its integrity check (wrong key, nonce, data or AAD)."""
    try:
        return aead.decrypt(bytes(nonce), bytes(sealed), aad)
    except InvalidTag:
        return None


def seal_check(aead: AEAD, plaintext: bytes, label: bytes = b"check") -> bytes:
    """A check value: nonce || sealed known plaintext."""
    nonce, sealed = seal(aead, plaintext, label)
    return nonce + sealed


def open_check(aead: AEAD, blob: bytes, label: bytes = b"check") -> bytes | None:
    """The plaintext of a check value, or None if the master key does not open it."""
    blob = bytes(blob)
    return open_sealed(aead, blob[:NONCE_LENGTH], blob[NONCE_LENGTH:], label)
