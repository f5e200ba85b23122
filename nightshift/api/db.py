"""The gateway database: orgs, API keys, files, batches, rate counters and the audit log.

SQLAlchemy 2.0 async models plus the few queries the HTTP layer needs. The schema is created by
the Alembic migrations next to this module (``Database.migrate``), never by ``create_all``, so a
deployed database and a fresh one always have the same shape. Repository helpers flush but do
not commit: the session owner (``Database.session``) commits once per unit of work.
"""

from __future__ import annotations

import asyncio
import contextvars
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from sqlalchemy import (
    JSON,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    TypeDecorator,
    and_,
    event,
    or_,
    select,
    update,
)
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from nightshift.core.errors import NightshiftError
from nightshift.core.lifecycle import STATUS_TIMESTAMPS, TERMINAL, UNFINISHED, BatchStatus
from nightshift.core.sla import Tier

if TYPE_CHECKING:
    from alembic.config import Config

#: Folder of the Alembic environment (env.py, versions/); ships inside the package.
MIGRATIONS_DIR = Path(__file__).with_name("migrations")

BATCH_STATUSES: frozenset[str] = frozenset(BatchStatus)
#: Statuses a restarted gateway must keep following: work may still be running for them.
UNFINISHED_STATUSES: tuple[str, ...] = tuple(UNFINISHED)

#: ``webhook_status`` while one gateway delivers it (claimed by compare-and-set).
WEBHOOK_SENDING = "sending"

#: True inside a write session of this task: a nested session must not wait for the lock it holds.
_HOLDS_WRITE_LOCK: contextvars.ContextVar[bool] = contextvars.ContextVar("nightshift_holds_write_lock", default=False)

#: Seconds a SQLite connection waits for another writer's lock before failing.
SQLITE_BUSY_TIMEOUT_SECONDS = 30


class NotFound(LookupError, NightshiftError):
    """The object does not exist, is deleted, or belongs to another organization."""


class Conflict(ValueError, NightshiftError):
    """The object cannot be created because one with the same unique name exists."""


