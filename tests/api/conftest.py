"""Fixtures for the gateway's database and auth tests: each runs on SQLite and on a real
PostgreSQL started on loopback for the session (``postgres`` in tests/conftest.py; skipped where
the server binaries are missing)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database: a SQLite file in a folder that does not exist yet (Database must create
    it), or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'state' / 'gateway.db'}"
    from tests.pgdatabases import new_postgres_database

    return new_postgres_database(request.getfixturevalue("postgres"), "gw")
