"""A small MAF speaking docs/maf.md over a real TLS-PSK MAF Handshake, for the client tests that need a MAF which
misbehaves on purpose (a relativeKeyID that is not hex(KcID), answers off contract) or whose clock the test sets.
It keeps everything in memory; the real service is m2msec.maf (the end-to-end tests run against it)."""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import h11

from m2msec import http1
from m2msec.keys.secret import SecretKey
from m2msec.keys.table import PSKEntry
from m2msec.maf.client_wire import format_timestamp, parse_timestamp, split_exported
from m2msec.pki import identity_from_certificate
from m2msec.saef import EXPORTER_CONNECTION_LABEL
from m2msec.tls.engine import CertificateConfig, ServerConfig, TLSContext
from m2msec.tls.profiles import ECDHE_ECDSA
from m2msec.transport.tls import start_stream_server


@dataclass
class StubMAF:
    fqdn: str
    #: KmID -> (Km, provisioned identity or None)
    clients: dict[str, tuple[SecretKey, str | None]]
    clock: Callable[[], float] = time.time
    #: answer Key Registration with a relativeKeyID that is not hex(KcID)
    wrong_relative_id: bool = False
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    registrations: dict[str, tuple[str, float]] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)
    #: close each connection after one answer, without saying so (as a MAF whose idle timeout ran out)
    close_silently: bool = False
    #: serve certificate clients (ECDHE-ECDSA) with this credential instead of TLS-PSK
    certificate: CertificateConfig | None = None
    handshakes: int = 0
    server: asyncio.Server | None = None

    async def start(self) -> int:
        def lookup(identity: str) -> PSKEntry | None:
            known = self.clients.get(identity)
            return PSKEntry(identity, known[0], known[1]) if known else None

        if self.certificate is not None:
            context = TLSContext.server(ServerConfig(None, profiles=(ECDHE_ECDSA,), certificate=self.certificate))
        else:
            context = TLSContext.server(ServerConfig(psk_lookup=lookup))
        self.server = await start_stream_server(self._serve, "127.0.0.1", 0, context)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.handshakes += 1
        session = writer.get_extra_info("m2msec_session")
        if session.peer_certificate is not None:
            who = identity_from_certificate(session.peer_certificate).value
        else:
            who = session.entity or f"11-{session.psk_identity}"
        conn = h11.Connection(h11.SERVER)
        exported = False
        try:
            while True:
                req = await http1.read_message(conn, reader)
                if req is None:
                    break
                self.requests.append(f"{req.method} {req.target}")
                status, body, exported = self._route(req, who, writer, exported)
                headers = [("content-type", "application/json" if status < 400 else "application/problem+json")]
                await http1.send_message(conn, writer, http1.Message(headers=headers, status=status,
                                                                     body=json.dumps(body).encode() if body else b""))
                conn.start_next_cycle()
                if self.close_silently:
                    break
        except (http1.HTTPError, ConnectionError, h11.LocalProtocolError):
            pass
        finally:
            writer.close()

    def _problem(self, status: int, name: str) -> tuple[int, dict[str, Any]]:
        return status, {"type": f"urn:m2msec:maf:{name}", "title": name, "status": status, "detail": "x"}

    def _route(self, req: http1.Message, who: str, writer: asyncio.StreamWriter,
               exported: bool) -> tuple[int, dict[str, Any] | None, bool]:
        path = req.target.partition("?")[0].removeprefix("/maf/v1")
        body = json.loads(req.body) if req.body else {}
        now = self.clock()
        if path == "/registrations" and req.method == "POST":
            reg_id = secrets.token_hex(8)
            expiration = parse_timestamp(body["expirationTime"])
            self.registrations[reg_id] = (who, expiration)
            return 201, {"mafClientRegID": reg_id, "expirationTime": body["expirationTime"], "mafClientID": who,
                         "adminFQDN": body["adminFQDN"]}, exported
        if path.startswith("/registrations/"):
            reg = self.registrations.get(path.rsplit("/", 1)[1])
            if reg is None or reg[0] != who:
                return (*self._problem(404, "unknown-registration"), exported)
            if req.method == "DELETE":
                del self.registrations[path.rsplit("/", 1)[1]]
                return 204, None, exported
            if req.method == "GET":
                return 200, {"mafClientCfg": {"mafClientRegCfg": {"fqdn": self.fqdn}, "mafKeyRegCfg": {}}}, exported
            return 200, {k: v for k, v in body.items() if k != "mafFQDN"}, exported
        if not any(owner == who and exp > now for owner, exp in self.registrations.values()):
            return (*self._problem(403, "not-registered"), exported)
        if path == "/keys" and req.method == "POST":
            if "keyValue" in body:
                rel, key = secrets.token_hex(16), SecretKey(base64.b64decode(body["keyValue"]))
            else:
                if exported:
                    return (*self._problem(409, "key-exists"), exported)
                tls = writer.get_extra_info("tls_connection")
                kc_id, key = split_exported(tls.export_keying_material(EXPORTER_CONNECTION_LABEL, 48, None))
                rel = kc_id.hex() if not self.wrong_relative_id else secrets.token_hex(16)
                exported = True
            self.keys[rel] = {"expiration": parse_timestamp(body["expirationTime"]), "source": who,
                              "suid": body["SUID"], "targets": body.get("targetIDs", []), "key": key}
            return 201, {"relativeKeyID": rel, "expirationTime": body["expirationTime"], "sourceMAFClientID": who,
                         "adminFQDN": body["adminFQDN"], "SUID": body["SUID"],
                         "targetIDs": body.get("targetIDs", [])}, exported
        rel = path.rsplit("/", 1)[1]
        record = self.keys.get(rel)
        if record is None:
            return (*self._problem(404, "unknown-key"), exported)
        if req.method == "GET":
            if who not in record["targets"]:
                return (*self._problem(403, "not-a-target"), exported)
            if record["expiration"] <= now:
                return (*self._problem(410, "key-expired"), exported)
            return 200, {"expirationTime": format_timestamp(record["expiration"]),
                         "sourceMAFClientID": record["source"], "adminFQDN": self.fqdn,
                         "SUID": record["suid"],
                         "keyValue": base64.b64encode(record["key"].reveal()).decode()}, exported
        if record["source"] != who:
            return (*self._problem(403, "not-the-source"), exported)
        if req.method == "DELETE":
            del self.keys[rel]
            return 204, None, exported
        if "targetIDs" in body:
            record["targets"] = body["targetIDs"]
        return 200, {k: v for k, v in body.items() if k != "mafFQDN"}, exported
