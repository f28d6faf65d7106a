"""``m2msec gateway``: Entity B of the Provisioned Symmetric Key SAEF in front of a oneM2M CSE."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from m2msec.cli.common import LOOPS, run_async
from m2msec.cli.gateway_certs import certificate_options
from m2msec.cli.gateway_mef import add_mef_options, mef_fetcher_from_args
from m2msec.crl import CRLFile
from m2msec.errors import ConfigurationError
from m2msec.gateway.coap_blockwise import BlockwiseLimits
from m2msec.gateway.coaps_gateway import CoapsConfig, CoapsGateway
from m2msec.gateway.config import GIVEN, apply_config_file, name_file_key, track_given
from m2msec.gateway.http_gateway import Gateway, GatewayConfig, parse_backend
from m2msec.gateway.limits import DEFAULT_BODY_BUDGET, DEFAULT_WRITE_TIMEOUT, fit_connection_cap
from m2msec.gateway.revocation import DEFAULT_MAX_SA_LIFETIME
from m2msec.gateway.rules import UnboundPolicy
from m2msec.keys.table import PSKTable, TomlPSKTable
from m2msec.maf.client_options import add_maf_options, maf_client_from_args
from m2msec.metrics import (
    add_observability_options,
    check_metrics_workers,
    parse_metrics_address,
    start_observability,
)
from m2msec.tls.engine import CertificateConfig
from m2msec.tls.profiles import CipherProfile, parse_profiles
from m2msec.transport.limits import (
    DEFAULT_MAX_CONNECTIONS_PER_SA,
    DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
    DEFAULT_MAX_FAILED_HANDSHAKES_PER_SOURCE,
    DEFAULT_MAX_HANDSHAKES_PER_SOURCE,
    FAILED_HANDSHAKE_WINDOW,
)

if TYPE_CHECKING:
    from m2msec.gateway.mef_resolver import RemoteKeyResolver
    from m2msec.gateway.registrar import Registrar
    from m2msec.gateway.workers import WorkerSockets

#: --max-connections when not given (lowered to what the file-descriptor limit allows)
DEFAULT_MAX_CONNECTIONS = 10000
#: logged at start with --unbound forward: unbound SAs are then checked by nobody but the CSE
UNBOUND_FORWARD_WARNING = ("--unbound forward: requests on SAs bound to no AE-ID/CSE-ID are forwarded whatever their "
                           "From; the CSE must enforce the registration rules (TS-0001 §10.2.2.2) itself")


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "gateway", help="terminate TLS-PSK and forward oneM2M HTTP requests to a CSE"
    )
    p.add_argument("--config", type=Path, metavar="FILE",
                   help="TOML file holding these options (keys: the option names without --); options given here "
                   "override it; reloaded on SIGHUP (docs/gateway.md, Configuration file)")
    p.add_argument("--check-config", action="store_true",
                   help="build everything the options describe (keys, certificates, CRLs, rules), print "
                   "'configuration OK' and exit, without listening")
    p.add_argument("--listen", default="127.0.0.1:8443", metavar="HOST:PORT", help="default 127.0.0.1:8443")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--psk-table", type=Path, metavar="FILE", help="TOML PSK table (reloaded on change)")
    src.add_argument("--db", type=Path, metavar="FILE", help="SQLite key store (see 'm2msec keys')")
    p.add_argument("--master-key-file", type=Path, help="master key of --db (default DB.key)")
    p.add_argument("--backend", metavar="URL", help="the CSE's HTTP binding, http://HOST:PORT[/prefix]")
    p.add_argument("--coap-backend", metavar="HOST:PORT",
                   help="the CSE's CoAP binding (plain coap://); serves coaps:// (DTLS 1.2 PSK) in front of it")
    p.add_argument("--coaps-listen", default="127.0.0.1:5684", metavar="HOST:PORT",
                   help="where coaps:// is served (UDP; default 127.0.0.1:5684)")
    p.add_argument("--coaps-profiles", default="onem2m-dtls",
                   help="DTLS profiles: onem2m-dtls (PSK, CCM_8), ecdhe-ecdsa-dtls (certificates, needs --cert/--key/"
                   "--client-ca); default onem2m-dtls")
    p.add_argument("--coaps-max-body", type=int, default=BlockwiseLimits.max_body, metavar="BYTES",
                   help="largest CoAP body reassembled or kept for block-wise transfer (RFC 7959; larger requests "
                   "get 4.13); default 1048576")
    p.add_argument("--profiles", default="onem2m,ecdhe-psk",
                   help="cipher profiles in preference order: onem2m, psk, dhe-psk, ecdhe-psk, rsa-psk, tls13, "
                   "ecdhe-ecdsa (certificates, needs --cert/--key/--client-ca) (default onem2m,ecdhe-psk: TLS 1.2 "
                   "only, TS-0003 §10.2.1)")
    p.add_argument("--identity-hint", help="PSK identity hint (RFC 4279 §5.1)")
    p.add_argument("--unbound", choices=[x.value for x in UnboundPolicy], default="reject",
                   help="requests on an SA whose identity has no bound AE-ID/CSE-ID: reject with 4106 (default) "
                   "or forward with the Credential-ID header")
    p.add_argument("--cert", type=Path, help="server certificate chain (PEM, leaf first): rsa-psk, ecdhe-ecdsa")
    p.add_argument("--key", type=Path, help="server private key (PEM; no access for the group or others)")
    p.add_argument("--client-ca", type=Path, help="CA certificates that verify certificate clients (ecdhe-ecdsa)")
    p.add_argument("--crl", type=Path, help="CRLs of the client CAs (PEM or DER, reloaded on change); revoked client "
                   "certificates are refused, live SAs with them end at their next request")
    p.add_argument("--cse-id", help="CSE-ID of the CSE behind the gateway (AE-ID certificates may use their stem)")
    p.add_argument("--sp-id", help="the gateway's SP-ID (//domain or domain); required with ecdhe-ecdsa or "
                   "ecdhe-ecdsa-dtls: certificates of other SPs keep their absolute AE-ID/CSE-ID only")
    p.add_argument("--app-rules", type=Path, metavar="FILE",
                   help="service subscription rules ([[app_rule]] TOML): CREATE <AE> is checked against them "
                        "(4128/4126) and the AE-ID the CSE assigns is bound to the SA's Credential-ID")
    p.add_argument("--registrations", type=Path, metavar="FILE",
                   help="SQLite file keeping the AE-IDs bound at registration (required with --app-rules)")
    p.add_argument("--handshake-timeout", type=float, default=10.0, metavar="SECONDS")
    p.add_argument("--max-connections", type=int, default=None, metavar="N",
                   help=f"open TLS connections beyond which new ones are reset (default {DEFAULT_MAX_CONNECTIONS}, "
                   "lowered to what the file-descriptor limit allows); refused at start above that limit")
    p.add_argument("--max-body-memory", type=int, default=DEFAULT_BODY_BUDGET, metavar="BYTES",
                   help="request-body bytes all connections together may hold; over it, 503 / rsc 5000 "
                   f"(default {DEFAULT_BODY_BUDGET})")
    p.add_argument("--write-timeout", type=float, default=DEFAULT_WRITE_TIMEOUT, metavar="SECONDS",
                   help=f"a client that does not read its response within this is dropped (default "
                   f"{DEFAULT_WRITE_TIMEOUT:g})")
    p.add_argument("--max-handshakes-per-source", type=int, default=DEFAULT_MAX_HANDSHAKES_PER_SOURCE, metavar="N",
                   help="TLS connections and DTLS peers one source (IPv4 address, IPv6 /64) may have in their "
                   f"handshake at once (default {DEFAULT_MAX_HANDSHAKES_PER_SOURCE})")
    p.add_argument("--max-failed-handshakes-per-source", type=int, default=DEFAULT_MAX_FAILED_HANDSHAKES_PER_SOURCE,
                   metavar="N", help="failed TLS/DTLS handshakes one source address (IPv6: /64) may have per "
                   f"{FAILED_HANDSHAKE_WINDOW:.0f} s before its connections are refused until the window ends "
                   f"(default {DEFAULT_MAX_FAILED_HANDSHAKES_PER_SOURCE}; 0: no limit)")
    p.add_argument("--max-connections-per-source", type=int, default=DEFAULT_MAX_CONNECTIONS_PER_SOURCE,
                   metavar="N", help="TLS connections and DTLS peers one source may have open at once (default "
                   f"{DEFAULT_MAX_CONNECTIONS_PER_SOURCE})")
    p.add_argument("--max-connections-per-sa", type=int, default=DEFAULT_MAX_CONNECTIONS_PER_SA, metavar="N",
                   help="established TLS connections and DTLS peers one client credential may hold, at most half "
                   f"of --max-connections / the peer cap (default {DEFAULT_MAX_CONNECTIONS_PER_SA})")
    p.add_argument("--reveal-unknown-psk-identity", action="store_true",
                   help="answer an unknown PSK identity with unknown_psk_identity (debugging) instead of failing "
                   "as for a wrong key (RFC 4279 §2, the default)")
    p.add_argument("--max-sa-lifetime", type=float, default=DEFAULT_MAX_SA_LIFETIME, metavar="SECONDS",
                   help=f"an SA older than this is closed at its next request (default {DEFAULT_MAX_SA_LIFETIME:g})")
    add_maf_options(p, role="its MAF Key Identifiers (<RelativeKeyID>@<MAF-FQDN>) are resolved there by Key "
                    "Retrieval (Kc cached until it expires); other PSK identities still go to --psk-table / --db")
    add_mef_options(p)
    add_observability_options(p)
    p.add_argument("--quiet", action="store_const", dest="log_level", const=logging.WARNING,
                   default=logging.INFO, help="log warnings only")
    p.add_argument("--loop", choices=LOOPS, default="asyncio",
                   help="event loop: asyncio (default) or uvloop (needs the uvloop extra)")
    p.add_argument("--workers", default="1", metavar="N",
                   help="processes serving the same ports (SO_REUSEPORT), under one supervisor that restarts them; "
                   "auto: one per CPU this process may use (default 1: a single process)")
    track_given(p)  # last: the options given on the command line override --config
    p.set_defaults(func=_dispatch)


def gateway_parser() -> argparse.ArgumentParser:
    """A fresh ``m2msec gateway`` parser: the schema of the configuration file (:mod:`m2msec.gateway.config`)."""
    parser = argparse.ArgumentParser(prog="m2msec")
    sub = parser.add_subparsers()
    add_parser(sub)
    return sub.choices["gateway"]


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with the values of ``--config`` the command line did not give (an error is one line)."""
    if args.config is not None:
        args.config = args.config.absolute()  # read again on SIGHUP, whatever the working directory then
        apply_config_file(gateway_parser(), args, args.config)
    return args


