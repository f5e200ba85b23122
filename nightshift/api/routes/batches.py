"""``/v1/batches``: OpenAI's Batches API. Creating a batch places it on a pool and starts its run;
its status then moves only through the lifecycle service."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query

from nightshift.api import db
from nightshift.api.auth import Principal
from nightshift.api.deps import Caller, Gateway, Gw, json_body
from nightshift.api.errors import ApiError
from nightshift.api.objects import batch_object, page
from nightshift.api.schemas import BatchCreate, BatchEstimateObject, BatchObject, ListPage
from nightshift.api.urls import checked_webhook
from nightshift.core.errors import BatchFileError
from nightshift.core.lifecycle import BatchStatus, metadata_problem
from nightshift.core.protocol import Endpoint
from nightshift.core.retention import ExpiresAfter
from nightshift.orchestration.estimate import count_input, estimate_input

router = APIRouter(prefix="/v1/batches", tags=["batches"])

#: Batch metadata key that holds each shard back N seconds (rehearsing a slow pool): honoured only
#: for the orgs an operator named in ``api.drill_orgs``, never for a tenant on its own say.
DRILL_KEY = "nightshift_drill_slow_shards_seconds"
_DRILL_MAX_SECONDS = 600.0


def drill_params(gw: Gateway, who: Principal, metadata: dict[str, str] | None) -> dict[str, Any]:
    """The fault-injection parameters the batch may carry (operator-allowed orgs only)."""
    value = (metadata or {}).get(DRILL_KEY)
    if value is None:
        return {}
    if who.org_name not in gw.settings.api.drill_orgs:
        raise ApiError(
            403, f"metadata.{DRILL_KEY} is an operator setting", type_="permission_error", param=f"metadata.{DRILL_KEY}"
        )
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not 0.0 <= seconds <= _DRILL_MAX_SECONDS:
        raise ApiError(400, f"must be a number of seconds from 0 to {_DRILL_MAX_SECONDS:g}", param=f"metadata.{DRILL_KEY}")
    return {"slow_shards_seconds": seconds}


def check_metadata(metadata: dict[str, str] | None) -> None:
    """OpenAI's metadata limits, as a 400 naming the field."""
    problem = metadata_problem(metadata)
    if problem:
        raise ApiError(400, f"metadata: {problem}", param="metadata")


def check_output_expiry(gw: Gateway, expiry: ExpiresAfter | None) -> None:
    """Refuse an output expiry later than the store keeps batch outputs (its retention), as a 400."""
    if expiry is None:
        return
    kept = int(gw.settings.storage.retention_days * 86400)
    if expiry.seconds > kept:
        raise ApiError(
            400,
            f"output_expires_after.seconds: must be at most {kept}: this server keeps batch outputs "
            f"{gw.settings.storage.retention_days:g} days (its storage retention)",
            param="output_expires_after.seconds",
        )


async def key_webhook(gw: Gateway, who: Principal) -> str | None:
    """The calling key's default webhook (JWT callers have none)."""
    if not who.key_id or who.key_id.startswith("jwt:"):
        return None
    async with gw.database.session() as session:
        key = await session.get(db.ApiKey, who.key_id)
    return key.default_webhook_url if key else None


def checked_endpoint(gw: Gateway, body: BatchCreate) -> Endpoint:
    """The body's endpoint, once it and the completion window are ones this gateway serves (else a 400)."""
    try:
        endpoint = Endpoint(body.endpoint)
    except ValueError:
        allowed = ", ".join(e.value for e in Endpoint)
        raise ApiError(400, f"unsupported endpoint; use one of {allowed}", param="endpoint") from None
    if body.completion_window not in gw.windows:
        raise ApiError(400, f"completion_window must be one of {', '.join(gw.windows)}", param="completion_window")
    return endpoint


