"""The client side of CAPIF-1e/3/4/5: one TLS connection to the CCF and the HTTP/1.1 exchanges over it.

Used by API invokers and API provider functions (and by the tests). The CCF is authenticated by its certificate (a
chain to the CCF's CA the client trusts, naming ``ccf_host``); the client presents the certificate the CCF issued
it, or none before onboarding. The connection is kept: AEFPSK (TS 33.122 Annex A) is derived from the session in
which the security method was obtained, so :meth:`CCFConnection.aefpsk` derives it from *this* connection's TLS 1.2
master secret and session ID, as the CCF does on its side.

    async with await CCFConnection.open("127.0.0.1", 8445, ccf_host="ccf.example", ca_pem=ca) as ccf:
        answer = await ccf.request("POST", "/api-invoker-management/v1/onboardedInvokers", json=body,
                                   headers={"authorization": f"Bearer {credential}"})
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import h11
from cryptography import x509

from m2msec import http1
from m2msec.capif.kdf import aefpsk
from m2msec.errors import ConfigurationError, HandshakeFailed, TransportError
from m2msec.idb import NOT_ONEM2M
from m2msec.keys.secret import SecretKey
from m2msec.tls.engine import CertificateConfig, ClientConfig, SessionInfo, TLSContext
from m2msec.tls.profiles import ECDHE_ECDSA
from m2msec.transport.tls import open_connection

__all__ = ["DEFAULT_TIMEOUT", "Answer", "CCFConnection", "check_server_name"]

#: seconds for the handshake and for each exchange
DEFAULT_TIMEOUT: Final = 10.0
_MAX_ANSWER: Final = 1024 * 1024


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes = field(repr=False)

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def check_server_name(session: SessionInfo, host: str, who: str = "the CCF") -> None:
    """The server's verified certificate must name ``host`` (a SAN dNSName; the engine verified the chain, not the
    name). Raises HandshakeFailed."""
    cert = session.peer_certificate
    if cert is None:
        raise HandshakeFailed(f"{who} presented no certificate")
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise HandshakeFailed(f"{who}'s certificate names no host") from None
    if host.lower() not in (n.lower() for n in names.get_values_for_type(x509.DNSName)):
        raise HandshakeFailed(f"{who}'s certificate is not for {host!r}")



class CCFConnection:
    """One mutually (or, before onboarding, server-) authenticated TLS 1.2 connection to the CCF."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, session: SessionInfo,
                 ccf_host: str, timeout: float) -> None:
        self.reader, self.writer, self.session = reader, writer, session
        self.ccf_host, self.timeout = ccf_host, timeout
        self._http = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, host: str, port: int, *, ccf_host: str, ca_pem: bytes, certificate_pem: bytes | None = None,
                   private_key_pem: bytes | None = None, timeout: float = DEFAULT_TIMEOUT) -> CCFConnection:
        """Connect and handshake. ``certificate_pem``/``private_key_pem``: the CAPIF certificate the CCF issued
        (both or neither). Raises HandshakeFailed, TransportError, ConfigurationError."""
        if (certificate_pem is None) != (private_key_pem is None):
            raise ConfigurationError("give the certificate and its private key, or neither")
        context = TLSContext.client(ClientConfig(
            None, profiles=(ECDHE_ECDSA,), server_name=ccf_host, server_authentication_only=certificate_pem is None,
            certificate=CertificateConfig(certificate_pem or b"", private_key_pem or b"", ca_pem)))
        try:
            async with asyncio.timeout(timeout):
                # the CCF is no oneM2M entity: its host name is checked below (check_server_name)
                reader, writer, session = await open_connection(host, port, context, handshake_timeout=timeout,
                                                                peer_entity=NOT_ONEM2M)
        except TimeoutError:
            raise TransportError(f"no TLS handshake with the CCF at {host}:{port} within {timeout:g} s") from None
        except OSError as exc:
            raise TransportError(f"cannot connect to the CCF at {host}:{port}: {exc.strerror or exc}") from None
        try:
            check_server_name(session, ccf_host)
        except HandshakeFailed:
            writer.close()
            raise
        return cls(reader, writer, session, ccf_host, timeout)

    async def __aenter__(self) -> CCFConnection:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass

    async def request(self, method: str, path: str, *, json_body: Any = None, form: Mapping[str, str] | None = None,
                      raw: bytes | None = None, content_type: str | None = None,
                      headers: Mapping[str, str] | None = None) -> Answer:
        """One exchange on this connection. ``json_body`` is sent as application/json, ``form`` as
        application/x-www-form-urlencoded, ``raw`` as given (with ``content_type``)."""
        hdrs = [("host", self.ccf_host), ("accept", "application/json")]
        data = b""
        if json_body is not None:  # a CAPIF PATCH body is a JSON merge patch (RFC 7396)
            default = "application/merge-patch+json" if method.upper() == "PATCH" else "application/json"
            data, content_type = json.dumps(json_body).encode(), content_type or default
        elif form is not None:
            data = urllib.parse.urlencode(dict(form)).encode()
            content_type = content_type or "application/x-www-form-urlencoded"
        elif raw is not None:
            data = raw
        if content_type is not None:
            hdrs.append(("content-type", content_type))
        hdrs.extend((k.lower(), v) for k, v in (headers or {}).items())
        if self._http.our_state is h11.DONE and self._http.their_state is h11.DONE:
            self._http.start_next_cycle()
        msg = http1.Message(headers=hdrs, body=data, method=method, target=path)
        try:
            async with asyncio.timeout(self.timeout):
                await http1.send_message(self._http, self.writer, msg)
                resp = await http1.read_message(self._http, self.reader, max_body=_MAX_ANSWER)
        except TimeoutError:
            raise TransportError(f"the CCF did not answer within {self.timeout:g} s") from None
        except (OSError, http1.HTTPError, h11.ProtocolError) as exc:
            raise TransportError(f"the exchange with the CCF failed: {type(exc).__name__}") from None
        if resp is None:
            raise TransportError("the CCF closed the connection before answering")
        return Answer(resp.status, {k.lower(): v for k, v in resp.headers}, resp.body)

    def aefpsk(self, interface_info: str) -> SecretKey:
        """AEFPSK for the service API interface ``interface_info`` (:func:`m2msec.capif.kdf.interface_information`)
        from this connection's TLS 1.2 master secret and session ID (TS 33.122 Annex A)."""
        tls = self.writer.get_extra_info("tls_connection")
        return aefpsk(tls.master_secret(), self.session.session_id, interface_info)
