"""The PSK lookup table (TR-0038 §7.1.2: "OpenSSL does not provide a psk-lookup-table").

A table maps ``psk_identity`` (a KpsaID, TS-0003 §10.5) to a :class:`PSKEntry`: the key and, when
known, the AE-ID or CSE-ID bound to it (the "client identity" column of TR-0038 Table 7.1.2-2).
Lookups are dictionary reads (O(1)); the engine calls them inside the handshake.

The TOML source format (one ``[[psk]]`` table per entry)::

    [[psk]]
    identity = "test@onem2m.com"     # KpsaID, used verbatim as psk_identity
    key = "313233343536"             # hex
    entity = "CAE01"                 # optional AE-ID / CSE-ID bound to the key
    description = "..."              # optional, free text

This module is pure apart from reading the file; watching it for changes is the adapters' job
(:meth:`TomlPSKTable.poll` is what :mod:`m2msec.gateway.reload` calls).
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from m2msec.errors import CredentialsLoadError
from m2msec.keys.files import file_signature
from m2msec.keys.secret import MAX_PSK_LENGTH, SecretKey

__all__ = [
    "MAX_IDENTITY_LENGTH",
    "MAX_SYMLINK_HOPS",
    "SECRET_FILE_FORBIDDEN_BITS",
    "TABLE_FAILURE_GRACE",
    "UNSAFE_DIRECTORY_BITS",
    "MemoryPSKTable",
    "PSKEntry",
    "PSKTable",
    "TomlPSKTable",
    "check_file_permissions",
    "parse_toml_table",
    "validate_identity",
]

log = logging.getLogger("m2msec.keys")

#: OpenSSL PSK_MAX_IDENTITY_LEN (RFC 4279 §5.1 allows 2^16-1; OpenSSL caps at 256 bytes)
MAX_IDENTITY_LENGTH = 256
#: seconds a PSK table file may stay missing, empty or invalid while the last good table stays in use; after
#: that no PSK is served until the file is valid again (docs/decisions.md D27)
TABLE_FAILURE_GRACE = 10.0
_ENTRY_FIELDS = frozenset({"identity", "key", "entity", "description"})


def validate_identity(identity: str) -> str:
    """Check a psk_identity: 1..256 bytes of UTF-8, no NUL or control characters."""
    raw = identity.encode("utf-8", "surrogatepass")
    if not raw or len(raw) > MAX_IDENTITY_LENGTH:
        raise ValueError(f"psk identity must be 1..{MAX_IDENTITY_LENGTH} bytes of UTF-8")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in identity):
        raise ValueError("psk identity must not contain control characters")
    return identity


@dataclass(frozen=True)
class PSKEntry:
    """One row of the PSK lookup table. ``key`` is redacted in repr."""

    identity: str
    key: SecretKey
    entity: str | None = None
    description: str | None = None
    #: the TS-0003 §10.4 Credential-ID of the key when it is not formed from ``identity`` (a MAF-distributed Kc:
    #: the Credential-ID of its source, e.g. ``11-<KmID>``); the SA is then associated through it
    credential_id: str | None = None

    def __post_init__(self) -> None:
        validate_identity(self.identity)
        if len(self.key) > MAX_PSK_LENGTH:
            raise ValueError(f"psk must be at most {MAX_PSK_LENGTH} bytes")
        if self.entity is not None and (not self.entity or any(ord(c) < 0x21 for c in self.entity)):
            raise ValueError("entity must be a non-empty AE-ID or CSE-ID without spaces")


class PSKTable(Protocol):
    """What the TLS engine needs from a table."""

    def lookup(self, identity: str) -> PSKEntry | None: ...


class MemoryPSKTable:
    """An in-memory table. :meth:`replace` swaps the whole table atomically (live connections keep the
    entry they authenticated with)."""

    def __init__(self, entries: Iterable[PSKEntry] | Mapping[str, PSKEntry] = ()) -> None:
        self._entries: dict[str, PSKEntry] = {}
        self.replace(entries)

    def lookup(self, identity: str) -> PSKEntry | None:
        return self._entries.get(identity)

    def replace(self, entries: Iterable[PSKEntry] | Mapping[str, PSKEntry]) -> None:
        if isinstance(entries, Mapping):
            new = dict(entries)
        else:
            new = {}
            for entry in entries:
                if entry.identity in new:
                    raise CredentialsLoadError(f"duplicate psk identity {entry.identity!r}")
                new[entry.identity] = entry
        self._entries = new  # one reference assignment: readers see the old or the new table

    def entries(self) -> list[PSKEntry]:
        return list(self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, identity: object) -> bool:
        return identity in self._entries

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {len(self._entries)} entries>"


#: Permission bits a file holding secrets must not have: any access by the group or by others (as ssh refuses
#: an "unprotected private key file"). docs/decisions.md D35.
SECRET_FILE_FORBIDDEN_BITS = stat.S_IRWXG | stat.S_IRWXO


#: Permission bits that let the group or others replace a file in a directory (rename, unlink, create): refused on
#: the directory of a file holding secrets and on each of its parents up to ``/``, unless the sticky bit is set
#: (others may then only replace their own entries, and the file must be ours or root's). docs/decisions.md D43.
UNSAFE_DIRECTORY_BITS = stat.S_IWGRP | stat.S_IWOTH
#: Symbolic links followed while finding the directories of a file holding secrets (Linux's MAXSYMLINKS):
#: every directory along the whole link chain is checked (docs/decisions.md D43)
MAX_SYMLINK_HOPS = 40


def _trusted_owner(uid: int) -> bool:
    return uid in (0, os.geteuid())


def _directories(path: Path) -> list[Path]:
    """The directories whose entries decide what ``path`` names: every directory in which a name of ``path``
    or of a symlink met while resolving it (the whole chain, not only the first link) is looked up, each up to
    ``/``. A loop or a chain longer than :data:`MAX_SYMLINK_HOPS` is refused."""
    out: list[Path] = []

    def add(directory: Path) -> None:
        for d in (directory, *directory.parents):
            if d not in out:
                out.append(d)

    pending = list(path.absolute().parts[1:])
    current = Path(path.absolute().anchor)
    hops = 0
    while pending:
        name = pending.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            current = current.parent
            continue
        add(current)
        candidate = current / name
        if candidate.is_symlink():
            hops += 1
            if hops > MAX_SYMLINK_HOPS:
                raise CredentialsLoadError(f"{path}: too many levels of symbolic links")
            target = Path(os.readlink(candidate))
            if target.is_absolute():
                current = Path(target.anchor)
            pending[:0] = [p for p in target.parts if p != target.anchor]
        else:
            current = candidate
    add(current.parent)
    return out


def check_file_permissions(path: Path) -> None:
    """Refuse a file holding secrets (PSK table, key file, master key, private key, key store) that others could
    read or replace, as ssh's StrictModes does (docs/decisions.md D35, D43):

    * the group or other users have any access to it (:data:`SECRET_FILE_FORBIDDEN_BITS`);
    * it is owned by a user other than the process's effective user or root;
    * its directory or a parent up to ``/`` is owned by another user, or writable by the group or others
      without the sticky bit (:data:`UNSAFE_DIRECTORY_BITS`): they could rename their own file over it.

    Raises:
        CredentialsLoadError: one line naming the path, the problem and the command that fixes it.
    """
    try:
        st = path.stat()
    except OSError as exc:
        raise CredentialsLoadError(f"{path}: cannot read: {exc.strerror}") from None
    mode = st.st_mode
    if mode & SECRET_FILE_FORBIDDEN_BITS:
        raise CredentialsLoadError(
            f"{path}: holds keys but group or other users have access to it (mode {stat.S_IMODE(mode):04o}); "
            f"run: chmod 600 {path}"
        )
    me = os.geteuid()
    if not _trusted_owner(st.st_uid):
        raise CredentialsLoadError(
            f"{path}: holds keys but is owned by uid {st.st_uid}, not by this user (uid {me}) or root: another "
            f"user may have replaced it; check its content, then run: chown {me} {path}"
        )
    for directory in _directories(path):
        try:
            dst = directory.stat()
        except OSError as exc:
            raise CredentialsLoadError(f"{path}: cannot check directory {directory}: {exc.strerror}") from None
        if not _trusted_owner(dst.st_uid):
            raise CredentialsLoadError(
                f"{path}: holds keys but its directory {directory} is owned by uid {dst.st_uid}, not by this user "
                f"(uid {me}) or root, who could replace the file; run: chown {me} {directory}"
            )
        if dst.st_mode & UNSAFE_DIRECTORY_BITS and not dst.st_mode & stat.S_ISVTX:
            raise CredentialsLoadError(
                f"{path}: holds keys but its directory {directory} is writable by group or other users (mode "
                f"{stat.S_IMODE(dst.st_mode):04o}), who could replace the file; run: chmod go-w {directory}"
            )


def parse_toml_table(text: str, source: str = "<toml>") -> dict[str, PSKEntry]:
    """Parse the TOML form above. Errors name the file and entry, never the key value."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CredentialsLoadError(f"{source}: invalid TOML: {exc}") from None
    unknown_top = set(doc) - {"psk"}
    if unknown_top:
        raise CredentialsLoadError(f"{source}: unknown top-level key(s): {', '.join(sorted(unknown_top))}")
    rows = doc.get("psk", [])
    if not isinstance(rows, list):
        raise CredentialsLoadError(f"{source}: 'psk' must be an array of tables ([[psk]])")
    out: dict[str, PSKEntry] = {}
    for n, row in enumerate(rows, start=1):
        where = f"{source}: [[psk]] #{n}"
        if not isinstance(row, dict):
            raise CredentialsLoadError(f"{where}: must be a table")
        extra = set(row) - _ENTRY_FIELDS
        if extra:
            raise CredentialsLoadError(
                f"{where}: unknown field(s) {', '.join(sorted(extra))}; allowed: {', '.join(sorted(_ENTRY_FIELDS))}"
            )
        identity, key_hex = row.get("identity"), row.get("key")
        entity, description = row.get("entity"), row.get("description")
        if not isinstance(identity, str):
            raise CredentialsLoadError(f"{where}: 'identity' is required and must be a string")
        if not isinstance(key_hex, str):
            raise CredentialsLoadError(f"{where} ({identity!r}): 'key' is required and must be a hex string")
        if entity is not None and not isinstance(entity, str):
            raise CredentialsLoadError(f"{where} ({identity!r}): 'entity' must be a string")
        if description is not None and not isinstance(description, str):
            raise CredentialsLoadError(f"{where} ({identity!r}): 'description' must be a string")
        try:
            key = SecretKey.from_hex(key_hex)
            entry = PSKEntry(identity, key, entity, description)
        except ValueError as exc:  # validate_identity / PSKEntry checks (messages hold no key)
            raise CredentialsLoadError(f"{where} ({identity!r}): {exc}") from None
        except CredentialsLoadError:
            raise
        except Exception as exc:  # SecretKey errors: ConfigurationError without the value
            raise CredentialsLoadError(f"{where} ({identity!r}): {exc}") from None
        if identity in out:
            raise CredentialsLoadError(f"{where}: duplicate identity {identity!r}")
        out[identity] = entry
    return out


