"""The OpenAI-compatible Files and Batches gateway (``nightshift serve``).

An unchanged ``openai`` client pointed at ``/v1`` uploads a JSONL file, creates a batch, polls it
and downloads the output and error files. Creating a batch places it on the spot or dedicated
pool (``submit_batch``) and triggers the Prefect deployment; a background tracker moves each row
along as the store and Prefect report progress, and picks unfinished batches up again after a
restart. Imports stay light (no Ray, vLLM or torch); Prefect is loaded on first use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, Form, Header, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, Field

from nightshift.api import db as store_db
from nightshift.api import metrics, webhooks
from nightshift.api.auth import AuthError, Principal, RateLimited, authenticate, check_rate_limit
from nightshift.api.objects import batch_object, error_body, file_object, job_created, job_results_body, job_status
from nightshift.api.tracker import TERMINAL, read_state, request_flow_run_cancel, transition
from nightshift.core.artifacts import Manifest
from nightshift.core.errors import BatchFileError, JobRequestError, NightshiftError, TierExceededError
from nightshift.core.jobs import JobCreate, Prices, check_input_url, effective_tier, render_inline
from nightshift.core.protocol import Endpoint
from nightshift.core.sla import deadline_for
from nightshift.settings import Settings
from nightshift.storage import ArtifactStore
from nightshift.storage.partial import publish_partial

log = logging.getLogger("nightshift.api")
access_log = logging.getLogger("nightshift.api.access")

#: completion_window values and their hours: OpenAI's "24h", plus one per nightshift tier.
WINDOWS = {"6h": 6.0, "12h": 12.0, "24h": 24.0, "72h": 72.0}
UPLOAD_CHUNK = 1024 * 1024
#: Batch metadata key that holds each shard back N seconds (rehearsing a slow pool).
DRILL_KEY = "nightshift_drill_slow_shards_seconds"


class ApiError(NightshiftError):
    """An error with an HTTP status, raised by the routes and rendered as OpenAI's error body."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param


class BatchCreate(BaseModel):
    """``POST /v1/batches`` body, as the OpenAI client sends it."""

    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = Field(default=None)


async def _principal(request: Request, authorization: Annotated[str | None, Header()] = None) -> Principal:
    """The caller, authenticated and counted against its tier's hourly limit (its own session, so
    the call counts even if the handler fails later)."""
    state = request.app.state
    async with state.database.session() as session:
        who = await authenticate(session, authorization, state.settings.api)
        await check_rate_limit(session, who, state.settings.api)
    return who


#: Route parameter type of an authenticated call (module level: FastAPI resolves the string
#: annotations ``from __future__ import annotations`` leaves against module globals).
Caller = Annotated[Principal, Depends(_principal)]