def reread(running: argparse.Namespace) -> argparse.Namespace:
    """The options again for a reload: the defaults, then ``--config`` read again, then the command line's."""
    parser = gateway_parser()
    args = parser.parse_args([])
    given: dict[str, Any] = dict(getattr(running, GIVEN, {}))
    for dest, value in given.items():
        setattr(args, dest, value)
    setattr(args, GIVEN, given)
    args.config, args.verbose = running.config, getattr(running, "verbose", False)
    if args.config is not None:
        apply_config_file(parser, args, args.config)
    return args


def _dispatch(args: argparse.Namespace) -> Any:
    """--workers 1: :func:`run` in this process on ``--loop``; more: the supervisor of :mod:`m2msec.gateway.workers`
    (each worker runs :func:`run` on ``--loop``). ``--check-config``: :func:`check_config`."""
    from m2msec.gateway.workers import supervise, worker_count

    early_sighup(True)
    args = resolve(args)
    use_logging(args)
    try:
        if args.check_config:
            return check_config(args)
        workers = worker_count(args.workers)
        if workers > 1:
            return supervise(args, workers)
        try:
            return run_async(run(args), loop=args.loop)
        finally:  # run() blocked SIGHUP while stopping (O2); ignored from now on, one pending discarded
            with contextlib.suppress(ValueError):
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    except ConfigurationError as exc:
        raise name_file_key(args, exc) from None


