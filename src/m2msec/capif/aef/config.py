"""``m2msec aef serve --config FILE``: the AEF front's settings (TOML; docs/capif-aef.md "The AEF front").

```toml
listen = "0.0.0.0:8443"
backend = "http://127.0.0.1:8080"
aef_id = "AEF…"                          # from the provider registration
profiles = "psk,dhe-psk,ecdhe-psk,ecdhe-ecdsa"
events = "127.0.0.1:0"                   # optional: the revocation notifications' listener (D170); "off": none
backend_connections = 64                 # optional: most connections to the backend at once (D177)

[ccf]
address = "ccf.example:8445"
host = "ccf.example"                     # the name in the CCF's certificate; also the token issuer by default
ca = "ccf-ca.pem"

[credentials]                            # the AEF's CAPIF certificate (CAPIF-3), from the provider registration
certificate = "aef.crt"
private_key = "aef.key"

[tls]                                    # the AEF's TLS server certificate (D168), a CA the operator runs
certificate = "server.crt"               # (chain, P-256 key); invokers get its CA
private_key = "server.key"

[[api]]
name = "weather"                         # apiName as published
prefix = "/weather"                      # requests whose path starts with it are this API's
interface = "aef.example:8443/weather"   # P0 of the published InterfaceDescription (D115)
api_id = "…"                             # optional: the apiId the CCF assigned
```

Relative file names are relative to the configuration file's folder.
"""

from __future__ import annotations

import tomllib
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from m2msec.capif.aef.authorize import ServedAPI
from m2msec.capif.aef.backend import BACKEND_MAX_CONNECTIONS
from m2msec.capif.aef.events import EVENTS_LISTEN
from m2msec.cli.common import parse_hostport
from m2msec.errors import ConfigurationError

__all__ = ["DEFAULT_PROFILES", "AEFConfig", "load_config", "parse_backend"]

#: D168: the listener's suites: the RFC 4279 PSK families for method 1 and ECDHE-ECDSA with the operator's server
#: certificate for methods 2 (mutual) and 3 (server-authenticated + bearer token), on one port
DEFAULT_PROFILES: Final = "psk,dhe-psk,ecdhe-psk,ecdhe-ecdsa"
#: the largest backend_connections accepted (each is a socket of the front's process)
_MAX_BACKEND_CONNECTIONS: Final = 4096


@dataclass(frozen=True)
class AEFConfig:
    listen: tuple[str, int]
    backend: tuple[str, int]
    aef_id: str
    ccf_address: tuple[str, int]
    ccf_host: str
    issuer: str
    ccf_ca_pem: bytes
    certificate_pem: bytes
    private_key_pem: bytes
    server_certificate_pem: bytes
    server_key_pem: bytes
    apis: tuple[ServedAPI, ...]
    profiles: str = DEFAULT_PROFILES
    #: D170: where the CCF's revocation notifications are received (None: not subscribed)
    events_listen: tuple[str, int] | None = EVENTS_LISTEN
    #: D177: most connections to the backend open at once
    backend_connections: int = BACKEND_MAX_CONNECTIONS

    def __repr__(self) -> str:
        return f"<AEFConfig {self.aef_id} on {self.listen[0]}:{self.listen[1]} apis={[a.name for a in self.apis]}>"


def parse_backend(url: str) -> tuple[str, int]:
    """``http://host:port`` (plain HTTP; the backend is on the provider's side of the AEF) → (host, port)."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/") or parts.query:
        raise ConfigurationError(f"the backend is http://HOST:PORT, not {url!r}")
    return parts.hostname, parts.port or 80


def _str(table: dict[str, Any], key: str, where: str, default: str | None = None) -> str:
    value = table.get(key, default)
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{where}: {key} is required (a string)")
    return value


def _file(base: Path, table: dict[str, Any], key: str, where: str) -> bytes:
    path = base / _str(table, key, where)
    if key == "private_key":  # D13/D35 rules for every secret file: ours, not readable by others
        from m2msec.keys.table import check_file_permissions

        try:
            check_file_permissions(path)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}: {key}: {exc}") from None
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"{where}: {key}: cannot read {path}: {exc.strerror}") from None


def _table(doc: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = doc.get(key)
    if not isinstance(value, dict):
        raise ConfigurationError(f"{where}: the [{key}] table is required")
    return value


def load_config(path: Path | str, *, overrides: dict[str, str] | None = None) -> AEFConfig:
    """Read and check the file; ``overrides`` (``listen``, ``backend``) replace the file's values."""
    path = Path(path)
    where = str(path)
    try:
        doc = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{where}: cannot read: {exc}") from None
    doc.update(overrides or {})
    known = {"listen", "backend", "aef_id", "profiles", "events", "backend_connections", "ccf", "credentials", "tls",
             "api"}
    if unknown := sorted(set(doc) - known):
        raise ConfigurationError(f"{where}: unknown keys {unknown}")
    base = path.parent
    ccf, creds, tls = _table(doc, "ccf", where), _table(doc, "credentials", where), _table(doc, "tls", where)
    apis_doc = doc.get("api")
    if not isinstance(apis_doc, list) or not apis_doc or not all(isinstance(a, dict) for a in apis_doc):
        raise ConfigurationError(f"{where}: at least one [[api]] table is required")
    apis = tuple(ServedAPI(_str(a, "name", where), _str(a, "prefix", where), _str(a, "interface", where),
                           a.get("api_id") if isinstance(a.get("api_id"), str) else None) for a in apis_doc)
    prefixes = [a.prefix.rstrip("/") for a in apis]
    if len(set(prefixes)) != len(prefixes):
        raise ConfigurationError(f"{where}: two [[api]] tables have one prefix")
    host = _str(ccf, "host", where)
    events = _str(doc, "events", where, f"{EVENTS_LISTEN[0]}:{EVENTS_LISTEN[1]}")
    connections = doc.get("backend_connections", BACKEND_MAX_CONNECTIONS)
    if type(connections) is not int or not 1 <= connections <= _MAX_BACKEND_CONNECTIONS:
        raise ConfigurationError(f"{where}: backend_connections is a number of connections, 1 to "
                                 f"{_MAX_BACKEND_CONNECTIONS}")
    return AEFConfig(
        listen=parse_hostport(_str(doc, "listen", where)), backend=parse_backend(_str(doc, "backend", where)),
        aef_id=_str(doc, "aef_id", where), ccf_address=parse_hostport(_str(ccf, "address", where)), ccf_host=host,
        issuer=_str(ccf, "issuer", where, host), ccf_ca_pem=_file(base, ccf, "ca", where),
        certificate_pem=_file(base, creds, "certificate", where),
        private_key_pem=_file(base, creds, "private_key", where),
        server_certificate_pem=_file(base, tls, "certificate", where),
        server_key_pem=_file(base, tls, "private_key", where), apis=apis,
        profiles=_str(doc, "profiles", where, DEFAULT_PROFILES),
        events_listen=None if events == "off" else parse_hostport(events), backend_connections=connections)
