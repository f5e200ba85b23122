"""Dependencies of the gateway's routes, as types: ``Gw`` (the app's collaborators), ``Caller``
(the authenticated, rate-counted principal) and ``json_body(Model)`` (a body parsed only after
the caller is known, so an anonymous client never makes the gateway read its body)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Header, Request
from pydantic import BaseModel, ValidationError
from sqlalchemy.ext.asyncio import AsyncSession

from nightshift.api.auth import Principal, authenticate, check_rate_limit
from nightshift.api.db import Batch, Database, File, get_batch, get_file
from nightshift.api.errors import ApiError
from nightshift.api.lifecycle import BatchLifecycle
from nightshift.core.catalogue import Catalogue
from nightshift.core.progress import Progress
from nightshift.settings import Settings
from nightshift.storage import ArtifactStore

M = TypeVar("M", bound=BaseModel)
Row = TypeVar("Row", File, Batch)
#: ``db.get_file`` / ``db.get_batch``: (session, org id, object id) → the org's row, or None.
Lookup = Callable[[AsyncSession, str, str], Awaitable[Row | None]]

#: Streams an allow-listed https URL's body (the egress policy applied): url → chunks.
Downloader = Callable[[str], Any]


class KeyCache:
    """API keys recently authenticated, for ``ttl`` seconds: a poll loop of one client costs one key
    lookup per interval, not one per request. A revoked key stops working within ``ttl`` seconds
    (JWTs are not cached: their expiry and revocation are checked on every call)."""

    def __init__(self, ttl: float, size: int = 10_000) -> None:
        self.ttl, self.size = ttl, size
        self._entries: dict[str, tuple[float, Principal]] = {}

    def get(self, authorization: str | None) -> Principal | None:
        """The cached principal of this header, if it is an API key seen less than ``ttl`` ago."""
        found = self._entries.get(authorization or "")
        if found is None or time.monotonic() - found[0] > self.ttl:
            return None
        return found[1]

    def put(self, authorization: str | None, who: Principal) -> None:
        """Remember an API key's principal (JWTs and an empty ttl are never kept)."""
        if self.ttl <= 0 or not authorization or who.key_id is None or who.key_id.startswith("jwt:"):
            return
        if len(self._entries) >= self.size:
            self._entries.clear()  # rare; a bounded map beats an unbounded one
        self._entries[authorization] = (time.monotonic(), who)


@dataclass
class Gateway:
    """What the routes work with; built once by ``create_app`` (collaborators passed in there)."""

    settings: Settings
    database: Database
    store: ArtifactStore
    lifecycle: BatchLifecycle
    download: Downloader
    windows: dict[str, float]
    keys: KeyCache
    catalogue: Catalogue  # the models and adapters served (``GET /v1/models``), read once at start
    catalogue_loaded: int  # unix seconds: the ``created`` time of the models listed

    async def file(self, who: Principal, file_id: str) -> File:
        """The caller's org's live file, or OpenAI's 404."""
        return await self._owned(get_file, who, file_id, "File", "file_id")

    async def batch(self, who: Principal, batch_id: str) -> Batch:
        """The caller's org's batch, or OpenAI's 404."""
        return await self._owned(get_batch, who, batch_id, "Batch", "batch_id")

    async def _owned(self, get: Lookup[Row], who: Principal, object_id: str, kind: str, param: str) -> Row:
        # Another org's object is "not found" too: ids never reveal what exists elsewhere.
        async with self.database.reading() as session:
            row = await get(session, who.org_id, object_id)
        if row is None:
            raise ApiError.not_found(kind, object_id, param)
        return row

    async def current(self, who: Principal, batch_id: str) -> tuple[Batch, Progress | None]:
        """The batch after a tracker step (or the last one, when recent), and its live progress;
        read again only when the step changed the row."""
        row = await self.batch(who, batch_id)
        live, changed = await self.lifecycle.refresh(row)
        return (await self.batch(who, batch_id) if changed else row), live

    async def audit(self, who: Principal, action: str, object_id: str, **detail: Any) -> None:
        """Append who did what to the audit log."""
        from nightshift.api.db import audit

        async with self.database.session() as session:
            await audit(session, who.org_id, who.key_id, action, object_id, detail)


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


Gw = Annotated[Gateway, Depends(_gateway)]


async def _principal(request: Request, gw: Gw, authorization: Annotated[str | None, Header()] = None) -> Principal:
    """The caller, authenticated and counted against its org's hourly limit (its own session, so
    the call counts even if the handler fails later); the budget goes out as headers."""
    who = gw.keys.get(authorization)
    if who is None:
        # Reading who it is needs no write lock; only the counter below writes.
        async with gw.database.reading() as session:
            who = await authenticate(session, authorization, gw.settings.api)
        gw.keys.put(authorization, who)
    async with gw.database.session() as session:
        request.state.rate_budget = await check_rate_limit(session, who, gw.settings.api)
    return who


#: Route parameter type of an authenticated call.
Caller = Annotated[Principal, Depends(_principal)]


def json_body(model: type[M]) -> Callable[..., Awaitable[M]]:
    """A dependency that reads and validates a JSON body of ``model`` after ``Caller`` (FastAPI
    reads declared body parameters before any dependency runs, auth included)."""

    async def parse(who: Caller, request: Request) -> M:
        raw = await request.body()
        try:
            return model.model_validate_json(raw or b"{}")
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first.get("loc", ())) or None
            if first.get("type") == "json_invalid":
                raise ApiError(400, "the request body is not valid JSON") from None
            raise ApiError(400, f"{loc}: {first.get('msg', 'invalid')}", param=loc) from None

    return parse
