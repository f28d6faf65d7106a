"""One reload path for every side of the gateway (HTTP and coaps): poll the files it serves from.

A :class:`Reloader` runs one asyncio task per side. Each interval it calls ``poll()`` of every
:class:`Reloadable` source (the TOML PSK table, the CRL file) in a worker thread; ``poll()`` reloads the
file when it changed, applies the source's failure policy and logs, and never raises. State lives in the
source, so two sides polling one table reload it once and log once. When a source's ``generation``
moves, the side's callback runs on the event loop (e.g. new CRLs into the side's TLS context).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from m2msec.crl import CRLFile
from m2msec.errors import ConfigurationError, M2MSecError
from m2msec.keys.table import PSKTable, TomlPSKTable
from m2msec.tls.engine import TLSContext
from m2msec.transport.limits import limit_failures, sa_share

if TYPE_CHECKING:
    from m2msec.gateway.coaps_gateway import CoapsGateway
    from m2msec.gateway.http_gateway import Gateway

__all__ = ["RELOADABLE", "ConfigReload", "Reloadable", "Reloader", "side_reloader"]

log = logging.getLogger("m2msec.gateway.reload")


class Reloadable(Protocol):
    @property
    def generation(self) -> int:
        """Moves each time a new version of the source is in use."""
        ...

    def poll(self) -> None:
        """Reload when the file changed (blocking I/O); log failures; never raise."""
        ...


class Reloader:
    """Poll ``sources`` every ``interval`` seconds; call each one's callback (if any) when it reloaded."""

    def __init__(self, sources: Sequence[tuple[Reloadable, Callable[[], None] | None]], interval: float) -> None:
        if interval <= 0:
            raise ValueError("reload interval must be positive")
        self.sources = list(sources)
        self.interval = interval
        self._seen = [source.generation for source, _ in self.sources]
        self._task: asyncio.Task[None] | None = None
        #: told each source that reloaded (``--metrics``: the reload counter, m2msec.metrics)
        self.on_reload: Callable[[Reloadable], None] | None = None

    def start(self) -> None:
        if self.sources and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def poll_once(self) -> None:
        for n, (source, callback) in enumerate(self.sources):
            await asyncio.to_thread(source.poll)
            if source.generation != self._seen[n]:
                self._seen[n] = source.generation
                if self.on_reload is not None:
                    self.on_reload(source)
                if callback is not None:
                    try:
                        callback()
                    except Exception as exc:  # a reload must never stop the side that serves
                        log.error("applying a reloaded %s failed: %s", type(source).__name__, exc)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.poll_once()


def side_reloader(table: PSKTable | None, crls: CRLFile | None, context: TLSContext, interval: float) -> Reloader:
    """The reloader of one side: its PSK table when it is a TOML file, and its CRL file, whose new CRLs go
    into ``context`` for the handshakes that follow."""
    sources: list[tuple[Reloadable, Callable[[], None] | None]] = []
    if isinstance(table, TomlPSKTable):
        sources.append((table, None))  # the engine reads the table per handshake: nothing to push
    if crls is not None:
        crl_file = crls

        def apply_crls() -> None:
            context.update_crls(crl_file.crls.crls)

        apply_crls()  # the file's CRLs, whatever the context was built with
        sources.append((crls, apply_crls))
    return Reloader(sources, interval)


# -- SIGHUP: the whole configuration read again (docs/gateway.md, "Reload")

#: the options (argparse dests) a SIGHUP applies to the running gateway, for the connections and requests that follow
#: (D239); a change to any other option is logged as needing a restart and the running value stays. The files named
#: by --psk-table and --crl are read again whatever changed (their names need a restart).
RELOADABLE = frozenset({
    "cert", "key", "client_ca", "crl", "profiles", "coaps_profiles", "identity_hint", "unbound",
    "reveal_unknown_psk_identity", "max_sa_lifetime", "write_timeout", "max_connections", "max_handshakes_per_source",
    "max_failed_handshakes_per_source", "max_connections_per_source", "max_connections_per_sa", "log_level",
})
#: fields of a side's configuration a reload never changes: used once, at start (listening, the backend, ...)
_KEPT_FIELDS = ("backend", "host", "port", "handshake_timeout", "max_body_memory", "cse_id", "sp_id", "backend_host",
                "backend_port", "blockwise", "max_peers", "max_handshaking", "idle_timeout", "backend_timeout",
                "max_body", "reload_interval")


