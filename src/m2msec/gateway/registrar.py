"""Registration upon SAE, the gateway's state: the service subscription rules and the AE-IDs bound to Credential-IDs.

:class:`Registrar` is what the gateway holds when it is given ``--app-rules`` and ``--registrations``:

* the :class:`~m2msec.gateway.rules.CredentialResolver` of both sides (TS-0003 §8.2.1): a Credential-ID may act as
  the AE-IDs bound to it at earlier registrations (all their ``From`` forms) and the wildcard-free ``aae`` entries
  of the rules that apply to it (D99);
* the per-request decision (:meth:`Registrar.authorize`, the pure :func:`m2msec.gateway.registration.authorize`;
  a credential-only SA's AE-IDs are re-read at each of its requests — one indexed SQLite read: another connection or
  worker may have registered one, or the CSE may have given one to another registration since);
* after a successful CREATE <AE>, :meth:`Registrar.registered` binds the AE-ID the CSE assigned to the SA's
  Credential-ID in :class:`BindingStore` (an SQLite file shared by the workers; nothing secret in it) and returns the
  SA with its new ``From`` forms.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from m2msec.errors import AppRuleValidationFailed, ConfigurationError
from m2msec.gateway.registration import (
    AECreate,
    aei_from_body,
    authorize,
    cse_id_of,
    registered_forms,
)
from m2msec.gateway.rules import SecurityAssociation, UnboundPolicy
from m2msec.gateway.subscription import RuleTable

__all__ = ["MAX_AE_IDS_PER_CREDENTIAL", "BindingStore", "Registrar"]

log = logging.getLogger("m2msec.gateway")

#: docs/decisions.md D103: AE-IDs one Credential-ID may have bound; a further CREATE <AE> through an SA of that
#: credential is refused (4126) before it reaches the CSE, so a client cannot grow the binding file without bound.
MAX_AE_IDS_PER_CREDENTIAL: Final = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ae_binding (
    credential_id TEXT NOT NULL,
    ae_id TEXT NOT NULL,
    bound_at REAL NOT NULL,
    PRIMARY KEY (credential_id, ae_id)
)
"""


