"""Write an AEF front configuration file (the TOML :func:`m2msec.capif.aef.config.load_config` reads) from a provider
folder of ``m2msec aef register``: what a deployment script, the benchmark and the tests do instead of each pasting
the text.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ConfigAPI", "render_config"]


@dataclass(frozen=True)
class ConfigAPI:
    """One ``[[api]]`` table: the published apiName, the path prefix it owns, its P0 (``<host>:<port><prefix>``)."""

    name: str
    prefix: str
    interface: str


def _q(value: str) -> str:
    """A TOML basic string: JSON's escapes (``\\"``, ``\\\\``, ``\\n``, ``\\uXXXX``) are TOML's too."""
    return json.dumps(value)


def render_config(*, listen: str, backend: str, aef_id: str, ccf_address: str, ccf_host: str, ccf_ca: str,
                  apis: Sequence[ConfigAPI], issuer: str | None = None,
                  credentials: tuple[str, str] = ("provider/aef.crt", "provider/aef.key"),
                  tls: tuple[str, str] = ("server.crt", "server.key")) -> str:
    """The configuration text: ``listen`` HOST:PORT, ``backend`` http://HOST:PORT, the AEF's ID from the registration,
    the CCF (HOST:PORT, its certificate's host name, its CA file; ``issuer`` the token issuer when not ``ccf_host``),
    ``credentials`` the AEF's CAPIF certificate and key files (by default those of a provider folder named
    ``provider`` beside the file), ``tls`` the front's server certificate and key files. File names are relative to
    the configuration file's folder, as load_config reads them."""
    lines = [f"listen = {_q(listen)}", f"backend = {_q(backend)}", f"aef_id = {_q(aef_id)}",
             "[ccf]", f"address = {_q(ccf_address)}", f"host = {_q(ccf_host)}"]
    if issuer is not None:
        lines.append(f"issuer = {_q(issuer)}")
    lines += [f"ca = {_q(ccf_ca)}",
              "[credentials]", f"certificate = {_q(credentials[0])}", f"private_key = {_q(credentials[1])}",
              "[tls]", f"certificate = {_q(tls[0])}", f"private_key = {_q(tls[1])}"]
    for api in apis:
        lines += ["[[api]]", f"name = {_q(api.name)}", f"prefix = {_q(api.prefix)}",
                  f"interface = {_q(api.interface)}"]
    return "\n".join(lines) + "\n"