class ConfigReload:
    """SIGHUP in a serving process: :meth:`request` reads ``--config`` and the files again and applies them to
    ``http`` / ``coaps`` (:data:`RELOADABLE`), or refuses the whole new configuration with one ERROR line."""

    def __init__(self, running: argparse.Namespace, http: Gateway | None, coaps: CoapsGateway | None) -> None:
        self.running = running  # the options in force, as resolved before prepare() adjusted them
        self.http = http
        self.coaps = coaps
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self._closed = False

    def request(self) -> None:
        """The SIGHUP handler: reload now, or once more after the reload under way."""
        if self._closed:
            return
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """No reload from now on (the gateway is stopping); let the one under way finish."""
        self._closed = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            self._again = False
            try:
                await self.reload()
            except Exception as exc:  # one line (its type: the text could quote anything), never a traceback
                log.error("reload failed, the running configuration stays: internal error %s", type(exc).__name__,
                          extra={"event": "reload_failed"})
            if not self._again or self._closed:
                return

    async def reload(self) -> bool:
        """Read and apply the configuration again; False (one ERROR line, nothing changed) when it is refused."""
        from m2msec.cli.gateway import close_clients

        try:  # files read, keys and certificates parsed, contexts built: in a thread, the event loop serves on
            fresh, built, plans = await asyncio.to_thread(self._build)
        except M2MSecError as exc:
            log.error("reload refused, the running configuration stays: %s", exc, extra={"event": "reload_refused"})
            return False
        try:
            if isinstance(plans, M2MSecError):
                log.error("reload refused, the running configuration stays: %s", plans,
                          extra={"event": "reload_refused"})
                return False
            for old, side, (config, context) in plans:
                await _apply(old, side, config, context)
        finally:
            await close_clients(*built)  # the running sides keep theirs
        restart = keep_restart_options(fresh, self.running)
        if not getattr(self.running, "verbose", False):
            logging.getLogger().setLevel(fresh.log_level)
        if fresh.unbound == "forward" and self.running.unbound != "forward":  # said as at a start (D4, O10)
            from m2msec.cli.gateway import UNBOUND_FORWARD_WARNING

            log.warning(UNBOUND_FORWARD_WARNING)
        self.running = fresh
        if restart:
            log.warning("configuration reloaded; changed but needing a restart (still running with the old "
                        "values): %s", ", ".join(restart))
        else:
            log.info("configuration reloaded", extra={"event": "config_reloaded"})
        return True

    def _build(self) -> tuple[argparse.Namespace, tuple[Any, Any], list[Any] | M2MSecError]:
        """The new options (as resolved, before :func:`prepare` adjusted them), the services :func:`prepare` builds
        from them (every check of a start, every file read again) and each side's plan (:func:`_plan`), or the
        error that refuses the plans. Runs in a worker thread. Raises M2MSecError (naming the file's key)."""
        from m2msec.cli.gateway import close_stores, prepare, reread
        from m2msec.gateway.config import name_file_key

        new: argparse.Namespace | None = None
        try:
            new = reread(self.running)
            fresh = argparse.Namespace(**vars(new))
            built = prepare(new)
        except ConfigurationError as exc:
            raise (name_file_key(new, exc) if new is not None else exc) from None
        http, coaps = built
        plans: list[Any] | M2MSecError
        try:  # every new context is built before any side changes: a failure changes nothing
            plans = [(old, side, _plan(old, side)) for old, side in ((self.http, http), (self.coaps, coaps))
                     if old is not None and side is not None]
        except M2MSecError as exc:
            plans = exc
        finally:  # the running sides keep their registrar and key store: the ones opened here go, in this thread
            close_stores(http, coaps)
        return fresh, built, plans


def keep_restart_options(fresh: argparse.Namespace, running: argparse.Namespace) -> list[str]:
    """The keys of the options ``fresh`` changes that need a restart (not :data:`RELOADABLE`, D239); ``fresh`` gets
    their running values back, which the next reload compares with. The single process and the supervisor of
    ``--workers`` both use it."""
    from m2msec.cli.gateway import gateway_parser
    from m2msec.gateway.config import file_options

    changed: list[str] = []
    for key, action in file_options(gateway_parser()).items():
        if action.dest in RELOADABLE:
            continue
        kept = getattr(running, action.dest, None)
        if getattr(fresh, action.dest, None) != kept:
            changed.append(key)
        setattr(fresh, action.dest, kept)
    return changed


def _plan(old: Any, new: Any) -> tuple[Any, TLSContext]:
    """The configuration of ``new`` (built, not serving) for the side ``old`` (serving), with what cannot change
    without a restart kept, and its TLS context over ``old``'s table. Raises ConfigurationError."""
    kept = {name: getattr(old.config, name) for name in _KEPT_FIELDS if hasattr(old.config, name)}
    config = dataclasses.replace(new.config, **kept)
    server = config.server_config(old.table, config.profiles, async_psk=old.maf is not None)
    return config, TLSContext.dtls_server(server) if old.context.dtls else TLSContext.server(server)


async def _apply(old: Any, new: Any, config: Any, context: TLSContext) -> None:
    """Move the side ``old`` to ``config`` and ``context`` (:func:`_plan`), and to ``new``'s CRL file."""
    old.context.adopt(context)  # new handshakes only: live SAs keep theirs
    old.config = config
    old.revocation.crls = new.revocation.crls
    old.revocation.max_lifetime = config.max_sa_lifetime
    on_reload = old._reloader.on_reload  # the metrics' reload counter (O8)
    await old._reloader.close()
    old._reloader = side_reloader(old.table, new.revocation.crls, old.context, config.reload_interval)
    old._reloader.on_reload = on_reload
    old._reloader.start()
    await old._reloader.poll_once()  # the PSK table read again now, not at the next poll
    limiter = getattr(old, "limiter", None)
    if limiter is None and getattr(old, "protocol", None) is not None:
        limiter = old.protocol.limiter
    if limiter is None:
        return
    if hasattr(config, "max_connections"):
        limiter.limit = config.max_connections
    per_sa = getattr(config, "max_connections_per_sa", getattr(config, "max_peers_per_sa", None))
    per_source = getattr(config, "max_connections_per_source", getattr(config, "max_peers_per_source", None))
    handshaking = getattr(config, "max_handshakes_per_source", getattr(config, "max_handshaking_per_source", None))
    for source_limiter, value in ((limiter.sources, handshaking), (limiter.open_per_source, per_source),
                                  (limiter.per_sa, None if per_sa is None else sa_share(per_sa, limiter.limit))):
        if source_limiter is not None and value is not None:
            source_limiter.limit = value
    limit_failures(limiter, config.max_failed_handshakes_per_source)