def utcnow() -> datetime:
    """The current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """A new object id: ``prefix`` + 24 random hex characters (OpenAI's shape, e.g. ``batch_...``)."""
    return prefix + secrets.token_hex(12)


def new_file_id() -> str:
    """A new file id (``file-`` + 24 hex), for callers that must name the stored content first."""
    return new_id("file-")


def new_batch_id() -> str:
    """A new batch id (``batch_`` + 24 hex)."""
    return new_id("batch_")


def check_tier(value: str) -> str:
    """The tier's name, refusing names that have no SLA or rate limit."""
    try:
        return Tier(value).value
    except ValueError:
        raise ValueError(f"unknown tier {value!r}; expected one of {', '.join(t.value for t in Tier)}") from None


class UtcDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    Postgres keeps the zone (timestamptz); SQLite stores naive text, so values are normalised to
    UTC on the way in and get their zone back on the way out. Naive input is refused rather than
    guessed: a local time silently read as UTC shifts deadlines by hours.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Normalise to UTC (and drop the zone for SQLite, which cannot store it)."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value.isoformat()}: pass a timezone-aware (UTC) datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Attach UTC to what SQLite returns naive."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# Named constraints: Alembic needs names to alter or drop them later (SQLite batch mode especially).
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_N_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of the gateway tables."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Org(Base):
    """An organization: owns keys, files and batches; its tier is the default of its keys."""

    __tablename__ = "orgs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("org_"))
    name: Mapped[str] = mapped_column(String(255), unique=True)
    tier: Mapped[str] = mapped_column(String(32), default="free")
    # Random per org so webhook receivers can check an HMAC without sharing one global secret.
    webhook_secret: Mapped[str] = mapped_column(String(128), default=lambda: _new_webhook_secret())
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


def _new_webhook_secret() -> str:
    from nightshift.api.webhooks import new_webhook_secret  # Standard Webhooks' whsec_ form

    return new_webhook_secret()


class ApiKey(Base):
    """An API key; only the sha256 of its secret is stored (see ``nightshift.api.auth.hash_key``)."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=lambda: new_id("key_"))
    org_id: Mapped[str] = mapped_column(String(64), ForeignKey("orgs.id"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    tier: Mapped[str] = mapped_column(String(32))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    default_webhook_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)


class RevokedToken(Base):
    """A JWT id refused from now on; ``expires_at`` (the token's exp) lets old rows be pruned."""

    __tablename__ = "revoked_tokens"

    jti: Mapped[str] = mapped_column(String(255), primary_key=True)
    revoked_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class File(Base):
    """An uploaded file (OpenAI Files API object); the content lives at ``uri`` in the artifact store."""

    __tablename__ = "files"
    __table_args__ = (Index("ix_files_org_id_created_at", "org_id", "created_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_file_id)
    org_id: Mapped[str] = mapped_column(String(64), ForeignKey("orgs.id"))
    filename: Mapped[str] = mapped_column(String(1024))
    purpose: Mapped[str] = mapped_column(String(64))
    bytes: Mapped[int] = mapped_column(Integer)
    lines: Mapped[int] = mapped_column(Integer, default=0)
    uri: Mapped[str] = mapped_column(String(4096))
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)  # None until the content is hashed
    status: Mapped[str] = mapped_column(String(32), default="processed")
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    # OpenAI's expires_at: set from the upload's expires_after, or the batch's output_expires_after.
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True, index=True)


class Batch(Base):
    """A batch (OpenAI Batches API object) plus where and how nightshift runs it.

    ``metadata`` is a reserved attribute on declarative classes, so the column ``metadata`` is
    the attribute ``metadata_``.
    """

    __tablename__ = "batches"
    __table_args__ = (
        Index("ix_batches_org_id_created_at", "org_id", "created_at"),
        Index("ix_batches_status", "status"),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True, default=new_batch_id)
    org_id: Mapped[str] = mapped_column(String(64), ForeignKey("orgs.id"))
    input_file_id: Mapped[str] = mapped_column(String(64))
    endpoint: Mapped[str] = mapped_column(String(255))
    completion_window: Mapped[str] = mapped_column(String(32))
    metadata_: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON, nullable=True)
    status: Mapped[str] = mapped_column(String(32), default="validating")
    tier: Mapped[str] = mapped_column(String(32))
    pool: Mapped[str | None] = mapped_column(String(255), nullable=True)
    deployment: Mapped[str | None] = mapped_column(String(255), nullable=True)
    flow_run_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    store_batch_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    version: Mapped[str | None] = mapped_column(String(255), nullable=True)
    output_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_file_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    errors: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)  # OpenAI batch errors.data
    request_counts: Mapped[dict[str, int] | None] = mapped_column(JSON, nullable=True)
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    deadline: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    placement: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # core.placement.Placement
    estimate: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # core.estimate.BatchEstimate, made at placement
    cost: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)  # core.cost.BatchCost, from the published manifest
    webhook_url: Mapped[str | None] = mapped_column(String(2048), nullable=True)
    webhook_status: Mapped[str | None] = mapped_column(String(64), nullable=True)
    webhook_attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Seconds after their creation the batch's output and error files expire (None: no expiry).
    output_expires_after: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    in_progress_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    finalizing_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    completed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    failed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    expired_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    cancelling_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    cancelled_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class RateUsage(Base):
    """Requests one key made in one fixed hourly window (``window_start`` is on the hour, UTC)."""

    __tablename__ = "rate_usage"

    key_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(UtcDateTime, primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


class AuditLog(Base):
    """One security-relevant action: who (org, key) did what (action) to which object."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_org_id_at", "org_id", "at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    # No foreign key: the trail must outlive (and not block deleting) what it talks about.
    org_id: Mapped[str] = mapped_column(String(64))
    key_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    action: Mapped[str] = mapped_column(String(64))
    object_id: Mapped[str | None] = mapped_column(String(255), nullable=True)
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class _GatewaySession(Session):
    """The gateway's write session: a batch's output expiry reaches the files attached to it."""


@event.listens_for(_GatewaySession, "before_flush")
def _output_files_expire_with_their_batch(session: Session, _context: Any, _instances: Any) -> None:
    # Whoever attaches the output and error files (the lifecycle, on publish), they expire as the
    # batch's output_expires_after says: the rule lives here, once, next to both columns.
    for batch in (*session.new, *session.dirty):
        if not isinstance(batch, Batch) or batch.output_expires_after is None:
            continue
        for file_id in (batch.output_file_id, batch.error_file_id):
            found = session.get(File, file_id) if file_id else None
            if found is not None and found.purpose == "batch_output" and found.expires_at is None:
                found.expires_at = found.created_at + timedelta(seconds=batch.output_expires_after)


def async_url(url: str) -> str:
    """The URL with an async driver: plain ``sqlite://`` and ``postgresql://`` URLs get aiosqlite/asyncpg."""
    parsed = make_url(url)
    drivers = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg", "postgres": "postgresql+asyncpg"}
    if parsed.drivername in drivers:
        parsed = parsed.set(drivername=drivers[parsed.drivername])
    return parsed.render_as_string(hide_password=False)


def alembic_config(url: str, connection: Connection | None = None) -> Config:
    """An Alembic ``Config`` for this package's migrations against ``url`` (no alembic.ini needed).

    With ``connection``, env.py migrates on it instead of opening its own engine.
    """
    from alembic.config import Config  # only migrations and tooling need Alembic loaded

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # ConfigParser interpolates '%': URL-encoded passwords would break without doubling it.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def _sqlite_file(url: URL) -> Path | None:
    """The database file of a SQLite URL, or None for in-memory and URI-style databases."""
    database = url.database or ""
    if not database or database == ":memory:" or database.startswith("file:") or url.query.get("uri") == "true":
        return None
    return Path(database)


def _upgrade_head(connection: Connection, url: str) -> None:
    """Run every migration not yet applied, on ``connection``."""
    from alembic import command

    command.upgrade(alembic_config(url, connection), "head")


class Database:
    """The gateway's engine and session factory for one async SQLAlchemy URL (SQLite or Postgres)."""

    def __init__(self, url: str) -> None:
        self.url = async_url(url)
        parsed = make_url(self.url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        connect_args: dict[str, Any] = {}
        if self.is_sqlite:
            path = _sqlite_file(parsed)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            connect_args["timeout"] = SQLITE_BUSY_TIMEOUT_SECONDS
        # pre_ping: a Postgres restart otherwise surfaces as one failed request per pooled connection.
        self.engine: AsyncEngine = create_async_engine(self.url, connect_args=connect_args, pool_pre_ping=not self.is_sqlite)
        # Reads (a poll, a lookup) need no write lock: on SQLite they get their own engine whose
        # transactions begin DEFERRED, so under WAL they never queue behind a writer.
        self.read_engine = self.engine
        if self.is_sqlite:
            _configure_sqlite(self.engine)
            self.read_engine = create_async_engine(self.url, connect_args=connect_args)
            _configure_sqlite(self.read_engine, begin="BEGIN")
        # expire_on_commit=False: handlers render objects after the commit, and async cannot lazy-load.
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False, sync_session_class=_GatewaySession)
        # SQLite has one writer at a time, and a writer that finds the lock taken sleeps in SQLite's
        # busy handler (steps of up to 100 ms): under fifty concurrent requests that is the whole
        # latency tail. Writers of this process queue on an asyncio lock instead and take the file
        # lock at once; other processes still wait on the busy timeout.
        self._write_lock: asyncio.Lock | None = asyncio.Lock() if self.is_sqlite else None
        self._readers = async_sessionmaker(self.read_engine, expire_on_commit=False)

    async def migrate(self) -> None:
        """Bring the schema to the newest migration (Alembic ``upgrade head``); a no-op when current."""
        async with self.engine.begin() as connection:
            await connection.run_sync(_upgrade_head, self.url)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A session for one unit of work: committed when the block ends, rolled back if it raises."""
        lock = self._write_lock if self._write_lock is not None and not _HOLDS_WRITE_LOCK.get() else None
        if lock is not None:
            await lock.acquire()
        token = _HOLDS_WRITE_LOCK.set(True) if lock is not None else None
        try:
            async with self._sessions() as session:
                try:
                    yield session
                    await session.commit()
                except BaseException:
                    await session.rollback()
                    raise
        finally:
            if token is not None:
                _HOLDS_WRITE_LOCK.reset(token)
            if lock is not None:
                lock.release()

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncSession]:
        """A session for reads only (nothing it changes is kept): never waits for a writer."""
        # Closing (not rolling back) ends the transaction and keeps the loaded rows usable.
        async with self._readers() as session:
            yield session

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()
        if self.read_engine is not self.engine:
            await self.read_engine.dispose()


def _configure_sqlite(engine: AsyncEngine, begin: str = "BEGIN IMMEDIATE") -> None:
    """Make one SQLite file safe for many concurrent requests.

    WAL lets readers run while one writer writes. Every transaction starts with BEGIN IMMEDIATE:
    nearly every request writes (the rate counter), and a transaction that reads first and writes
    later cannot wait for the lock (SQLite answers SQLITE_BUSY at once, ignoring the busy timeout),
    whereas BEGIN IMMEDIATE queues on the timeout. So the driver's own BEGIN handling is turned
    off and SQLAlchemy emits BEGIN itself, as SQLAlchemy's SQLite documentation describes. The
    read-only engine passes ``begin="BEGIN"`` (deferred): a reader under WAL takes no lock.
    """

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # With WAL, NORMAL skips the fsync per commit: a power cut may lose the last commits, never corrupts.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql(begin)


# --- repository helpers -------------------------------------------------------------------------


async def create_org(session: AsyncSession, name: str, tier: str = "free") -> Org:
    """Create an organization; raises ``Conflict`` if the name is taken."""
    if await get_org_by_name(session, name) is not None:
        raise Conflict(f"organization {name!r} already exists")
    org = Org(id=new_id("org_"), name=name, tier=check_tier(tier), webhook_secret=_new_webhook_secret(), created_at=utcnow())
    session.add(org)
    await session.flush()
    return org


async def get_org_by_name(session: AsyncSession, name: str) -> Org | None:
    """The organization called ``name``, or None."""
    return (await session.execute(select(Org).where(Org.name == name))).scalar_one_or_none()


async def get_org(session: AsyncSession, org_id: str) -> Org | None:
    """The organization with id ``org_id``, or None."""
    return await session.get(Org, org_id)


async def add_file(
    session: AsyncSession,
    *,
    org_id: str,
    filename: str,
    purpose: str,
    bytes: int,  # OpenAI's field name, though it shadows the builtin here
    lines: int,
    uri: str,
    sha256: str | None = None,
    id: str | None = None,
    status: str = "processed",
    expires_after_seconds: int | None = None,
) -> File:
    """Record an uploaded file whose content is already stored at ``uri`` (``id``: a ``new_file_id()`` chosen first);
    with ``expires_after_seconds`` it expires that long after its creation."""
    now = utcnow()
    file = File(
        id=id or new_file_id(),
        org_id=org_id,
        filename=filename,
        purpose=purpose,
        bytes=bytes,
        lines=lines,
        uri=uri,
        sha256=sha256,
        status=status,
        created_at=now,
        expires_at=None if expires_after_seconds is None else now + timedelta(seconds=expires_after_seconds),
    )
    session.add(file)
    await session.flush()
    return file


def _live_file() -> Any:
    """Not deleted, and not past its expiry (gone at once, before the sweep deletes it)."""
    return and_(File.deleted_at.is_(None), or_(File.expires_at.is_(None), File.expires_at > utcnow()))


async def get_file(session: AsyncSession, org_id: str, file_id: str, include_deleted: bool = False) -> File | None:
    """The org's file ``file_id``; None if missing, another org's (no existence leak), deleted or expired.

    ``include_deleted`` finds deleted files too: a running batch still reads its input file.
    """
    query = select(File).where(File.id == file_id, File.org_id == org_id)
    if not include_deleted:
        query = query.where(_live_file())
    return (await session.execute(query)).scalar_one_or_none()


async def list_files(
    session: AsyncSession,
    org_id: str,
    purpose: str | None = None,
    after: str | None = None,
    limit: int = 10_000,
    order: Literal["asc", "desc"] = "desc",
) -> tuple[list[File], bool]:
    """The org's live files by ``created_at`` (``order``), after the ``after`` cursor, at most
    ``limit``, and whether more follow.

    Raises:
        NotFound: ``after`` is not one of the org's files.
    """
    query = select(File).where(File.org_id == org_id, _live_file())
    if purpose is not None:
        query = query.where(File.purpose == purpose)
    if after is not None:
        cursor = await get_file(session, org_id, after)
        if cursor is None:
            raise NotFound(f"no file {after!r} to list after")
        query = query.where(_beyond(File, cursor.created_at, cursor.id, order))
    return await _page(session, query, File, limit, order)


Row = TypeVar("Row", File, Batch)


async def _row(session: AsyncSession, model: type[Row], row: Row | str) -> Row:
    """``row`` itself, or the row whose id it is; ``NotFound`` names the kind and the id."""
    if not isinstance(row, str):
        return row
    found = await session.get(model, row)
    if found is None:
        raise NotFound(f"no {model.__name__.lower()} {row!r}")
    return found


async def mark_file_deleted(session: AsyncSession, file: File | str, now: datetime | None = None) -> File:
    """Soft-delete a file (row or id): it disappears from get/list, its row stays for batches that name it.

    Raises:
        NotFound: no file has this id.
    """
    file = await _row(session, File, file)
    if file.deleted_at is None:
        file.deleted_at = now or utcnow()
    await session.flush()
    return file


#: ``File.status`` once a deleted file's bytes are gone from the store.
FILE_PURGED = "deleted"


async def expire_files(session: AsyncSession, now: datetime | None = None) -> list[File]:
    """Soft-delete every live file whose ``expires_at`` has passed (as OpenAI does: the id stops
    working); the bytes go with the next purge, once no unfinished batch reads them."""
    now = now or utcnow()
    query = select(File).where(File.deleted_at.is_(None), File.expires_at.is_not(None), File.expires_at <= now)
    rows = list((await session.execute(query)).scalars())
    for row in rows:
        row.deleted_at = now
    await session.flush()
    return rows


async def files_to_purge(session: AsyncSession, file_id: str | None = None) -> list[File]:
    """Deleted files whose bytes are still stored and that no unfinished batch reads any more
    (a running batch keeps its input until it ends; then the next sweep removes it)."""
    busy = select(Batch.input_file_id).where(Batch.status.in_(UNFINISHED_STATUSES))
    query = select(File).where(File.deleted_at.is_not(None), File.status != FILE_PURGED, File.id.not_in(busy))
    if file_id is not None:
        query = query.where(File.id == file_id)
    return list((await session.execute(query)).scalars())


async def add_batch(
    session: AsyncSession,
    *,
    org_id: str,
    input_file_id: str,
    endpoint: str,
    completion_window: str,
    tier: str,
    id: str | None = None,
    metadata: dict[str, Any] | None = None,
    **fields: Any,
) -> Batch:
    """Record a new batch (status ``validating`` unless given); ``fields`` sets any other column."""
    batch = Batch(
        id=id or new_batch_id(),
        org_id=org_id,
        input_file_id=input_file_id,
        endpoint=endpoint,
        completion_window=completion_window,
        tier=check_tier(tier),
        metadata_=metadata,
        status="validating",
        webhook_attempts=0,
        created_at=utcnow(),
    )
    _assign(batch, fields)
    session.add(batch)
    await session.flush()
    return batch


async def get_batch(session: AsyncSession, org_id: str, batch_id: str) -> Batch | None:
    """The org's batch ``batch_id``; None if missing or another org's."""
    query = select(Batch).where(Batch.id == batch_id, Batch.org_id == org_id)
    return (await session.execute(query)).scalar_one_or_none()


async def list_batches(session: AsyncSession, org_id: str, after: str | None = None, limit: int = 20) -> tuple[list[Batch], bool]:
    """The org's batches newest first, those created before the ``after`` batch, and whether more exist.

    Raises:
        NotFound: ``after`` is not one of the org's batches.
    """
    query = select(Batch).where(Batch.org_id == org_id)
    if after is not None:
        cursor = await get_batch(session, org_id, after)
        if cursor is None:
            raise NotFound(f"no batch {after!r} to list after")
        query = query.where(_beyond(Batch, cursor.created_at, cursor.id, "desc"))
    return await _page(session, query, Batch, limit, "desc")


async def update_batch(session: AsyncSession, batch: Batch | str, **fields: Any) -> Batch:
    """Set columns of a batch (row, or id of any org's batch); ``metadata=`` sets the metadata column.

    A new ``status`` also stamps its OpenAI timestamp (``completed`` → ``completed_at``...) with
    the current time, unless that field is given or already set.

    Raises:
        NotFound: no batch has this id.
    """
    batch = await _row(session, Batch, batch)
    status = fields.get("status")
    if status is not None and status != batch.status:
        stamp = STATUS_TIMESTAMPS.get(status)
        if stamp and stamp not in fields and getattr(batch, stamp) is None:
            fields[stamp] = utcnow()
    _assign(batch, fields)
    await session.flush()
    return batch


async def unfinished_batches(session: AsyncSession) -> list[Batch]:
    """Every org's batches that may still have work running (oldest first), to re-track after a restart."""
    query = select(Batch).where(Batch.status.in_(UNFINISHED_STATUSES)).order_by(Batch.created_at, Batch.id)
    return list((await session.execute(query)).scalars())


async def compare_and_set(session: AsyncSession, batch_id: str, expected: str, status: str, **fields: Any) -> Batch | None:
    """Move a batch from ``expected`` to ``status`` (setting ``fields`` and the status's OpenAI
    timestamp) only if it is still in ``expected``: one ``UPDATE ... WHERE status = :expected``.
    Returns the updated row, or None when another caller moved it first."""
    stamp = STATUS_TIMESTAMPS.get(status)  # type: ignore[call-overload]
    values = {("metadata_" if k == "metadata" else k): v for k, v in fields.items()}
    if stamp and stamp not in values:
        values[stamp] = utcnow()
    _check_columns(values)
    stmt = update(Batch).where(Batch.id == batch_id, Batch.status == expected).values(status=status, **values)
    result = await session.execute(stmt.execution_options(synchronize_session=False))
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    row = await session.get(Batch, batch_id, populate_existing=True)
    return row


async def update_unfinished(session: AsyncSession, batch_id: str, **fields: Any) -> bool:
    """Set progress fields (counts, version, run id, pool) of a batch that is not finished; a
    finished batch keeps its final values. Returns whether the row changed."""
    values = {("metadata_" if k == "metadata" else k): v for k, v in fields.items()}
    if "status" in values:
        raise TypeError("statuses change through compare_and_set only")
    _check_columns(values)
    stmt = update(Batch).where(Batch.id == batch_id, Batch.status.in_(UNFINISHED_STATUSES)).values(**values)
    result = await session.execute(stmt.execution_options(synchronize_session=False))
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def claim_webhook(session: AsyncSession, batch_id: str) -> bool:
    """Take the right to send a finished batch's webhook: True for exactly one caller."""
    stmt = (
        update(Batch)
        .where(Batch.id == batch_id, Batch.webhook_url.is_not(None), Batch.webhook_status.is_(None))
        .where(Batch.status.in_(tuple(TERMINAL)))
        .values(webhook_status=WEBHOOK_SENDING)
    )
    result = await session.execute(stmt.execution_options(synchronize_session=False))
    return result.rowcount == 1  # type: ignore[attr-defined]


async def release_webhooks(session: AsyncSession) -> int:
    """At start-up: deliveries a stopped gateway left half-way are owed again (receivers drop
    the repeat by its stable ``webhook-id``)."""
    stmt = update(Batch).where(Batch.webhook_status == WEBHOOK_SENDING).values(webhook_status=None)
    result = await session.execute(stmt.execution_options(synchronize_session=False))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def undelivered_webhooks(session: AsyncSession) -> list[Batch]:
    """Finished batches whose webhook was never attempted (the gateway stopped between the status
    change and the delivery): the tracker sends these after a restart."""
    query = (
        select(Batch)
        .where(Batch.status.in_(tuple(TERMINAL)))
        .where(Batch.webhook_url.is_not(None), Batch.webhook_status.is_(None))
        .order_by(Batch.created_at, Batch.id)
    )
    return list((await session.execute(query)).scalars())


async def audit(
    session: AsyncSession,
    org_id: str,
    key_id: str | None,
    action: str,
    object_id: str | None,
    detail: dict[str, Any] | None = None,
) -> AuditLog:
    """Append one entry to the audit log (e.g. action ``batch.create`` on ``batch_...``)."""
    entry = AuditLog(at=utcnow(), org_id=org_id, key_id=key_id, action=action, object_id=object_id, detail=detail)
    session.add(entry)
    await session.flush()
    return entry


async def ping(session: AsyncSession) -> None:
    """Run a trivial query: raises if the database cannot be reached (health checks)."""
    await session.execute(select(1))


_BATCH_COLUMNS = frozenset(c.key for c in Batch.__mapper__.column_attrs)


def _check_columns(values: dict[str, Any]) -> None:
    """Refuse unknown column names and statuses/tiers outside the protocol."""
    for key, value in values.items():
        if key not in _BATCH_COLUMNS or key == "id":
            raise TypeError(f"Batch has no settable column {key!r}")
        if key == "status" and value not in BATCH_STATUSES:
            raise ValueError(f"unknown batch status {value!r}")
        if key == "tier":
            values[key] = check_tier(value)


def _assign(batch: Batch, fields: dict[str, Any]) -> None:
    """Set known columns on ``batch`` (checked by ``_check_columns``)."""
    values = {("metadata_" if k == "metadata" else k): v for k, v in fields.items()}
    _check_columns(values)
    for key, value in values.items():
        setattr(batch, key, value)


def _beyond(model: type[File] | type[Batch], created_at: datetime, object_id: str, order: str) -> Any:
    """Rows strictly past the cursor row in (created_at, id) order; id breaks ties of equal times."""
    if order == "desc":
        return or_(model.created_at < created_at, and_(model.created_at == created_at, model.id < object_id))
    return or_(model.created_at > created_at, and_(model.created_at == created_at, model.id > object_id))


async def _page(session: AsyncSession, query: Any, model: Any, limit: int, order: str) -> tuple[list[Any], bool]:
    """One page of ``query`` ordered by (created_at, id); fetches one extra row to learn ``has_more``."""
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    if order == "desc":
        query = query.order_by(model.created_at.desc(), model.id.desc())
    else:
        query = query.order_by(model.created_at.asc(), model.id.asc())
    rows = list((await session.execute(query.limit(limit + 1))).scalars())
    return rows[:limit], len(rows) > limit