_EARLY_SIGHUP = [False]


def early_sighup(install: bool) -> bool:
    """Until :func:`run` reloads on SIGHUP, one that comes (``systemctl reload`` right after ``start``) is only
    remembered, never the default action, death (O2). ``install``: start remembering; else: was one received?"""
    if install:
        with contextlib.suppress(ValueError):  # not the main thread: signals are not ours
            signal.signal(signal.SIGHUP, lambda signum, frame: _EARLY_SIGHUP.__setitem__(0, True))
        return False
    received, _EARLY_SIGHUP[0] = _EARLY_SIGHUP[0], False
    return received


def use_logging(args: argparse.Namespace) -> None:
    """``--quiet``, ``--verbose`` and ``--log-format``, from the command line or the configuration file (O1): main()
    set up logging before the file was read. A worker of ``--workers`` calls it too."""
    from m2msec import logs

    logging.getLogger().setLevel(logging.DEBUG if getattr(args, "verbose", False) else args.log_level)
    logs.use_format(args.log_format)


def check_config(args: argparse.Namespace) -> int:
    """``--check-config``: build what :func:`prepare` builds (nothing listens), say so, release it."""
    http, coaps = prepare(args)
    run_async(release(http, coaps))
    print("configuration OK", flush=True)
    return 0


