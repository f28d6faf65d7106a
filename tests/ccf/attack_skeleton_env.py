"""Helpers of the hostile-review tests of the CCF skeleton (tests/ccf/test_attack_skeleton*.py)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from m2msec.capif.client import Answer
from m2msec.keys.sqlite_store import MASTER_KEY_ENV

from .ccf_env import CCF_HOST, INVOKERS, Identity, World, enrolment, new_key, world

__all__ = ["world"]

BAD_CREDENTIAL = "INVALID_ONBOARDING_CREDENTIAL"
BAD_CSR = "INVALID_CERTIFICATE_SIGNING_REQUEST"


# ------------------------------------------------------------------------------------------------------- helpers

def http(method: str, path: str, body: bytes = b"", headers: list[tuple[str, str]] | None = None,
         host: str | None = CCF_HOST) -> bytes:
    """One HTTP/1.1 request as bytes, exactly as given (repeated headers and all), with ``connection: close``."""
    fields = [("host", host)] if host is not None else []
    fields += headers or []
    fields.append(("connection", "close"))
    if body or method in ("POST", "PUT", "PATCH"):
        fields.append(("content-length", str(len(body))))
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields) + "\r\n"
    return head.encode("latin-1") + body


class Raw:
    """A response read off the wire: status, lower-case headers (repeated ones joined), body."""

    def __init__(self, data: bytes) -> None:
        head, _, self.body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            key = name.strip().lower()
            self.headers[key] = f"{self.headers[key]}, {value.strip()}" if key in self.headers else value.strip()

    def json(self) -> Any:
        return json.loads(self.body)


async def raw(world: World, who: Identity | None, data: bytes, timeout: float = 20) -> Raw:
    """Send ``data`` on a new TLS connection as ``who`` and read the answer until the server closes."""
    conn = await world.connect(who)
    try:
        conn.writer.write(data)
        await conn.writer.drain()
        out = b""
        async with asyncio.timeout(timeout):
            while chunk := await conn.reader.read(65536):
                out += chunk
        return Raw(out)
    finally:
        await conn.close()


def onboarding(world: World, body: bytes, token: str, content_type: str = "application/json") -> bytes:
    return http("POST", INVOKERS, body, [("content-type", content_type), ("authorization", f"Bearer {token}")])


def spent(world: World, token_jti: str) -> bool:
    return world.store.get_document("capif-revoked", "jti:" + token_jti) is not None


def invokers(world: World) -> list[str]:
    return [d.record_id for d in world.store.documents("capif-invoker")]


async def onboard_answer(world: World, token: str) -> Answer:
    return await world.call(None, "POST", INVOKERS, enrolment(new_key()), headers={"authorization": f"Bearer {token}"})


async def onboard_with(world: World, token: str) -> int:
    return (await onboard_answer(world, token)).status


def csr_of(key: Any, subject: x509.Name | None = None, extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
           algorithm: hashes.SHA256 | None = None) -> str:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        subject or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    csr = builder.sign(key, algorithm)
    return csr.public_bytes(serialization.Encoding.PEM).decode()


class PausingStore:
    """The CCF's store, with the first ``put_document(replace=True)`` held until :attr:`release` is set: makes the
    window between a request's authentication and its write deterministic (what two concurrent requests hit)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.paused = asyncio.Event()
        self.release = asyncio.Event()
        self.armed = True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def put_document(self, document: Any, *, replace: bool = False, expect: Any = None) -> None:
        if (replace or expect is not None) and self.armed:
            self.armed = False
            self.paused.set()
            await self.release.wait()
        await self.inner.put_document(document, replace=replace, expect=expect)


def m2msec_ccf(world: World, *args: str) -> subprocess.CompletedProcess[str]:
    """``m2msec ccf`` as the operator runs it, on the world's store."""
    env = {k: v for k, v in os.environ.items() if k not in (MASTER_KEY_ENV, "M2MSEC_CCF_STORE", "M2MSEC_DB")}
    env["XDG_DATA_HOME"] = str(world.tmp / "data")
    return subprocess.run([sys.executable, "-m", "m2msec.cli.main", "ccf", "--store", f"sqlite://{world.tmp}/ccf.db",
                           *args], capture_output=True, text=True, timeout=60, env=env)


def jti_of(token: str) -> str:
    import base64

    payload = token.split(".")[1]
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return str(claims["jti"])


