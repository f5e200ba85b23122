"""The OpenAI-compatible Files and Batches gateway (``nightshift serve``), assembled.

An unchanged ``openai`` client pointed at ``/v1`` uploads a JSONL file, creates a batch, polls it
and downloads the output and error files. This module only assembles: the routers (one per
resource), the error handlers, the outer middleware, and the background work of the lifespan
(following batches, pool gauges, sweeps). Collaborators that reach outside — the orchestrator
(Prefect), the webhook sender and the https downloader (both through the egress policy) — are
arguments, so in-process tests pass their own. Imports stay light: no Ray, vLLM or torch.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI

from nightshift.api import db, metrics
from nightshift.api.deps import Downloader, Gateway, KeyCache
from nightshift.api.errors import install_error_handlers
from nightshift.api.lifecycle import BatchLifecycle, WebhookSender
from nightshift.api.middleware import GatewayMiddleware
from nightshift.api.routes import batches, files, jobs, models, ops
from nightshift.api.routes.files import purge_deleted
from nightshift.api.tracker import Orchestrator, PrefectOrchestrator, prefect_batch_events
from nightshift.core.errors import NightshiftError
from nightshift.core.lifecycle import completion_windows
from nightshift.settings import Settings
from nightshift.storage import ArtifactStore

log = logging.getLogger("nightshift.api")

#: Bytes of multipart framing allowed on top of the batch file limit.
_MULTIPART_OVERHEAD = 64 * 1024


class GatewayConfigError(NightshiftError):
    """The gateway's settings cannot make a safe server (said at start, not at the first request)."""


def create_app(
    settings: Settings | None = None,
    *,
    orchestrator: Orchestrator | None = None,
    send_webhook: WebhookSender | None = None,
    download: Downloader | None = None,
    batch_events: Callable[[], AsyncIterator[str]] | None = None,
    track_every: float | None = None,
    pools_every: float = 15.0,
) -> FastAPI:
    """The gateway app.

    Args:
        orchestrator: Starts, follows and cancels runs (default: Prefect).
        send_webhook: Delivers a webhook event (default: Standard Webhooks through the egress policy).
        download: Streams an allow-listed https input (default: through the egress policy).
        batch_events: Batch ids as their runs report (default: Prefect's event stream when the
            orchestrator is Prefect's; none otherwise). The poll every ``track_every`` seconds
            (default ``api.track_seconds``) is the slow fallback.

    Raises:
        GatewayConfigError: a setting would make an unsafe server (an empty JWT secret).
    """
    settings = settings or Settings()
    try:
        settings.api.check_serving()
        catalogue = settings.catalogue()  # a bad catalogue file stops the gateway at start, naming the field
    except ValueError as exc:
        raise GatewayConfigError(str(exc)) from None
    from nightshift.api import urls

    prefect = orchestrator is None
    database = db.Database(settings.api.database_url)
    # A request path: the store is retried briefly, then the caller gets an answer.
    retry = min(settings.storage.retry_seconds, settings.api.store_retry_seconds)
    store = ArtifactStore.from_config(settings.storage.model_copy(update={"retry_seconds": retry}))
    lifecycle = BatchLifecycle(
        database, store, settings, orchestrator or PrefectOrchestrator(), send_webhook or urls.webhook_sender(settings)
    )
    gateway = Gateway(
        settings=settings,
        database=database,
        store=store,
        lifecycle=lifecycle,
        download=download or urls.https_downloader(settings),
        windows=completion_windows(settings.sla.hours()),
        keys=KeyCache(settings.api.key_cache_seconds),
        catalogue=catalogue,
        catalogue_loaded=int(time.time()),
    )
    events = batch_events or (prefect_batch_events if prefect else None)
    every = settings.api.track_seconds if track_every is None else track_every

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await database.migrate()
        async with database.session() as session:
            await db.release_webhooks(session)
        await asyncio.to_thread(sweep_parts, store, settings.api.part_max_age_seconds)
        loops = [_forever(every, lambda: _housekeep(gateway), "batch tracker")]
        if prefect:
            loops.append(_forever(pools_every, lambda: _read_pools(settings), "pool gauges"))
        if events is not None:
            loops.append(_follow(events, lifecycle, database))
        tasks = [asyncio.create_task(loop) for loop in loops]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await lifecycle.drain()
            await database.dispose()

    app = FastAPI(title="nightshift", version="0.1.0", lifespan=lifespan)
    install_error_handlers(app)
    upload_limit = settings.limits.max_bytes + _MULTIPART_OVERHEAD
    json_limit = settings.api.max_json_body_bytes

    def body_limit(method: str, path: str) -> int:
        if method == "POST" and path.rstrip("/") == "/v1/files":
            return upload_limit
        return json_limit if method in ("POST", "PUT", "PATCH") else 0

    app.add_middleware(GatewayMiddleware, body_limit=body_limit)
    for module in (files, batches, jobs, models, ops):
        app.include_router(module.router)
    app.state.gateway = gateway
    app.state.settings, app.state.database, app.state.store = settings, database, store
    return app


def sweep_parts(store: ArtifactStore, max_age_seconds: float) -> int:
    """Remove upload parts (``.part``) a stopped gateway left behind; returns how many."""
    removed = 0
    now = time.time()
    try:
        parts = store.upload_parts()
    except Exception:  # noqa: BLE001 - a store that cannot be listed now is swept at the next pass
        log.warning("could not list the store's upload parts; sweeping later")
        return 0
    for path in parts:
        with contextlib.suppress(FileNotFoundError):
            modified = store.fs.modified(path).timestamp()
            if now - modified >= max_age_seconds:
                store.fs.rm(path)
                removed += 1
    return removed


async def _housekeep(gw: Gateway) -> None:
    await gw.lifecycle.track_once()
    await purge_deleted(gw)
    await asyncio.to_thread(sweep_parts, gw.store, gw.settings.api.part_max_age_seconds)


async def _read_pools(settings: Settings) -> None:
    from nightshift.orchestration.submit import read_pool_states

    metrics.record_pools(await asyncio.to_thread(read_pool_states, settings))


async def _forever(every: float, step: Callable[[], Awaitable[Any]], name: str) -> None:
    warned = False
    while True:
        try:
            await step()
            warned = False
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one bad pass must not stop the loop; said once per streak
            if not warned:
                log.exception("%s pass failed", name)
                warned = True
        await asyncio.sleep(every)


async def _follow(events: Callable[[], AsyncIterator[str]], lifecycle: BatchLifecycle, database: db.Database) -> None:
    """Move a batch as soon as its run reports (the pushed path; the poll is the fallback)."""
    async for batch_id in events():
        try:
            async with database.session() as session:
                row = await session.get(db.Batch, batch_id)
            if row is not None:
                await lifecycle.sync(row, fresh=True)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001
            log.exception("could not follow batch %s from its event", batch_id)
