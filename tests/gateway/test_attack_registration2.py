"""attack17b: second hostile review of registration upon SAE (issue 17): the fixes since attack17.

Each test shows one finding and fails on main (commit e538f11): it is marked ``xfail(strict=True)`` until fixed.

1. The bindings file's owner/mode check (``registrar._check_owner``, attack17 finding 4) covers the main SQLite
   file only. The store runs in WAL mode, and SQLite opens the side files ``<file>-wal`` / ``<file>-shm`` that
   already exist as they are. Whoever can create files in the directory (a shared ``/tmp``, a group-writable
   directory) plants them before the gateway starts and keeps a read-write descriptor: every binding (an
   identity) is written through a file the attacker can read and rewrite, whatever the main file's mode.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from m2msec.errors import ConfigurationError
from m2msec.gateway.registrar import BindingStore


@pytest.mark.xfail(strict=True, reason="attack17b finding 1")
def test_planted_wal_file_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # like /tmp: anyone may create files, the sticky bit protects existing ones
    path = shared / "registrations.sqlite"
    # the attacker (another local user) plants the WAL and shared-memory files, world-writable, and keeps the WAL
    # open read-write: changing the file's mode or owner later does not take that descriptor away
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    for planted in (wal, shm):
        planted.touch()
        planted.chmod(0o666)
    fd = os.open(wal, os.O_RDWR)
    try:
        with pytest.raises(ConfigurationError):
            store = BindingStore(path)  # the main file is created 0600: _check_owner is satisfied
            try:
                assert store.bind("light-1@in.provider.com", "CvictimLight")
                assert os.stat(wal).st_ino == os.fstat(fd).st_ino  # SQLite writes through the planted file
                leaked = os.pread(fd, 1 << 20, 0)
                assert b"CvictimLight" in leaked and b"light-1@in.provider.com" in leaked  # read, and writable
            finally:
                store.close()
    finally:
        os.close(fd)