class TomlPSKTable(MemoryPSKTable):
    """A table loaded from a TOML file, reloaded when the file changes (:meth:`poll`, called by the gateway's
    reloader for every side that serves the table).

    A file that is missing, empty, unreadable or invalid is an ERROR naming the file and the reason. The last
    good table stays in use for ``failure_grace`` seconds (an editor's non-atomic save, a file being
    replaced), then no PSK is served until the file is valid again: deleting the file revokes everyone, and
    a broken table does not keep serving entries the operator meant to remove (docs/decisions.md D27).
    """

    def __init__(self, path: str | os.PathLike[str], *, failure_grace: float = TABLE_FAILURE_GRACE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = Path(path)
        self.failure_grace = failure_grace
        self.clock = clock
        self.generation = 0
        self._signature: tuple[int, int, int, int] | None = None
        self._reload_lock = threading.Lock()
        self._failing_since: float | None = None
        self._failed_signature: tuple[int, int, int, int] | None = None
        self._emptied = False
        super().__init__(self._load())

    def _stat_signature(self) -> tuple[int, int, int, int]:
        return file_signature(self.path)

    def _load(self) -> dict[str, PSKEntry]:
        check_file_permissions(self.path)
        try:
            signature = self._stat_signature()
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CredentialsLoadError(f"{self.path}: cannot read: {exc}") from None
        entries = parse_toml_table(text, str(self.path))
        self._signature = signature
        return entries

    def changed(self) -> bool:
        """True when the file's signature (:func:`file_signature`) differs from the loaded one."""
        try:
            return self._stat_signature() != self._signature
        except OSError:
            return False  # a file being replaced may be missing for a moment: keep serving

    def reload_if_changed(self) -> bool:
        """Reload when the file changed. Returns True when a new table is now in use.

        Raises:
            CredentialsLoadError: the changed file is invalid (the old table stays in use).
        """
        with self._reload_lock:
            if not self.changed():
                return False
            try:
                entries = self._load()
            except CredentialsLoadError:
                # do not retry the same broken version in a loop
                try:
                    self._signature = self._stat_signature()
                except OSError:
                    pass
                raise
            self.replace(entries)
            self.generation += 1
        log.info("reloaded PSK table %s: %d entries", self.path, len(entries), extra={"event": "psk_table_reloaded"})
        return True

    def poll(self) -> None:
        """Reload the file when it changed and apply the failure policy above. Never raises; logs."""
        with self._reload_lock:
            try:
                signature = self._stat_signature()
            except OSError as exc:
                self._failing(_MISSING, f"{self.path}: cannot read: {exc.strerror or exc}")
                return
            if signature == self._signature and self._failing_since is None:
                return
            if signature == self._failed_signature:
                self._failing(signature, "")
                return
            if signature[1] == 0:  # an editor truncating before it writes: never read as "no entries"
                self._failing(signature, f"{self.path}: file is empty")
                return
            try:
                entries = self._load()
            except CredentialsLoadError as exc:
                self._failing(signature, str(exc))
                return
            recovered = self._failing_since is not None
            self._failing_since, self._failed_signature, self._emptied = None, None, False
            self.replace(entries)
            self.generation += 1
        log.info("reloaded PSK table %s: %d entries%s", self.path, len(entries), " (valid again)" if recovered else "",
                 extra={"event": "psk_table_reloaded"})

    def _failing(self, signature: tuple[int, int, int, int], reason: str) -> None:
        now = self.clock()
        since = self._failing_since if self._failing_since is not None else now
        self._failing_since = since
        if signature != self._failed_signature:
            self._failed_signature = signature
            if not self._emptied:
                log.error("PSK table not reloaded: %s; the last good table stays in use for at most %g s",
                          reason, max(0.0, self.failure_grace - (now - since)))
            else:
                log.error("PSK table still unusable: %s; no PSK is served", reason)
        if not self._emptied and now - since >= self.failure_grace:
            self._emptied = True
            self.replace({})
            self.generation += 1
            log.error("PSK table %s unusable for %g s: no PSK is served (every PSK handshake and live PSK SA is "
                      "refused) until the file is valid again", self.path, self.failure_grace)


_MISSING = (-1, -1, -1, -1)
