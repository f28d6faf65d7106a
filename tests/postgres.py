"""A real PostgreSQL server for the tests (the key store, the MAF), imported by tests/conftest.py.

The server is started once per session with the Debian ``postgresql`` binaries (initdb, pg_ctl under
/usr/lib/postgresql/*/bin) in a temporary directory, listening on a free loopback port. PostgreSQL refuses
to run as root, so as root it runs as the ``postgres`` system user (else ``nobody``) through ``runuser``.
Each test gets a fresh database. Tests are skipped, with the reason, only when the binaries are missing.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

_db_numbers = itertools.count()


@dataclass(frozen=True)
class PostgresServer:
    url: str  # of the maintenance database "postgres"
    datadir: Path

    def database_url(self, name: str) -> str:
        return self.url.rsplit("/", 1)[0] + "/" + name


def _pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    pg_ctl = shutil.which("pg_ctl")
    return Path(pg_ctl).parent if pg_ctl else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_user() -> tuple[list[str], str | None]:
    """The command prefix that drops root, and the user name to chown to (None: not root)."""
    if os.geteuid() != 0:
        return [], None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        runuser = shutil.which("runuser")
        if runuser is None:
            pytest.skip("running as root and runuser is missing: cannot start PostgreSQL unprivileged")
        return [runuser, "-u", name, "--"], name
    pytest.skip("running as root with no unprivileged user (postgres, nobody) to start PostgreSQL")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    bindir = _pg_bindir()
    if bindir is None or not (bindir / "initdb").exists():
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: install the Debian package postgresql")
    with start_postgres(bindir, _as_user()) as server:
        yield server


@contextlib.contextmanager
def start_postgres(bindir: Path | None = None, as_user: tuple[list[str], str | None] | None = None
                   ) -> Iterator[PostgresServer]:
    """Start a throw-away PostgreSQL server (also used by bench/maf_bench.py); stop and delete it on exit."""
    bindir = bindir or _pg_bindir()
    if bindir is None:
        raise RuntimeError("PostgreSQL binaries (initdb, pg_ctl) not found: install the Debian package postgresql")
    prefix, user = as_user or _as_user()
    top = Path(tempfile.mkdtemp(prefix="m2msec-pg-"))
    datadir, log = top / "data", top / "server.log"
    if user is not None:
        shutil.chown(top, user)
    port = _free_port()
    try:
        subprocess.run([*prefix, str(bindir / "initdb"), "-D", str(datadir), "-U", "m2msec", "--auth=trust",
                        "-E", "UTF8", "--no-sync", "--no-instructions"],
                       check=True, capture_output=True, timeout=120)
        options = f"-c listen_addresses=127.0.0.1 -p {port} -k {top} -c fsync=on -c max_connections=100"
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(datadir), "-l", str(log), "-o", options,
                        "-w", "-t", "60", "start"], check=True, capture_output=True, timeout=90)
        yield PostgresServer(f"postgresql://m2msec@127.0.0.1:{port}/postgres", datadir)
    except subprocess.CalledProcessError as exc:
        detail = log.read_text(errors="replace") if log.exists() else ""
        raise RuntimeError(f"PostgreSQL did not start: {exc.stderr!r} {detail}") from None
    finally:
        subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(datadir), "-m", "fast", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(top, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """A fresh, empty database on the session's server."""
    name = f"t{os.getpid()}_{next(_db_numbers)}"
    with psycopg.connect(postgres_server.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres_server.database_url(name)