def _check_owner(path: Path) -> None:
    """The bindings are identities: the file, and SQLite's side files when they exist (a planted ``-wal`` would be
    used as is), must be this user's and writable by nobody else, in a directory others cannot write to unless it is
    sticky (where they cannot replace our files)."""
    directory = path.resolve().parent.stat()
    if directory.st_mode & 0o022 and not directory.st_mode & stat.S_ISVTX:
        raise ConfigurationError(f"{path}: the registrations file is in a directory others may write to (mode "
                                 f"{directory.st_mode & 0o777:o}): its rows are identities")
    for candidate in (path, *(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal"))):
        try:
            st = candidate.stat()
        except FileNotFoundError:
            continue
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise ConfigurationError(f"{candidate}: the registrations file must belong to this user and be writable "
                                     f"by nobody else (mode {st.st_mode & 0o777:o}): its rows are identities; "
                                     "chmod 600 it")


class BindingStore:
    """Credential-ID -> AE-IDs assigned at registration, in an SQLite file (created 0600 when missing)."""

    def __init__(self, path: Path, *, clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self._clock = clock
        try:
            if not path.exists():
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            _check_owner(path)
            self._db = sqlite3.connect(path, timeout=5.0, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else str(exc)
            raise ConfigurationError(f"{path}: cannot open the registrations file: {reason}") from None

    def ae_ids(self, credential_id: str) -> tuple[str, ...]:
        rows = self._db.execute("SELECT ae_id FROM ae_binding WHERE credential_id = ? ORDER BY bound_at, ae_id",
                                (credential_id,)).fetchall()
        return tuple(str(row[0]) for row in rows)

    def unbind_others(self, credential_id: str, forms: frozenset[str]) -> None:
        """Remove the bindings of ``forms`` (one AE-ID's spellings) to every credential but ``credential_id``."""
        with self._transaction():
            self._unbind_others(credential_id, forms)

    def _unbind_others(self, credential_id: str, forms: frozenset[str]) -> None:
        self._db.executemany("DELETE FROM ae_binding WHERE ae_id = ? AND credential_id != ?",
                             [(form, credential_id) for form in sorted(forms)])

    def held_by_others(self, credential_id: str, ae_ids: set[str]) -> frozenset[str]:
        """Which of ``ae_ids`` are bound to another credential than ``credential_id``."""
        if not ae_ids:
            return frozenset()
        marks = ",".join("?" * len(ae_ids))
        rows = self._db.execute(f"SELECT ae_id FROM ae_binding WHERE credential_id != ? AND ae_id IN ({marks})",
                                (credential_id, *sorted(ae_ids))).fetchall()
        return frozenset(str(row[0]) for row in rows)

    def count(self, credential_id: str) -> int:
        row = self._db.execute("SELECT COUNT(*) FROM ae_binding WHERE credential_id = ?", (credential_id,)).fetchone()
        return int(row[0])

    def bind(self, credential_id: str, ae_id: str, forms: frozenset[str] = frozenset()) -> bool:
        """Bind ``ae_id`` to ``credential_id`` and no other: the bindings of other credentials to ``ae_id`` or any of
        its ``forms`` go (an AE-ID belongs to one registration at a time, D104). False when the credential already has
        :data:`MAX_AE_IDS_PER_CREDENTIAL` other AE-IDs."""
        with self._transaction():
            known = self._db.execute("SELECT 1 FROM ae_binding WHERE credential_id = ? AND ae_id = ?",
                                     (credential_id, ae_id)).fetchone()
            if known is not None:
                return True
            if self.count(credential_id) >= MAX_AE_IDS_PER_CREDENTIAL:
                return False
            # the CSE registered this AE anew: whoever held it before (an AE since deregistered) holds it no more
            self._unbind_others(credential_id, forms | {ae_id})
            self._db.execute("INSERT INTO ae_binding (credential_id, ae_id, bound_at) VALUES (?, ?, ?)",
                             (credential_id, ae_id, self._clock()))
            return True

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()


class Registrar:
    """The rules and the bindings of one gateway (both sides share it); see the module docstring."""

    def __init__(self, rules: RuleTable, bindings: BindingStore, *, cse_id: str | None = None,
                 sp_id: str | None = None) -> None:
        self.rules = rules
        self.bindings = bindings
        self.cse_id = cse_id
        self.sp_id = sp_id

    def _bound_forms(self, credential_id: str) -> frozenset[str]:
        forms: set[str] = set()
        for aei in self.bindings.ae_ids(credential_id):
            forms |= registered_forms(aei, self.cse_id, self.sp_id)
        return frozenset(forms)

    def resolve(self, credential_id: str) -> frozenset[str] | None:
        """:class:`~m2msec.gateway.rules.CredentialResolver`: bound AE-IDs (every form) and the rules' stems (D99);
        None when no rule applies to the credential (its bindings count only while one does: removing its rules
        revokes them)."""
        ruled = self.rules.resolve(credential_id)  # None exactly when no rule applies
        if ruled is None:
            return None
        try:
            bound = self._bound_forms(credential_id)
        except sqlite3.Error as exc:
            log.error("reading %s failed: %s", self.bindings.path, exc)
            bound = frozenset()
        if ruled:  # a rule's explicit stem is no identity of this credential once another one holds it (D99)
            forms = {stem: registered_forms(stem, self.cse_id, self.sp_id) for stem in ruled}
            try:
                taken = self.bindings.held_by_others(credential_id, set().union(*forms.values()))
            except sqlite3.Error as exc:
                log.error("reading %s failed: %s", self.bindings.path, exc)
                return bound
            ruled = frozenset(stem for stem, spelt in forms.items() if not spelt & taken)
        return ruled | bound

    def authorize(self, sa: SecurityAssociation, origin: str | None, policy: UnboundPolicy,
                  create: AECreate | None) -> SecurityAssociation:
        """Raise the oneM2M error to answer, else return the SA to use from now on (re-read when needed)."""
        if create is not None and sa.associated is None and sa.credential_id is not None:
            authorize(sa, origin, policy, create=create, rules=self.rules, cse_id=self.cse_id, sp_id=self.sp_id)
            if self.bindings.count(sa.credential_id) >= MAX_AE_IDS_PER_CREDENTIAL and (
                    create.registrar_assigns or origin not in self.bindings.ae_ids(sa.credential_id)):
                raise AppRuleValidationFailed(
                    f"the credential has {MAX_AE_IDS_PER_CREDENTIAL} registered AE-IDs, no more can be bound")
            return sa
        if sa.associated is None and sa.credential_id is not None:
            # what a credential-only SA may act as is read at each request: another connection or worker may have
            # registered an AE-ID for it, or the CSE may have given one of its AE-IDs to another registration
            fresh = self.resolve(sa.credential_id) or frozenset()
            if fresh != sa.allowed_originators:
                sa = dataclasses.replace(sa, allowed_originators=fresh)
        authorize(sa, origin, policy, create=create, rules=self.rules, cse_id=self.cse_id, sp_id=self.sp_id)
        return sa

    def registered(self, sa: SecurityAssociation, create: AECreate, created: bool,
                   body: bytes) -> SecurityAssociation:
        """After the CSE answered a CREATE <AE> (``created``: 2001): bind the AE-ID it assigned (the ``aei`` of the
        answer, D104; D106 makes the request ask for it) to the SA's Credential-ID and return the SA with its forms;
        the SA unchanged when nothing is to be bound."""
        if not created or sa.associated is not None or sa.credential_id is None:
            return sa
        aei = aei_from_body(body)
        if aei is not None and cse_id_of(aei) is not None:  # a CSE-ID is never an AE's identity
            log.warning("registration through %s: the CSE answered the CSE-ID %r as AE-ID, nothing is bound",
                        sa.credential, aei[:80])
            return sa
        if aei is None:
            log.warning("registration through %s: the CSE's answer holds no AE-ID (aei), nothing is bound",
                        sa.credential)
            if create.from_ and not create.registrar_assigns and cse_id_of(create.from_) is None:
                try:  # the CSE registered this From anew: whoever held it before holds it no more (D104)
                    self.bindings.unbind_others(sa.credential_id,
                                                registered_forms(create.from_, self.cse_id, self.sp_id))
                except sqlite3.Error as exc:
                    log.error("unbinding %r in %s failed: %s", create.from_[:80], self.bindings.path, exc)
            return sa
        forms = registered_forms(aei, self.cse_id, self.sp_id)
        try:
            bound = self.bindings.bind(sa.credential_id, aei, forms)
        except sqlite3.Error as exc:
            log.error("binding AE-ID %r to %s failed (%s): its requests will be refused until it registers again",
                      aei[:80], sa.credential, exc)
            return sa
        if not bound:
            log.warning("AE-ID %r not bound to %s: %d AE-IDs are bound to it already", aei[:80], sa.credential,
                        MAX_AE_IDS_PER_CREDENTIAL)
            return sa
        log.info("AE-ID %r registered through %s, bound to Credential-ID %r", aei[:80], sa.credential,
                 sa.credential_id)
        return dataclasses.replace(sa, allowed_originators=sa.allowed_originators | forms)

    def close(self) -> None:
        self.bindings.close()
