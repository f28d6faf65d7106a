"""docs/maf.md's wire spoken raw (h11 inside Entity A's TLS), for the tests that check the MAF's HTTP behaviour
without the client library."""

from __future__ import annotations

import json
import time

from m2msec import http1
from m2msec.maf.wire import format_timestamp
from m2msec.saef import EstablishedSA

FQDN = "maf.sp.example.com"


async def call(sa: EstablishedSA, method: str, target: str, body: object = None, *,
               content_type: str = "application/json", raw: bytes | None = None) -> tuple[int, dict[str, str], object]:
    """One request on ``sa``: (status, headers, the JSON body or None)."""
    data = raw if raw is not None else (b"" if body is None else json.dumps(body).encode())
    headers = [("Host", FQDN)]
    if data or method in ("POST", "PATCH"):
        headers += [("Content-Type", content_type), ("Content-Length", str(len(data)))]
    resp = await sa.request(http1.Message(headers, data, method=method, target=target))
    parsed = json.loads(resp.body) if resp.body else None
    return resp.status, dict(resp.headers), parsed


def later(seconds: float = 3600) -> str:
    """An m2m:timestamp ``seconds`` from now."""
    return format_timestamp(time.time() + seconds)
