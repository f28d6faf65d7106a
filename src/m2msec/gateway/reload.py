"""One reload path for every side of the gateway (HTTP and coaps): poll the files it serves from.

A :class:`Reloader` runs one asyncio task per side. Each interval it calls ``poll()`` of every
:class:`Reloadable` source (the TOML PSK table, the CRL file) in a worker thread; ``poll()`` reloads the
file when it changed, applies the source's failure policy and logs, and never raises. State lives in the
source, so two sides polling one table reload it once and log once. When a source's ``generation``
moves, the side's callback runs on the event loop (e.g. new CRLs into the side's TLS context).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

from m2msec.crl import CRLFile
from m2msec.keys.table import PSKTable, TomlPSKTable
from m2msec.tls.engine import TLSContext

__all__ = ["Reloadable", "Reloader", "side_reloader"]

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