async def release(http: Gateway | None, coaps: CoapsGateway | None) -> None:
    """Close what :func:`prepare` built for services that never started (``--check-config``, a reload)."""
    await close_clients(http, coaps)
    close_stores(http, coaps)


async def close_clients(http: Gateway | None, coaps: CoapsGateway | None) -> None:
    """The connections :func:`prepare` built: the HTTP side's pool to the CSE, the MAF/MEF client both share."""
    if http is not None:
        http.backend_pool.close()
    maf = http.maf if http is not None else coaps.maf if coaps is not None else None
    if maf is not None:
        await maf.close()


def close_stores(http: Gateway | None, coaps: CoapsGateway | None) -> None:
    """The SQLite files :func:`prepare` opened (the registrations, a key store), both sides sharing each; to be
    called in the thread that opened them (a SQLite connection belongs to it)."""
    registrar = http.registrar if http is not None else coaps.registrar if coaps is not None else None
    if registrar is not None:
        registrar.close()
    table = http.table if http is not None else coaps.table if coaps is not None else None
    close = getattr(table, "close", None)  # a key store opened for nothing: its descriptors go too (O6)
    if close is not None:
        close()


def _sp_id(args: argparse.Namespace, served: tuple[CipherProfile, ...]) -> str | None:
    """--sp-id, normalized; required when certificate clients can connect to the ``served`` profiles (they are
    associated by SP, D22)."""
    from m2msec.errors import IdentifierError
    from m2msec.gateway.rules import normalize_sp_id

    certificates = any(p.mutual_certificates for p in served)
    if args.sp_id is None:
        if certificates:
            raise ConfigurationError("certificate profiles (ecdhe-ecdsa, ecdhe-ecdsa-dtls) need --sp-id, the "
                                     "gateway's SP-ID (e.g. //m2m.provider.com)")
        return None
    try:
        return normalize_sp_id(args.sp_id)
    except IdentifierError as exc:
        raise ConfigurationError(f"--sp-id: {exc}") from None


def _profiles(names: str, option: str) -> tuple[CipherProfile, ...]:
    try:
        return parse_profiles(names)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{option}: {exc}") from None


