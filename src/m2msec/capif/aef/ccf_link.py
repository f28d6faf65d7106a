"""The AEF's CAPIF-3 client: mutually authenticated TLS to the CCF with the AEF's certificate (TS 33.122 §6.5.2.1).

:class:`CCFLink` keeps up to :data:`LINK_CONNECTIONS` connections (:class:`m2msec.capif.client.CCFConnection`) and
reuses them; a reused connection that turns out broken (the CCF closed it while idle) is replaced once, a fresh one
that fails is an error. Every call is bounded by :data:`LINK_DEADLINE` (waiting for a connection, handshake and
exchange together). Whatever goes wrong with the CCF surfaces as :class:`CCFLinkError` (no key, no traceback).

* :meth:`CCFLink.trusted_invoker` reads ``GET /capif-security/v1/trustedInvokers/{id}?authenticationInfo=true&
  authorizationInfo=true``: the CCF answers the entries of the invoker's security context that name *this* AEF
  (docs/ccf.md, D129) — parsed into a :class:`TrustedInvoker` (per entry the interface information P0, the selected
  method, the AEFPSK of a PSK entry as a :class:`~m2msec.keys.secret.SecretKey`, the grant as a
  :class:`~m2msec.capif.scope.Scope`); ``None`` for 404 (no context, or none naming this AEF).
* :meth:`CCFLink.jwks` reads ``GET /capif-security/v1/jwks``: the keys access tokens are verified with.
"""

from __future__ import annotations

import asyncio
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any, Final

from m2msec.capif.client import Answer, CCFConnection
from m2msec.capif.kdf import interface_information_of
from m2msec.capif.scope import AccessTokenError, Scope, parse_scope
from m2msec.capif.tokens import VerificationKeys
from m2msec.errors import ConfigurationError, M2MSecError, TLSError, TransportError
from m2msec.keys.secret import SecretKey

__all__ = ["AEF_WIDE_PSK_ENTRY_MATCHES", "INVOKER_ID_PATTERN", "LINK_CONNECTIONS", "LINK_DEADLINE", "LINK_TIMEOUT",
           "CCFLink", "CCFLinkError", "TrustedEntry",
           "TrustedInvoker", "is_invoker_id"]

#: seconds for one TLS handshake with the CCF, and for one exchange on a connection (D160)
LINK_TIMEOUT: Final = 3.0
#: seconds one call may take in all: waiting for a free connection, a reconnect, the exchange (D160)
LINK_DEADLINE: Final = 8.0
#: connections to the CCF kept open and used at once; more calls wait for one (within LINK_DEADLINE) (D160)
LINK_CONNECTIONS: Final = 4

SECURITY_PATH: Final = "/capif-security/v1/trustedInvokers"
JWKS_PATH: Final = "/capif-security/v1/jwks"
#: D129: the AEFPSK in ``authenticationInfo``: 32 octets in lower-case hex
_AEFPSK_HEX: Final = re.compile(r"[0-9a-f]{64}")
#: D175: a certificate's RFC 8705 ``x5t#S256``: SHA-256 in base64url without padding (43 characters)
_THUMBPRINT: Final = re.compile(r"[A-Za-z0-9_-]{43}")
#: D161: what can be an API invoker ID (the CCF's are letters and digits); anything else is never sent to the CCF
INVOKER_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9._~-]{1,256}")
#: D162: a PSK entry that names the AEF by ``aefId`` alone says no interface: it matches no listener
AEF_WIDE_PSK_ENTRY_MATCHES: Final = False


def is_invoker_id(text: str) -> bool:
    """Whether ``text`` can be an API invoker ID (D161): 1..256 RFC 3986 unreserved characters."""
    return INVOKER_ID_PATTERN.fullmatch(text) is not None