@router.post("", response_model=BatchObject)
async def create_batch(who: Caller, gw: Gw, body: Annotated[BatchCreate, Depends(json_body(BatchCreate))]) -> BatchObject:
    """Create a batch from an uploaded file and start it on the pool its deadline calls for."""
    endpoint = checked_endpoint(gw, body)
    check_metadata(body.metadata)
    check_output_expiry(gw, body.output_expires_after)
    drill = drill_params(gw, who, body.metadata)
    webhook = await checked_webhook(gw, who, (body.metadata or {}).get("webhook_url"), param="metadata.webhook_url")
    source = await gw.file(who, body.input_file_id)
    now = datetime.now(UTC)
    row = await gw.lifecycle.start(
        who,
        source=source,
        endpoint=endpoint,
        completion_window=body.completion_window,
        metadata=body.metadata,
        webhook=webhook or await key_webhook(gw, who),
        tier=who.tier,
        deadline=now + timedelta(hours=gw.windows[body.completion_window]),
        now=now,
        drill=drill,
        # The database applies it to the output and error files whenever they are attached.
        output_expires_after=body.output_expires_after.seconds if body.output_expires_after else None,
    )
    await gw.audit(who, "batch.create", row.id, input_file_id=source.id, pool=row.pool)
    return batch_object(row)


@router.post("/estimate", response_model=BatchEstimateObject)
async def estimate_batch(
    who: Caller, gw: Gw, body: Annotated[BatchCreate, Depends(json_body(BatchCreate))]
) -> BatchEstimateObject:
    """A dry run of ``POST /v1/batches`` with the same body: the requests, estimated prompt and
    completion tokens (an upper bound), the model, the pool placement would choose, the ETA,
    engine-hours and cost, and how sure it is (``confidence``/``basis``: this model's measured
    throughput on that pool, or a stated default). Nothing is started and nothing is recorded."""
    checked_endpoint(gw, body)
    check_metadata(body.metadata)
    source = await gw.file(who, body.input_file_id)
    now = datetime.now(UTC)
    deadline = now + timedelta(hours=gw.windows[body.completion_window])
    try:
        count = await asyncio.to_thread(count_input, source.uri, gw.settings)
    except BatchFileError:
        raise ApiError(400, "the input file could not be read", code="invalid_file", param="input_file_id") from None
    if count.requests == 0:
        raise ApiError(400, "the input file has no request lines", code="invalid_file", param="input_file_id")
    try:
        pools = await asyncio.to_thread(gw.lifecycle.orchestrator.pool_states, gw.settings)
    except Exception:  # noqa: BLE001 - whatever the orchestrator's failure, the caller gets a 503 without its text
        raise ApiError(
            503, "the pools' state could not be read (orchestration unavailable); try again later", type_="server_error"
        ) from None
    estimate = await asyncio.to_thread(
        estimate_input, source.uri, settings=gw.settings, deadline=deadline, pools=pools, now=now, count=count
    )
    return BatchEstimateObject(
        input_file_id=source.id,
        endpoint=body.endpoint,
        completion_window=body.completion_window,
        deadline=int(deadline.timestamp()),
        estimate=estimate,
    )


@router.get("/{batch_id}", response_model=BatchObject)
async def retrieve_batch(who: Caller, gw: Gw, batch_id: str) -> BatchObject:
    """The batch, brought up to date now."""
    return batch_object(*await gw.current(who, batch_id))


@router.get("", response_model=ListPage[BatchObject])
async def list_batches(
    who: Caller,
    gw: Gw,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> ListPage[BatchObject]:
    """The org's batches, newest first, paged with ``after``/``limit``."""
    async with gw.database.session() as session:
        try:
            rows, has_more = await db.list_batches(session, who.org_id, after=after, limit=limit)
        except db.NotFound:
            raise ApiError(400, "after: not a batch of this organization", param="after") from None
    return page(rows, has_more, batch_object)


@router.post("/{batch_id}/cancel", response_model=BatchObject)
async def cancel_batch(who: Caller, gw: Gw, batch_id: str) -> BatchObject:
    """Cancel: the batch is ``cancelling`` until its run stops, then ``cancelled`` with what finished."""
    row = await gw.batch(who, batch_id)
    if BatchStatus(row.status).is_terminal:
        raise ApiError(400, f"batch is already {row.status}", code="invalid_state")
    moved = await gw.lifecycle.cancel(row)
    if moved.status == "cancelling" and row.status != "cancelling":
        await gw.audit(who, "batch.cancel", batch_id)
    return batch_object(moved)
