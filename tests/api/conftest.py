"""Fixtures for the gateway's database and auth tests: each runs on SQLite and on a real
PostgreSQL started on loopback for the session (skipped where the server binaries are missing)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """host:port of a throwaway PostgreSQL cluster, stopped by its own process group."""
    import shutil
    import tempfile

    from nightshift.services import local_postgres

    # Not under pytest's tmp folder: that is private to root, and as root the server runs as nobody.
    folder = Path(tempfile.mkdtemp(prefix="ns-pg-"))
    try:
        server = local_postgres(folder)
        address = server.__enter__()
    except FileNotFoundError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(str(exc))
    try:
        yield address
    finally:
        server.__exit__(None, None, None)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database: a SQLite file in a folder that does not exist yet (Database must create
    it), or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'state' / 'gateway.db'}"
    import asyncpg

    address = request.getfixturevalue("postgres")
    host, port = address.split(":")
    name = f"gw_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        conn = await asyncpg.connect(host=host, port=int(port), user="nightshift", database="postgres")
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return f"postgresql+asyncpg://nightshift@{address}/{name}"