class CCFLinkError(M2MSecError):
    """The CCF could not be reached, did not answer in time, or answered what the AEF cannot use. ``status``: the
    CCF's HTTP status, 0 when there was no answer. The message never carries key material."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class TrustedEntry:
    """One ``securityInfo`` entry of an invoker's security context that names this AEF."""

    #: the selected security method (``PSK``, ``PKI``, ``OAUTH``)
    method: str
    #: P0 of the entry's ``interfaceDetails`` (D115), None for an entry naming the AEF by ``aefId``
    interface: str | None
    aef_id: str | None
    api_id: str | None
    #: the AEFPSK of a PSK entry
    aefpsk: SecretKey | None = field(default=None, repr=False)
    #: D175: a PKI entry's ``x5t#S256`` thumbprint of the invoker's current certificate
    thumbprint: str | None = None
    #: the entry's grant (``authorizationInfo``)
    scope: Scope | None = None
    #: D176: an OAUTH entry's security context generation (what the invoker's tokens must carry)
    generation: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class TrustedInvoker:
    """What the CCF told this AEF of one API invoker."""

    invoker_id: str
    entries: tuple[TrustedEntry, ...]

    def psk_entries(self, interface: str, api_ids: frozenset[str] = frozenset()) -> list[TrustedEntry]:
        """The PSK entries with a key for the listener whose P0 is ``interface`` and which serves the service APIs
        ``api_ids`` (D162): an entry naming ``interfaceDetails`` matches by P0; one naming ``aefId`` + ``apiId``
        matches when that API is served there; one naming only ``aefId`` says no interface and never matches."""
        return [e for e in self.entries
                if e.method == "PSK" and e.aefpsk is not None and _located(e, interface, api_ids)]

    def api_names(self, aef_id: str) -> tuple[str, ...]:
        """The API names the invoker is authorized for at ``aef_id`` (all entries together)."""
        names: dict[str, None] = {}
        for entry in self.entries:
            for aef, apis in entry.scope.grants if entry.scope is not None else ():
                if aef == aef_id:
                    names.update(dict.fromkeys(apis))
        return tuple(names)


def _located(entry: TrustedEntry, interface: str, api_ids: frozenset[str]) -> bool:
    if entry.interface is not None:
        return entry.interface == interface
    if entry.api_id is not None:
        return entry.api_id in api_ids
    return AEF_WIDE_PSK_ENTRY_MATCHES


def _entry(item: Any) -> TrustedEntry:
    if not isinstance(item, dict) or not isinstance(method := item.get("selSecurityMethod"), str):
        raise ValueError("a securityInfo entry without selSecurityMethod")
    details = item.get("interfaceDetails")
    if "interfaceDetails" in item and not isinstance(details, dict):  # issue 21: was an AttributeError
        raise ValueError("interfaceDetails is not an InterfaceDescription object")
    interface = interface_information_of(details) if details is not None else None
    aef_id, api_id = item.get("aefId"), item.get("apiId")
    if not isinstance(aef_id, str | None) or not isinstance(api_id, str | None):
        raise ValueError("aefId and apiId are strings")
    auth, grant = item.get("authenticationInfo"), item.get("authorizationInfo")
    key: SecretKey | None = None
    thumbprint = generation = None
    if method == "PSK":
        if not isinstance(auth, str) or not _AEFPSK_HEX.fullmatch(auth):
            raise ValueError("a PSK entry whose authenticationInfo is not an AEFPSK in hex (D129)")
        key = SecretKey(bytes.fromhex(auth))
    elif method == "PKI":
        if not isinstance(auth, str) or not _THUMBPRINT.fullmatch(auth):
            raise ValueError("a PKI entry whose authenticationInfo is not a certificate thumbprint (D175)")
        thumbprint = auth
    elif method == "OAUTH" and auth is not None:
        if not isinstance(auth, str) or not 0 < len(auth) <= 256:
            raise ValueError("an OAUTH entry whose authenticationInfo is not a context generation (D176)")
        generation = auth
    scope = parse_scope(grant) if isinstance(grant, str) else None
    return TrustedEntry(method, interface, aef_id, api_id, key, thumbprint, scope, generation)


def parse_trusted_invoker(invoker_id: str, body: Any) -> TrustedInvoker:
    """The :class:`TrustedInvoker` of a ``ServiceSecurity`` answer. Raises CCFLinkError when it is not usable (the
    message names what is wrong, never a value)."""
    try:
        info = body["securityInfo"]
        if not isinstance(info, list):
            raise ValueError("securityInfo is not a list")
        return TrustedInvoker(invoker_id, tuple(_entry(item) for item in info))
    except (KeyError, TypeError, ValueError, ConfigurationError, AccessTokenError) as exc:
        why = exc.detail if isinstance(exc, AccessTokenError) else str(exc) if isinstance(exc, ValueError) else \
            type(exc).__name__
        raise CCFLinkError(f"the CCF's security context of {invoker_id} is not usable: {why}", 200) from None