def create_app(settings: Settings | None = None, *, track_every: float = 2.0, pools_every: float = 15.0) -> FastAPI:
    """The gateway app; its lifespan migrates the database and runs the batch tracker (every
    ``track_every`` s) and the pool gauges' refresh (every ``pools_every`` s)."""
    settings = settings or Settings()
    database = store_db.Database(settings.api.database_url)
    store = ArtifactStore.from_config(settings.storage)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await database.migrate()
        loops = [asyncio.create_task(_track_forever(track_every)), asyncio.create_task(_watch_pools(pools_every))]
        try:
            yield
        finally:
            for loop in loops:
                loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop
            await database.dispose()

    app = FastAPI(title="nightshift", version="0.1.0", lifespan=lifespan)

    # -- errors: OpenAI's envelope and status codes ------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.message, code=exc.code, param=exc.param), status_code=exc.status)

    @app.exception_handler(AuthError)
    async def _auth_error(_: Request, exc: AuthError) -> JSONResponse:
        return JSONResponse(error_body(str(exc), type_="invalid_request_error", code="invalid_api_key"), status_code=401)

    @app.exception_handler(RateLimited)
    async def _rate_limited(_: Request, exc: RateLimited) -> JSONResponse:
        body = error_body(str(exc), type_="requests", code="rate_limit_exceeded")
        return JSONResponse(body, status_code=429, headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(store_db.NotFound)
    async def _not_found(_: Request, exc: store_db.NotFound) -> JSONResponse:
        return JSONResponse(error_body(str(exc), code="not_found"), status_code=404)

    @app.exception_handler(BatchFileError)
    async def _bad_file(_: Request, exc: BatchFileError) -> JSONResponse:
        return JSONResponse(error_body(str(exc), code="invalid_file", param="file"), status_code=400)

    @app.exception_handler(JobRequestError)
    async def _bad_job(_: Request, exc: JobRequestError) -> JSONResponse:
        return JSONResponse(error_body(str(exc), code="invalid_request", param=exc.field), status_code=400)

    @app.exception_handler(TierExceededError)
    async def _tier_exceeded(_: Request, exc: TierExceededError) -> JSONResponse:
        return JSONResponse(error_body(str(exc), type_="permission_error", code="tier_exceeded", param="sla_tier"), 403)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        param = ".".join(str(p) for p in first.get("loc", ())[1:]) or None
        return JSONResponse(error_body(f"{param}: {first.get('msg', 'invalid request')}", param=param), status_code=400)

    @app.middleware("http")
    async def _observe(request: Request, call_next: Any) -> Any:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")  # the template, so ids do not explode the label set
        metrics.REQUESTS.labels(method=request.method, route=path, status=str(response.status_code)).inc()
        if response.status_code == 429:
            metrics.RATE_LIMITED.inc()
        # One record per request; with NIGHTSHIFT_LOG_FORMAT=json the fields are the JSON keys.
        ms = round((time.perf_counter() - started) * 1000, 1)
        access_log.info(
            "%s %s %s %.1fms",
            request.method,
            request.url.path,
            response.status_code,
            ms,
            extra={
                "method": request.method,
                "path": request.url.path,
                "route": path,
                "status": response.status_code,
                "ms": ms,
                "client": request.client.host if request.client else None,
            },
        )
        return response

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=metrics.CONTENT_TYPE)

    # -- auth ---------------------------------------------------------------------------------
    async def audit(who: Principal, action: str, object_id: str, **detail: Any) -> None:
        async with database.session() as session:
            await store_db.audit(session, who.org_id, who.key_id, action, object_id, detail)
            await session.commit()

    # -- files --------------------------------------------------------------------------------
    @app.post("/v1/files")
    async def create_file(who: Caller, file: Annotated[UploadFile, File()], purpose: Annotated[str, Form()]) -> JSONResponse:
        if purpose != "batch":
            raise ApiError(400, f"purpose must be 'batch' (got {purpose!r}): this server runs batches", param="purpose")
        row = await _store_file(who, _upload_chunks(file), file.filename or "upload.jsonl")
        return JSONResponse(file_object(row))

    async def _upload_chunks(upload: UploadFile) -> AsyncIterator[bytes]:
        while chunk := await upload.read(UPLOAD_CHUNK):
            yield chunk

    async def _receive(chunks: AsyncIterator[bytes], name: str, path: str) -> tuple[int, int, int]:
        """Stream ``chunks`` into the store at ``path``, enforcing the batch limits on the way."""
        limits = settings.limits
        size = lines = objects = 0
        tail = b""
        tmp = f"{path}.part"
        store.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        try:
            with store.fs.open(tmp, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > limits.max_bytes:
                        raise BatchFileError.too_large(name, size, limits.max_bytes)
                    out.write(chunk)
                    parts = (tail + chunk).split(b"\n")
                    tail = parts.pop()
                    for part in parts:
                        n, o = _count(part)
                        lines, objects = lines + n, objects + o
                    if lines > limits.max_lines:
                        raise BatchFileError.too_many_lines(name, limits.max_lines)
            n, o = _count(tail)
            lines, objects = lines + n, objects + o
            if lines > limits.max_lines:
                raise BatchFileError.too_many_lines(name, limits.max_lines)
            if lines == 0:
                raise BatchFileError.empty(name)
            if objects == 0:
                raise BatchFileError(
                    "not a JSONL batch file: no line is a JSON object (expected one OpenAI batch request per line)",
                    uri=name,
                )
            store.fs.mv(tmp, path)
        except BaseException:
            with contextlib.suppress(Exception):
                store.fs.rm(tmp)
            raise
        return size, lines, objects

    @app.get("/v1/files")
    async def list_files(who: Caller, purpose: str | None = None, limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000):
        async with database.session() as session:
            rows = await store_db.list_files(session, who.org_id, purpose=purpose, limit=limit)
        return {"object": "list", "data": [file_object(f) for f in rows], "has_more": False}

    async def _owned(get: Any, who: Principal, object_id: str, name: str, param: str) -> Any:
        """The caller's org's object, or OpenAI's 404 (another org's object is not found either)."""
        async with database.session() as session:
            row = await get(session, who.org_id, object_id)
        if row is None:
            raise ApiError(404, f"No such {name} object: {object_id}", code="not_found", param=param)
        return row

    async def _file(who: Principal, file_id: str) -> Any:
        return await _owned(store_db.get_file, who, file_id, "File", "file_id")

    @app.get("/v1/files/{file_id}")
    async def retrieve_file(who: Caller, file_id: str) -> JSONResponse:
        return JSONResponse(file_object(await _file(who, file_id)))

    @app.get("/v1/files/{file_id}/content")
    async def file_content(who: Caller, file_id: str) -> StreamingResponse:
        row = await _file(who, file_id)
        await audit(who, "file.download", file_id)

        def chunks() -> Any:
            with store.fs.open(row.uri, "rb") as f:
                while data := f.read(UPLOAD_CHUNK):
                    yield data

        return StreamingResponse(chunks(), media_type="application/jsonl")

    @app.delete("/v1/files/{file_id}")
    async def delete_file(who: Caller, file_id: str) -> JSONResponse:
        row = await _file(who, file_id)
        async with database.session() as session:
            await store_db.mark_file_deleted(session, row.id)
            await session.commit()
        await audit(who, "file.delete", file_id)
        return JSONResponse({"id": file_id, "object": "file", "deleted": True})

    # -- batches ------------------------------------------------------------------------------
    @app.post("/v1/batches")
    async def create_batch(who: Caller, body: BatchCreate) -> JSONResponse:
        try:
            endpoint = Endpoint(body.endpoint)
        except ValueError:
            allowed = ", ".join(e.value for e in Endpoint)
            raise ApiError(400, f"unsupported endpoint {body.endpoint!r}; use one of {allowed}", param="endpoint") from None
        if body.completion_window not in WINDOWS:
            raise ApiError(400, f"completion_window must be one of {', '.join(WINDOWS)}", param="completion_window")
        source = await _file(who, body.input_file_id)
        now = datetime.now(UTC)
        row = await _start_batch(
            who,
            source=source,
            endpoint=endpoint,
            completion_window=body.completion_window,
            metadata=body.metadata,
            webhook=(body.metadata or {}).get("webhook_url") or await _key_webhook(who),
            tier=who.tier,
            deadline=now + timedelta(hours=WINDOWS[body.completion_window]),
            now=now,
        )
        return JSONResponse(batch_object(row))

    async def _start_batch(
        who: Principal,
        *,
        source: Any,
        endpoint: Endpoint,
        completion_window: str,
        metadata: dict[str, str] | None,
        webhook: str | None,
        tier: str,
        deadline: datetime,
        now: datetime,
        priority: str = "normal",
    ) -> Any:
        """Record a batch row for ``source`` and hand it to a pool (both APIs start work here)."""
        batch_id = f"batch_{secrets.token_hex(12)}"
        # An SLA drill knob, like the flow parameter: it can only slow the caller's own batch.
        drill = (metadata or {}).get(DRILL_KEY)
        extra = {"slow_shards_seconds": float(drill)} if drill else {}
        async with database.session() as session:
            await store_db.add_batch(
                session,
                id=batch_id,
                org_id=who.org_id,
                input_file_id=source.id,
                endpoint=endpoint.value,
                completion_window=completion_window,
                metadata=metadata,
                status="validating",
                tier=tier,
                deadline=deadline,
                expires_at=deadline,
                created_at=now,
                webhook_url=webhook,
            )
            await session.commit()
        try:
            from nightshift.api.submit import submit_batch

            sub = await asyncio.to_thread(
                submit_batch,
                source.uri,
                tier=tier,
                settings=settings,
                submitted_at=now,
                priority=priority,
                batch_id=batch_id,
                endpoint=endpoint,
                deadline=deadline,
                **extra,
            )
            fields = {
                "flow_run_id": sub.flow_run_id,
                "deployment": sub.deployment,
                "pool": sub.placement.pool,
                "placement": sub.placement.model_dump(mode="json"),
            }
        except NightshiftError as exc:
            error = {"code": "submit_failed", "message": str(exc), "param": None, "line": None}
            fields = {"status": "failed", "failed_at": datetime.now(UTC), "errors": [error]}
        async with database.session() as session:
            row = await store_db.update_batch(session, batch_id, **fields)
            await session.commit()
        metrics.BATCHES.labels(status=row.status).inc()
        await audit(who, "batch.create", batch_id, input_file_id=source.id, pool=fields.get("pool"), priority=priority)
        return row

    # -- jobs: the native API over the same batch rows ---------------------------------------
    @app.post("/v1/jobs")
    async def create_job(who: Caller, body: JobCreate) -> JSONResponse:
        tier = effective_tier(body.sla_tier, who.tier)
        priority = body.priority()
        now = datetime.now(UTC)
        if body.input is not None:
            served = settings.engine.served_model_name or Path(settings.engine.model).name
            data = render_inline(body, model=served, max_items=settings.api.max_inline_items)
            source = await _store_file(who, _one_chunk(data), "inline.jsonl")
        else:
            checked = check_input_url(
                body.input_file_url or "",
                allowed_file_roots=settings.api.allowed_file_roots,
                allowed_https_hosts=settings.api.allowed_https_hosts,
            )
            if checked.fetch_by_gateway:
                source = await _store_file(who, _download(checked.url), checked.url.rsplit("/", 1)[-1] or "input.jsonl")
            else:
                source = await _register_url(who, checked.url)
        deadline = deadline_for(now, tier, settings.sla.hours())
        row = await _start_batch(
            who,
            source=source,
            endpoint=body.job_endpoint(),
            completion_window=f"{settings.sla.hours()[tier.value]:g}h",
            metadata=body.metadata,
            webhook=body.webhook_url or await _key_webhook(who),
            tier=tier.value,
            deadline=deadline,
            now=now,
            priority=priority.value,
        )
        return JSONResponse(job_created(row))

    async def _one_chunk(data: bytes) -> AsyncIterator[bytes]:
        yield data

    async def _download(url: str) -> AsyncIterator[bytes]:
        """Stream an allow-listed https URL (no redirects: a redirect could leave the allow-list)."""
        import httpx

        async with httpx.AsyncClient(follow_redirects=False, timeout=60) as client, client.stream("GET", url) as response:
            if response.status_code != 200:
                raise JobRequestError(f"fetching it gave HTTP {response.status_code}", field="input_file_url", value=url)
            async for chunk in response.aiter_bytes(UPLOAD_CHUNK):
                yield chunk

    async def _store_file(who: Principal, chunks: AsyncIterator[bytes], filename: str) -> Any:
        """A File row for content streamed into the store (uploads, inline items, downloaded inputs)."""
        file_id = f"file-{secrets.token_hex(12)}"
        path = f"{store.root}/files/{who.org_id}/{file_id}.jsonl"
        size, lines, objects = await _receive(chunks, filename, path)
        return await _add_file(who, file_id, filename, store.uri(path), size, lines, json_objects=objects)

    async def _add_file(who: Principal, file_id: str, filename: str, uri: str, size: int, lines: int, **detail: Any) -> Any:
        """Record a batch input file of the caller's org (and audit it)."""
        async with database.session() as session:
            row = await store_db.add_file(
                session, id=file_id, org_id=who.org_id, filename=filename, purpose="batch",
                bytes=size, lines=lines, uri=uri, sha256=None,
            )  # fmt: skip
            await session.commit()
        await audit(who, "file.create", file_id, bytes=size, lines=lines, **detail)
        return row

    async def _register_url(who: Principal, url: str) -> Any:
        """A File row for an input read in place (s3, allowed local folder): only its size is read."""
        import fsspec

        def size() -> int:
            fs, path = fsspec.core.url_to_fs(url, **settings.storage.storage_options(url))
            return int(fs.size(path))

        try:
            nbytes = await asyncio.to_thread(size)
        except FileNotFoundError:
            raise JobRequestError("no such object", field="input_file_url", value=url) from None
        except Exception as exc:  # noqa: BLE001 - unreachable store, no permission: the caller's to fix
            raise JobRequestError(f"cannot be read: {exc}", field="input_file_url", value=url) from None
        if nbytes > settings.limits.max_bytes:
            raise BatchFileError.too_large(url, nbytes, settings.limits.max_bytes)
        # Lines are unknown until the flow reads it: the gateway never reads a whole input here.
        return await _add_file(who, f"file-{secrets.token_hex(12)}", url.rsplit("/", 1)[-1], url, nbytes, 0, source=url)

    @app.get("/v1/jobs/{job_id}")
    async def retrieve_job(who: Caller, job_id: str) -> JSONResponse:
        return JSONResponse(job_status(*await _current(who, job_id)))

    @app.get("/v1/jobs/{job_id}/results")
    async def job_results(who: Caller, job_id: str, request: Request) -> JSONResponse:
        row, _ = await _current(who, job_id)
        if row.status not in ("completed", "cancelled", "expired") or row.output_file_id is None:
            raise ApiError(409, f"job {job_id} has no results yet (status {row.status})", code="job_not_finished")
        manifest = None
        if row.status == "completed" and row.version:
            path = store.batch(row.id, row.version).manifest
            if await asyncio.to_thread(store.exists, path):
                manifest = Manifest.model_validate_json(await asyncio.to_thread(store.read_bytes, path))
        base = str(request.base_url).rstrip("/")

        async def link(file_id: str | None) -> str | None:
            if file_id is None:
                return None
            source = await _file(who, file_id)
            if "://" in source.uri and not source.uri.startswith("file://"):
                return await asyncio.to_thread(store.sign, source.uri, settings.api.results_url_seconds)
            return f"{base}/v1/files/{file_id}/content"

        prices = Prices(
            input_per_million=settings.api.price_input_per_million,
            output_per_million=settings.api.price_output_per_million,
            spot_discount=settings.api.spot_discount,
        )
        body = job_results_body(
            row,
            results_url=await link(row.output_file_id),
            errors_url=await link(row.error_file_id),
            retention_days=settings.storage.retention_days,
            manifest=manifest,
            prices=prices,
        )
        await audit(who, "job.results", job_id)
        return JSONResponse(body)

    async def _key_webhook(who: Principal) -> str | None:
        """The calling key's default webhook (JWT callers have none)."""
        if not who.key_id or who.key_id.startswith("jwt:"):
            return None
        async with database.session() as session:
            key = await session.get(store_db.ApiKey, who.key_id)
        return key.default_webhook_url if key else None

    async def _send_webhook(batch_id: str) -> None:
        """Deliver the terminal-status webhook of a batch once, and record how it went."""
        async with database.session() as session:
            row = await session.get(store_db.Batch, batch_id)
            org = await store_db.get_org(session, row.org_id) if row else None
        if row is None or org is None or not row.webhook_url or row.webhook_status is not None:
            return
        event = {
            "id": f"evt_{secrets.token_hex(12)}",
            "type": f"batch.{row.status}",
            "created_at": int(datetime.now(UTC).timestamp()),
        }
        event["data"] = batch_object(row)
        delivered, attempts, outcome = await webhooks.deliver(row.webhook_url, org.webhook_secret, event)
        async with database.session() as session:
            await store_db.update_batch(
                session, batch_id, webhook_status=("delivered " if delivered else "failed ") + outcome, webhook_attempts=attempts
            )
        metrics.WEBHOOKS.labels(outcome="delivered" if delivered else "failed").inc()
        log.info("webhook for %s: %s after %d attempt(s)", batch_id, outcome, attempts)

    async def _batch(who: Principal, batch_id: str) -> Any:
        return await _owned(store_db.get_batch, who, batch_id, "Batch", "batch_id")

    async def _current(who: Principal, batch_id: str) -> tuple[Any, dict[str, Any] | None]:
        """The batch after a tracker step taken now (not at the next poll), and its live progress."""
        live = await refresh(await _batch(who, batch_id))
        return await _batch(who, batch_id), live

    @app.get("/v1/batches/{batch_id}")
    async def retrieve_batch(who: Caller, batch_id: str) -> JSONResponse:
        return JSONResponse(batch_object(*await _current(who, batch_id)))

    @app.get("/v1/batches")
    async def list_batches(who: Caller, after: str | None = None, limit: Annotated[int, Query(ge=1, le=100)] = 20):
        async with database.session() as session:
            rows, has_more = await store_db.list_batches(session, who.org_id, after=after, limit=limit)
        data = [batch_object(b) for b in rows]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more,
        }

    @app.post("/v1/batches/{batch_id}/cancel")
    async def cancel_batch(who: Caller, batch_id: str) -> JSONResponse:
        row = await _batch(who, batch_id)
        if row.status in TERMINAL:
            raise ApiError(400, f"batch {batch_id} is already {row.status}", code="invalid_state")
        if row.status != "cancelling":
            async with database.session() as session:
                row = await store_db.update_batch(session, batch_id, status="cancelling", cancelling_at=datetime.now(UTC))
                await session.commit()
            if row.flow_run_id:
                await asyncio.to_thread(request_flow_run_cancel, row.flow_run_id)
            await audit(who, "batch.cancel", batch_id)
        return JSONResponse(batch_object(row))

    @app.get("/health")
    async def health() -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            async with database.session() as session:
                await store_db.ping(session)
            checks["database"] = "ok"
        except Exception as exc:  # noqa: BLE001 - reported, not raised
            checks["database"] = f"error: {exc}"
        try:
            await asyncio.to_thread(store.fs.ls, store.root)
            checks["storage"] = "ok"
        except FileNotFoundError:
            checks["storage"] = "ok (empty)"
        except Exception as exc:  # noqa: BLE001
            checks["storage"] = f"error: {exc}"
        checks["prefect"] = await asyncio.to_thread(_prefect_health)
        ok = all(v.startswith("ok") for v in checks.values())
        return JSONResponse({"status": "ok" if ok else "degraded", "checks": checks}, status_code=200 if ok else 503)

    # -- tracking -----------------------------------------------------------------------------
    async def refresh(row: Any) -> dict[str, Any] | None:
        """Bring one batch row up to date; returns the live progress when the batch is running."""
        if row.status in TERMINAL:
            return None
        state = await asyncio.to_thread(read_state, store, row.id, row.flow_run_id)
        changes = transition(row, state)
        now = datetime.now(UTC)
        stopping = row.status == "cancelling" and state.manifest is None
        expired = row.expires_at is not None and now > row.expires_at and state.manifest is None
        run_over = state.run_state in (None, "Cancelled", "Crashed", "Failed", "Completed", "Scheduled", "Late")
        if expired and row.status != "cancelling":
            if row.flow_run_id:
                await asyncio.to_thread(request_flow_run_cancel, state.flow_run_id or row.flow_run_id)
            changes.update(await _finish_partial(row, "expired", "batch_expired", "the batch's completion window ended first"))
        elif stopping and run_over:
            if row.flow_run_id and state.run_state in ("Scheduled", "Late"):
                await asyncio.to_thread(request_flow_run_cancel, state.flow_run_id or row.flow_run_id)
            changes.update(await _finish_partial(row, "cancelled", "batch_cancelled", "the batch was cancelled first"))
        if changes.get("status") == "completed" and state.manifest is not None:
            changes.update(await _register_outputs(row, state.manifest.output_file, state.manifest.error_file))
        if changes:
            async with database.session() as session:
                await store_db.update_batch(session, row.id, **changes)
                await session.commit()
            if changes.get("status") in TERMINAL:
                metrics.BATCHES.labels(status=changes["status"]).inc()
                _schedule_webhook(row.id)
        return state.progress

    async def _finish_partial(row: Any, status: str, code: str, message: str) -> dict[str, Any]:
        async with database.session() as session:
            source = await store_db.get_file(session, row.org_id, row.input_file_id, include_deleted=True)
        partial = await asyncio.to_thread(publish_partial, store, row.id, source.uri, code=code, message=message)
        return {
            "status": status,
            f"{status}_at": datetime.now(UTC),
            "request_counts": partial.request_counts.model_dump(),
            "usage": partial.usage.model_dump(),
            **(await _register_outputs(row, partial.output_file, partial.error_file)),
        }

    async def _register_outputs(row: Any, output: Any, errors: Any) -> dict[str, Any]:
        ids: dict[str, Any] = {}
        async with database.session() as session:
            for kind, record in (("output", output), ("error", errors)):
                if kind == "error" and not record.lines:
                    ids["error_file_id"] = None
                    continue
                file_id = f"file-{secrets.token_hex(12)}"
                await store_db.add_file(
                    session,
                    id=file_id,
                    org_id=row.org_id,
                    filename=f"{row.id}_{kind}.jsonl",
                    purpose="batch_output",
                    bytes=record.bytes,
                    lines=record.lines or 0,
                    uri=record.path,
                    sha256=record.sha256,
                )
                ids[f"{kind}_file_id"] = file_id
            await session.commit()
        return ids

    pending_webhooks: set[asyncio.Task[None]] = set()  # held so running deliveries are not collected

    def _schedule_webhook(batch_id: str) -> None:
        task = asyncio.create_task(_send_webhook(batch_id), name=batch_id)
        pending_webhooks.add(task)
        task.add_done_callback(pending_webhooks.discard)

    async def _track_forever(every: float) -> None:
        while True:
            try:
                async with database.session() as session:
                    rows = await store_db.unfinished_batches(session)
                for row in rows:
                    await refresh(row)
                async with database.session() as session:
                    owed = await store_db.undelivered_webhooks(session)
                for row in owed:
                    if not any(t.get_name() == row.id for t in pending_webhooks):
                        _schedule_webhook(row.id)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - one bad poll must not stop tracking
                log.exception("batch tracker poll failed")
            await asyncio.sleep(every)

    async def _watch_pools(every: float) -> None:
        from nightshift.api.submit import read_pool_states

        warned = False
        while True:
            try:
                metrics.record_pools(await asyncio.to_thread(read_pool_states, settings))
                warned = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - Prefect down: keep the last values, say so once
                if not warned:
                    log.warning("could not read the work pools for /metrics: %s", exc)
                    warned = True
            await asyncio.sleep(every)

    app.state.settings, app.state.database, app.state.store = settings, database, store
    return app


def _prefect_health() -> str:
    """Whether the Prefect API the gateway triggers deployments on answers."""
    import httpx
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        return "error: PREFECT_API_URL is not set"
    try:
        response = httpx.get(f"{url.rstrip('/')}/health", timeout=5)
    except httpx.HTTPError as exc:
        return f"error: {exc}"
    return "ok" if response.status_code == 200 else f"error: HTTP {response.status_code}"


def _count(line: bytes) -> tuple[int, int]:
    """(1 if the line is not blank, 1 if it parses as a JSON object)."""
    if not line.strip():
        return 0, 0
    try:
        return 1, int(isinstance(json.loads(line), dict))
    except ValueError:
        return 1, 0
