"""Fresh databases on the session's PostgreSQL (the ``postgres`` fixture), one per test."""

from __future__ import annotations

import asyncio
import uuid


def new_postgres_database(address: str, prefix: str) -> str:
    """Create an empty database on the PostgreSQL at ``address`` (host:port); return its asyncpg URL."""
    import asyncpg

    host, port = address.split(":")
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"

    async def create() -> None:
        conn = await asyncpg.connect(host=host, port=int(port), user="nightshift", database="postgres")
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return f"postgresql+asyncpg://nightshift@{address}/{name}"