def prepare(args: argparse.Namespace) -> tuple[Gateway | None, CoapsGateway | None]:
    """Check the options and build the HTTP and coaps services (nothing listens yet); an error is one line."""
    from m2msec.cli.common import parse_hostport

    host, port = parse_hostport(args.listen)
    table: PSKTable | None = None
    if args.psk_table is not None:
        table = TomlPSKTable(args.psk_table)
    elif args.db is not None:
        from m2msec.keys.sqlite_store import SQLitePSKStore

        if not args.db.exists():
            raise ConfigurationError(f"{args.db}: no such key store (create it with 'm2msec keys add')")
        table = SQLitePSKStore(args.db, master_key_file=args.master_key_file)
    for option in ("handshake_timeout", "max_sa_lifetime", "write_timeout"):  # NaN, inf and <= 0 refused (O9)
        if not 0 < getattr(args, option) < math.inf:
            raise ConfigurationError(f"--{option.replace('_', '-')} must be a positive number of seconds")
    from m2msec.gateway.workers import worker_count

    check_metrics_workers(args, worker_count(args.workers))  # what run() would refuse, --check-config too (O3)
    if args.metrics is not None:
        parse_metrics_address(args.metrics)
    if args.max_connections is not None and args.max_connections < 1:
        raise ConfigurationError("--max-connections must be at least 1")
    if args.max_body_memory < 1:
        raise ConfigurationError("--max-body-memory must be at least 1")
    if args.max_handshakes_per_source < 1:
        raise ConfigurationError("--max-handshakes-per-source must be at least 1")
    if args.max_failed_handshakes_per_source < 0:
        raise ConfigurationError("--max-failed-handshakes-per-source must be 0 (no limit) or more")
    if args.max_connections_per_source < 1:
        raise ConfigurationError("--max-connections-per-source must be at least 1")
    if args.max_connections_per_sa < 1:
        raise ConfigurationError("--max-connections-per-sa must be at least 1")
    if args.backend is None and args.coap_backend is None:
        raise ConfigurationError("give --backend (HTTP), --coap-backend (CoAP) or both")
    if args.backend is not None:
        parse_backend(args.backend)  # a bad URL is reported before anything is adjusted or started
    http_profiles = _profiles(args.profiles, "--profiles") if args.backend is not None else ()
    coaps_profiles = _profiles(args.coaps_profiles, "--coaps-profiles") if args.coap_backend is not None else ()
    args.sp_id = _sp_id(args, http_profiles + coaps_profiles)
    certificate, crls = certificate_options(args)  # read once, shared by the HTTP and coaps sides
    registrar = _registrar(args)
    maf = _remote_keys(args, table)
    coaps: CoapsGateway | None = None
    if args.coap_backend is not None:
        if table is None and maf is None and not any(p.mutual_certificates for p in coaps_profiles):
            raise ConfigurationError("coaps:// needs a PSK table (--psk-table or --db) or the ecdhe-ecdsa-dtls profile")
        if args.coaps_max_body < 1:
            raise ConfigurationError("--coaps-max-body must be a positive number of bytes")
        chost, cport = parse_hostport(args.coaps_listen)
        bhost, bport = parse_hostport(args.coap_backend)
        coaps_config = CoapsConfig(backend_host=bhost, backend_port=bport, host=chost, port=cport,
                                   profiles=coaps_profiles, identity_hint=args.identity_hint,
                                   unbound_policy=UnboundPolicy(args.unbound), cse_id=args.cse_id, sp_id=args.sp_id,
                                   handshake_timeout=args.handshake_timeout, certificate=certificate,
                                   reveal_unknown_psk_identity=args.reveal_unknown_psk_identity,
                                   max_handshaking_per_source=args.max_handshakes_per_source,
                                   max_peers_per_source=args.max_connections_per_source,
                                   max_peers_per_sa=args.max_connections_per_sa,
                                   max_sa_lifetime=args.max_sa_lifetime,
                                   max_failed_handshakes_per_source=args.max_failed_handshakes_per_source,
                                   blockwise=BlockwiseLimits.for_max_body(args.coaps_max_body))
        _fit_file_descriptors(args, coaps_config.max_peers)
        coaps = CoapsGateway(coaps_config, table, crls=crls, maf=maf, registrar=registrar)
    else:
        _fit_file_descriptors(args, 0)
    http = (_http_gateway(args, host, port, http_profiles, table, certificate, crls, maf, registrar)
            if args.backend is not None else None)
    return http, coaps


def _registrar(args: argparse.Namespace) -> Registrar | None:
    """``--app-rules`` with ``--registrations``: the rules and bindings both sides share, None without them."""
    from m2msec.gateway.registrar import BindingStore, Registrar
    from m2msec.gateway.subscription import RuleTable

    if args.app_rules is None:
        if args.registrations is not None:
            raise ConfigurationError("--registrations needs --app-rules (the rules registrations are checked with)")
        return None
    if args.registrations is None:
        raise ConfigurationError("--app-rules needs --registrations FILE, where the AE-IDs assigned at "
                                 "registration are kept (a restart must not forget them)")
    rules = RuleTable.from_file(args.app_rules)
    return Registrar(rules, BindingStore(args.registrations), cse_id=args.cse_id, sp_id=args.sp_id)


def _remote_keys(args: argparse.Namespace, table: PSKTable | None) -> RemoteKeyResolver | None:
    """``--maf`` and / or ``--mef``: the resolver both sides share (one MAF client with its Kc cache, one MEF
    fetcher with its Kpsa cache; with both, chained by FQDN in front of the table), None without either."""
    from m2msec.gateway.maf_resolver import MAFKeyResolver
    from m2msec.gateway.mef_resolver import ChainResolver, MEFKeyResolver
    from m2msec.mef.client import check_distinct_fqdns

    client = maf_client_from_args(args)
    fetcher = mef_fetcher_from_args(args)
    if fetcher is None:
        return MAFKeyResolver(client, table) if client is not None else None
    if client is None:
        return MEFKeyResolver(fetcher, table)
    check_distinct_fqdns(fetcher.mef_fqdn, [client.maf_fqdn])  # D189: else a KeID could pass for a MAF key's id
    return ChainResolver([MAFKeyResolver(client), MEFKeyResolver(fetcher)], table)


