"""Alembic environment of the gateway database.

``Database.migrate()`` hands its own connection in ``config.attributes["connection"]`` (see
``nightshift.api.db.alembic_config``); without one, an async engine is opened on the configured
URL, so ``alembic`` commands also work against ``sqlite+aiosqlite://`` and ``postgresql+asyncpg://``.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import pool
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from nightshift.api.db import Base

config = context.config
target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    """Run the pending migrations on a sync connection."""
    # SQLite cannot ALTER most things in place; batch mode rebuilds tables for later migrations.
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=connection.dialect.name == "sqlite")
    with context.begin_transaction():
        context.run_migrations()


async def _run_on_own_engine(url: str) -> None:
    """Open a throwaway async engine on ``url`` and migrate through it."""
    engine = create_async_engine(url, poolclass=pool.NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_configure)
            await connection.commit()
    finally:
        await engine.dispose()


def _run_offline() -> None:
    """Emit the migration SQL instead of running it (``alembic upgrade --sql``)."""
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    _run_offline()
elif (shared := config.attributes.get("connection")) is not None:
    _configure(shared)
else:
    asyncio.run(_run_on_own_engine(config.get_main_option("sqlalchemy.url") or ""))
