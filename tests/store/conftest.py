"""The two key-store backends as a parametrized fixture (the PostgreSQL server: tests/postgres.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from m2msec.keys.secret import SecretKey


@pytest.fixture
def master_key() -> SecretKey:
    return SecretKey.generate(32)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty store on each backend."""
    if request.param == "sqlite":
        return f"sqlite://{tmp_path / 'store.db'}"
    return str(request.getfixturevalue("postgres_url"))