async def run(args: argparse.Namespace, *, sockets: WorkerSockets | None = None) -> int:
    """Serve until SIGTERM / SIGINT; as worker ``sockets.index`` of ``--workers``, on its share of the sockets
    (its start lines are the supervisor's to print) and draining before it closes."""
    from m2msec.gateway.reload import ConfigReload

    running = argparse.Namespace(**vars(args))  # as resolved: what a reload compares the new options with
    http, coaps = prepare(args)
    observability = start_observability(args, http, coaps, sockets)  # --metrics: before the sides start
    services: list[Gateway | CoapsGateway] = []
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reload = ConfigReload(running, http, coaps)
    for sig in (signal.SIGINT, signal.SIGTERM):  # before the start lines: a SIGTERM right after them stops cleanly
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGHUP, reload.request)  # config, certificates, CRLs, PSK table again
    if coaps is not None:
        await coaps.start(sock=sockets.udp if sockets is not None else None)
        if sockets is None:
            cfg = coaps.config
            print(f"m2msec coaps gateway on {cfg.host}:{coaps.port} -> coap://{cfg.backend_host}:{cfg.backend_port}",
                  flush=True)
        services.append(coaps)
    if http is not None:
        await http.start(sock=sockets.tcp if sockets is not None else None)
        if args.lowered_max_connections:  # said once serving, so that a refused start stays a one-line error
            logging.getLogger("m2msec.gateway").info("--max-connections lowered to %d to fit the file-descriptor "
                                                     "limit", http.config.max_connections)
        if sockets is None:
            print(f"m2msec gateway on {http.config.host}:{http.port} -> {http.config.backend}", flush=True)
        services.append(http)
    if args.unbound == UnboundPolicy.FORWARD.value:  # D4; said once serving, as a refused start is one line
        logging.getLogger("m2msec.gateway").warning(UNBOUND_FORWARD_WARNING)
    if sockets is not None:
        sockets.serving()
    if early_sighup(False):
        reload.request()  # the SIGHUP that came while starting
    await stop.wait()
    with contextlib.suppress(ValueError):  # stopping: SIGHUP stays pending, never the default action (O2) once the
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})  # loop's handler goes with the loop
    await reload.close()  # a SIGHUP while stopping (draining) is ignored, never the default action (exit)
    if sockets is not None:
        from m2msec.gateway.worker import drain

        await drain(services, sockets)
    for service in services:
        await service.close()
    maf = http.maf if http is not None else coaps.maf if coaps is not None else None
    if maf is not None:
        await maf.close()
    registrar = http.registrar if http is not None else coaps.registrar if coaps is not None else None
    if registrar is not None:
        registrar.close()
    if observability is not None:
        await observability.close()
    return 0


def _fit_file_descriptors(args: argparse.Namespace, coaps_peers: int) -> None:
    """Refuse caps above RLIMIT_NOFILE (raising the soft limit if that is enough); fix args.max_connections."""
    wanted = args.max_connections if args.backend is not None else 0
    cap = fit_connection_cap(wanted, DEFAULT_MAX_CONNECTIONS, coaps_peers)
    args.lowered_max_connections = args.max_connections is None and cap < DEFAULT_MAX_CONNECTIONS
    if args.max_connections is None and args.backend is not None:
        args.max_connections = cap


def _http_gateway(args: argparse.Namespace, host: str, port: int, profiles: tuple[CipherProfile, ...],
                  table: PSKTable | None,
                  certificate: CertificateConfig | None, crls: CRLFile | None,
                  maf: RemoteKeyResolver | None = None, registrar: Registrar | None = None) -> Gateway:
    config = GatewayConfig(
        backend=parse_backend(args.backend),
        host=host,
        port=port,
        profiles=profiles,
        identity_hint=args.identity_hint,
        unbound_policy=UnboundPolicy(args.unbound),
        handshake_timeout=args.handshake_timeout,
        max_connections=args.max_connections,
        max_body_memory=args.max_body_memory,
        write_timeout=args.write_timeout,
        max_handshakes_per_source=args.max_handshakes_per_source,
        max_connections_per_source=args.max_connections_per_source,
        max_connections_per_sa=args.max_connections_per_sa,
        certificate=certificate,
        cse_id=args.cse_id,
        sp_id=args.sp_id,
        max_sa_lifetime=args.max_sa_lifetime,
        reveal_unknown_psk_identity=args.reveal_unknown_psk_identity,
        max_failed_handshakes_per_source=args.max_failed_handshakes_per_source,
    )
    return Gateway(config, table, crls=crls, maf=maf, registrar=registrar)