class CCFLink:
    """The AEF's connections to the CCF (see the module docstring). ``certificate_pem``/``private_key_pem``: the AEF
    certificate the CCF issued at registration; ``ca_pem``: the CCF's CA; ``ccf_host``: the name its certificate
    carries."""

    def __init__(self, host: str, port: int, *, ccf_host: str, ca_pem: bytes, certificate_pem: bytes,
                 private_key_pem: bytes, timeout: float = LINK_TIMEOUT, deadline: float = LINK_DEADLINE,
                 max_connections: int = LINK_CONNECTIONS) -> None:
        if max_connections < 1:
            raise ConfigurationError("at least one connection to the CCF")
        self.host, self.port, self.ccf_host = host, port, ccf_host
        self._ca_pem, self._certificate_pem, self._private_key_pem = ca_pem, certificate_pem, private_key_pem
        self.timeout, self.deadline = timeout, deadline
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: list[CCFConnection] = []
        #: connections opened (the first and every reconnect)
        self.connects = 0

    def __repr__(self) -> str:
        return f"<CCFLink {self.ccf_host} at {self.host}:{self.port}, {len(self._idle)} idle>"

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()

    async def __aenter__(self) -> CCFLink:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def trusted_invoker(self, invoker_id: str) -> TrustedInvoker | None:
        """The entries of ``invoker_id``'s security context naming this AEF, with keys and grants; None when the CCF
        has none (404). Raises CCFLinkError."""
        if not is_invoker_id(invoker_id):
            return None  # D161: not an API invoker ID, the CCF is not asked
        path = (f"{SECURITY_PATH}/{urllib.parse.quote(invoker_id, safe='')}"
                "?authenticationInfo=true&authorizationInfo=true")
        answer = await self._exchange("GET", path)
        if answer.status == 404:
            return None
        if answer.status != 200:
            raise CCFLinkError(f"the CCF answered {answer.status} to the security context of {invoker_id}",
                               answer.status)
        return parse_trusted_invoker(invoker_id, _json(answer))

    async def jwks(self) -> VerificationKeys:
        """The CCF's access token verification keys. Raises CCFLinkError."""
        answer = await self._exchange("GET", JWKS_PATH)
        if answer.status != 200:
            raise CCFLinkError(f"the CCF answered {answer.status} to the JWK Set", answer.status)
        try:
            return VerificationKeys.from_jwks(_json(answer))
        except (ValueError, AttributeError) as exc:
            raise CCFLinkError(f"the CCF's JWK Set is not usable: {exc}", 200) from None

    async def _exchange(self, method: str, path: str) -> Answer:
        try:
            async with asyncio.timeout(self.deadline):
                async with self._slots:
                    return await self._on_a_connection(method, path)
        except TimeoutError:
            raise CCFLinkError(f"the CCF at {self.host}:{self.port} did not answer within {self.deadline:g} s") \
                from None

    async def _on_a_connection(self, method: str, path: str) -> Answer:
        conn = self._idle.pop() if self._idle else None
        if conn is not None:
            try:
                return await self._request(conn, method, path)
            except TransportError:
                pass  # a kept connection gone stale (the CCF closed it while idle): one reconnect
        conn = await self._open()
        try:
            return await self._request(conn, method, path)
        except TransportError as exc:
            raise CCFLinkError(f"the exchange with the CCF at {self.host}:{self.port} failed: {exc}") from None

    async def _request(self, conn: CCFConnection, method: str, path: str) -> Answer:
        """One exchange; the connection is kept for the next one when it is fine, else closed (also when the call
        is cancelled: its state is then unknown)."""
        keep = False
        try:
            answer = await conn.request(method, path)
            keep = (answer.header("connection") or "").lower() != "close"
            return answer
        finally:
            if keep:
                self._idle.append(conn)
            else:
                conn.writer.close()  # not awaited: a silent or cancelled exchange must not hold the caller longer

    async def _open(self) -> CCFConnection:
        self.connects += 1
        try:
            return await CCFConnection.open(self.host, self.port, ccf_host=self.ccf_host, ca_pem=self._ca_pem,
                                            certificate_pem=self._certificate_pem,
                                            private_key_pem=self._private_key_pem, timeout=self.timeout)
        except (TransportError, TLSError) as exc:
            raise CCFLinkError(f"cannot reach the CCF at {self.host}:{self.port}: {exc}") from None


def _json(answer: Answer) -> Any:
    try:
        return answer.json()
    except (ValueError, RecursionError):  # RecursionError: deep nesting (issue 21)
        raise CCFLinkError("the CCF's answer is not JSON", answer.status) from None
