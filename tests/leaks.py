"""Find key material in text: the one helper every leak assertion uses.

:func:`assert_no_secret` looks for each secret in every form a careless log line, message or repr could
carry it: the raw bytes, Python's ``repr`` of them, lower- and upper-case hex (also ``:``-separated),
and standard and URL-safe base64 with and without padding. Base64 of a key embedded in a longer blob
depends on where the key starts modulo 3, so for each of the three alignments the part of the encoding
that only depends on the key (its whole 3-byte groups) is searched too.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable

__all__ = ["assert_no_secret", "secret_forms"]

#: a needle shorter than this would match by chance in any sizeable log
MIN_NEEDLE = 6


def _base64_forms(secret: bytes) -> Iterable[tuple[str, bytes]]:
    for name, encode in (("base64", base64.b64encode), ("urlsafe base64", base64.urlsafe_b64encode)):
        whole = encode(secret)
        yield name, whole
        yield f"{name} without padding", whole.rstrip(b"=")
        for skip in range(3):  # the key starts `skip` bytes before a 3-byte group boundary of the blob
            groups = (len(secret) - skip) // 3
            if groups > 0:
                yield f"{name} at alignment {skip}", encode(secret[skip:skip + 3 * groups])


def secret_forms(secret: bytes) -> list[tuple[str, bytes]]:
    """(name, needle) pairs for one secret; needles shorter than :data:`MIN_NEEDLE` are left out."""
    hex_lower = secret.hex()
    forms: list[tuple[str, bytes]] = [
        ("raw bytes", secret),
        ("bytes repr", repr(secret)[2:-1].encode()),
        ("hex", hex_lower.encode()),
        ("upper-case hex", hex_lower.upper().encode()),
        ("colon hex", secret.hex(":").encode()),
        ("upper-case colon hex", secret.hex(":").upper().encode()),
        *_base64_forms(secret),
    ]
    return [(name, needle) for name, needle in forms if len(needle) >= MIN_NEEDLE]


def assert_no_secret(haystack: str | bytes, secrets: Iterable[bytes], *, where: str = "output") -> None:
    """Fail when any of ``secrets`` occurs in ``haystack`` in any form of :func:`secret_forms`.

    The failure message names the secret by its position and the form found, never the secret itself.
    """
    if isinstance(haystack, str):  # also as Latin-1: raw key bytes decoded into text one char per byte
        variants = [haystack.encode("utf-8", "surrogateescape"), haystack.encode("latin-1", "replace")]
    else:
        variants = [bytes(haystack)]
    for n, secret in enumerate(secrets):
        assert len(secret) * 2 >= MIN_NEEDLE, f"secret #{n} is too short to be searched for reliably"
        for name, needle in secret_forms(secret):
            for data in variants:
                assert needle not in data, f"secret #{n} ({len(secret)} bytes) found in {where} as {name}"
