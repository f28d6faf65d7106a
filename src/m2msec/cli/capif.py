"""``m2msec capif``: the API invoker side of CAPIF (docs/capif-invoker.md) over :mod:`m2msec.capif.invoker`.

Secrets go to 0600 files only (the private key, each AEFPSK); an access token goes to standard output or, with
``--out``, to a new 0600 file. Every failure is one line on standard error and a non-zero status (cli/main.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Final

from m2msec.errors import ConfigurationError

__all__ = ["DEFAULT_NOTIFICATION_DESTINATION", "add_enrolment_arguments", "add_parser"]

#: D159: the notificationDestination an invoker gives when its user names none. TS 29.222 makes the member
#: mandatory in the enrolment and in the security context, but an invoker run from the command line has no receiver;
#: a reserved name (RFC 2606 ``.invalid``) that no CCF can deliver to says so honestly
DEFAULT_NOTIFICATION_DESTINATION: Final = "https://notifications.invalid/capif"
_FILTERS: Final = ("api-name", "api-version", "comm-type", "protocol", "aef-id", "data-format", "api-cat")


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("capif", help="a CAPIF API invoker: onboard, discover, security, "
                                                "token, call, offboard (3GPP TS 29.222, TS 33.122)")
    cs = p.add_subparsers(dest="capif_command", required=True, metavar="ACTION")

    o = cs.add_parser("onboard", help="onboard with the CCF and write a new credential folder")
    add_enrolment_arguments(o, "invoker", "credential folder")
    o.add_argument("--notification-destination", default=DEFAULT_NOTIFICATION_DESTINATION, metavar="URL",
                   help=f"where the CCF tells this invoker of revocations (default {DEFAULT_NOTIFICATION_DESTINATION})")
    o.set_defaults(func=_onboard)

    d = cs.add_parser("discover", help="list the service APIs the CCF lets this invoker discover (JSON)")
    _folder(d)
    for name in _FILTERS:
        d.add_argument(f"--{name}", dest=name.replace("-", "_"), metavar="VALUE", help=f"filter: {name}")
    d.set_defaults(func=_discover)

    s = cs.add_parser("security", help="obtain the security method for an AEF's API; derive AEFPSK for PSK")
    _folder(s)
    s.add_argument("--aef-id", required=True, help="the AEF (apiProvFuncId) to be authorized at")
    s.add_argument("--api-id", help="only this service API of the AEF (needed for PSK when the AEF has several "
                   "interfaces)")
    s.add_argument("--prefer", default="PSK,PKI,OAUTH", metavar="METHODS",
                   help="preferred methods, comma-separated (PSK, PKI, OAUTH; default PSK,PKI,OAUTH)")
    s.set_defaults(func=_security)

    t = cs.add_parser("token", help="obtain an OAuth access token (for an AEF whose method is OAUTH)")
    _folder(t)
    t.add_argument("--scope", help="3gpp#aefId:apiName[,apiName...][;aefId:...] (default: every OAUTH API)")
    t.add_argument("--out", type=Path, help="write the token to this new file (mode 0600) instead of standard output")
    t.set_defaults(func=_token)

    c = cs.add_parser("call", help="call an AEF's service API with the selected method (PSK, PKI or OAuth); the "
                      "answer's body goes to standard output")
    _folder(c)
    c.add_argument("--aef", required=True, metavar="HOST:PORT", help="where the AEF listens")
    c.add_argument("--aef-host", help="the AEF's host name as published (its interface P0 and its certificate's "
                   "name; default the HOST of --aef)")
    c.add_argument("--aef-ca", type=Path, help="CA certificate of the AEF's server certificate (PKI and OAuth)")
    c.add_argument("--method", type=str.upper, choices=("PSK", "PKI", "OAUTH"),
                   help="the CAPIF-2e method (default: PSK when an AEFPSK for this interface is in the folder, else "
                   "the one the security context selected)")
    c.add_argument("--token", type=Path, help="file holding an access token (OAuth; default: obtain a new one)")
    c.add_argument("-X", "--request", default="GET", metavar="METHOD", help="the HTTP method (default GET)")
    c.add_argument("-H", "--header", action="append", default=[], metavar="'NAME: VALUE'", help="a request header")
    c.add_argument("--data", metavar="@FILE|TEXT", help="the request body (@FILE reads a file, @- standard input)")
    c.add_argument("path", help="the resource path, /apiPrefix/... (with ?query)")
    c.set_defaults(func=_call)

    f = cs.add_parser("offboard", help="offboard from the CCF (its AEFPSK files are deleted)")
    _folder(f)
    f.set_defaults(func=_offboard)


def add_enrolment_arguments(p: argparse.ArgumentParser, purpose: str, folder: str) -> None:
    """The options of a command that creates something at the CCF with an onboarding credential made ``--for
    purpose`` and writes a new ``folder``: ``capif onboard`` (an invoker), ``aef register`` (a provider domain)."""
    p.add_argument("--ccf", required=True, metavar="HOST:PORT", help="where the CCF listens")
    p.add_argument("--ccf-host", required=True, help="the CCF's host name (its certificate must name it)")
    p.add_argument("--ca", required=True, type=Path, help="the CCF's CA certificate (m2msec ccf ca-certificate)")
    p.add_argument("--credential", required=True, type=Path, help="file holding an onboarding credential made --for "
                   f"{purpose} (m2msec ccf onboarding-credential --out)")
    p.add_argument("--out", required=True, type=Path, help=f"the new {folder} (must not exist)")


def _folder(p: argparse.ArgumentParser) -> None:
    p.add_argument("--folder", required=True, type=Path, help="the invoker's credential folder (m2msec capif onboard)")


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="ascii")
    except FileNotFoundError:
        raise ConfigurationError(f"{path}: no such {what} file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{path}: cannot read the {what}: {getattr(exc, 'strerror', None) or exc}") from None


async def _onboard(args: argparse.Namespace) -> int:
    from m2msec.capif.invoker import onboard
    from m2msec.cli.common import parse_hostport
    from m2msec.keys.table import check_file_permissions

    address = parse_hostport(args.ccf)
    ca = _read_text(args.ca, "CA certificate").encode("ascii")
    if "-----BEGIN CERTIFICATE-----" not in ca.decode("ascii"):
        raise ConfigurationError(f"{args.ca}: not a PEM certificate")
    _read_text(args.credential, "onboarding credential")  # a missing file named as such before the permissions
    check_file_permissions(args.credential)
    credential = _read_text(args.credential, "onboarding credential")
    inv = await onboard(address, args.ccf_host, ca, credential, args.out, args.notification_destination)
    print(f"onboarded as {inv.invoker_id}; credentials in {inv.folder}")
    return 0


async def _discover(args: argparse.Namespace) -> int:
    from m2msec.capif.invoker import discover

    filters = {name: value for name in _FILTERS if (value := getattr(args, name.replace("-", "_"))) is not None}
    found = await discover(args.folder, **filters)
    print(json.dumps(found, indent=2))
    if not found:
        print("no service API matches", file=sys.stderr)
    return 0


async def _security(args: argparse.Namespace) -> int:
    from m2msec.capif.invoker import obtain_security

    methods = [m.strip().upper() for m in args.prefer.split(",") if m.strip()]
    if not methods or any(m not in ("PSK", "PKI", "OAUTH") for m in methods):
        raise ConfigurationError("--prefer lists PSK, PKI, OAUTH, comma-separated")
    result = await obtain_security(args.folder, aef_id=args.aef_id, api_id=args.api_id, preferred=methods)
    files = {f.aef_id: f for f in result.psk_files}
    for entry in result.context.get("securityInfo", []):
        line = f"{entry.get('aefId', args.aef_id)}: {entry.get('selSecurityMethod')}"
        psk = files.get(str(entry.get("aefId", args.aef_id)))
        if entry.get("selSecurityMethod") == "PSK" and psk is not None:
            line += f" (AEFPSK for {psk.interface} in {psk.path})"
        print(line)
    return 0


async def _token(args: argparse.Namespace) -> int:
    from m2msec.capif.invoker import token
    from m2msec.keys.files import check_new_file, write_secret_file

    if args.out is not None:
        check_new_file(args.out)
    got = await token(args.folder, args.scope)
    if args.out is not None:
        write_secret_file(args.out, got["access_token"] + "\n")
    else:
        print(got["access_token"])
    where = f", written to {args.out}" if args.out is not None else ""
    print(f"access token for {got.get('scope', 'every OAUTH API')}, expires in {got.get('expires_in')} s{where}",
          file=sys.stderr)
    return 0


async def _offboard(args: argparse.Namespace) -> int:
    from m2msec.capif.invoker import load, offboard

    inv = load(args.folder)
    await offboard(inv)
    print(f"offboarded {inv.invoker_id}")
    return 0


def _body(data: str | None) -> bytes:
    if data is None:
        return b""
    if not data.startswith("@"):
        return data.encode("utf-8")
    if data == "@-":
        return sys.stdin.buffer.read()
    try:
        return Path(data[1:]).read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"{data[1:]}: cannot read the body: {exc.strerror or exc}") from None


async def _call(args: argparse.Namespace) -> int:
    from m2msec.capif.invoker_call import call_aef, refused
    from m2msec.cli.common import parse_hostport
    from m2msec.keys.table import check_file_permissions

    headers = []
    for text in args.header:
        name, sep, value = text.partition(":")
        if not sep or not name.strip() or any(c in text for c in "\r\n"):
            raise ConfigurationError(f"-H {text!r}: a header is 'NAME: VALUE' on one line")
        headers.append((name.strip(), value.strip()))
    ca = _read_text(args.aef_ca, "CA certificate").encode("ascii") if args.aef_ca is not None else None
    access_token = None
    if args.token is not None:
        check_file_permissions(args.token)
        access_token = _read_text(args.token, "access token").strip()
    answer = await call_aef(args.folder, parse_hostport(args.aef), args.path, request_method=args.request.upper(),
                            body=_body(args.data), headers=headers, aef_host=args.aef_host, aef_ca_pem=ca,
                            method=args.method, access_token=access_token)
    if not 200 <= answer.status < 300:
        raise refused(answer)
    sys.stdout.buffer.write(answer.body)
    sys.stdout.flush()
    print(f"HTTP {answer.status} ({answer.method})", file=sys.stderr)
    return 0
