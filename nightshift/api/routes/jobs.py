"""``/v1/jobs``: the native job API over the same batch rows (inline prompts or an input URL, a
tier and a priority; results as links with stats and cost)."""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from nightshift.api.deps import Caller, Gw, json_body
from nightshift.api.errors import ApiError
from nightshift.api.objects import job_created, job_results_body, job_status
from nightshift.api.routes.batches import check_metadata, drill_params, key_webhook
from nightshift.api.routes.files import store_upload
from nightshift.api.schemas import JobCreated, JobResults, JobStatus
from nightshift.api.urls import check_input, checked_webhook, copy_local_input, download_input, register_input
from nightshift.core.artifacts import Manifest
from nightshift.core.jobs import JobCreate, effective_tier, render_inline
from nightshift.core.sla import deadline_for

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post("", response_model=JobCreated)
async def create_job(who: Caller, gw: Gw, body: Annotated[JobCreate, Depends(json_body(JobCreate))]) -> JobCreated:
    """Start a job from inline prompts or an input URL (checked before anything is fetched).

    ``sla_tier`` defaults to the key's; a higher one is a 403 (``tier_exceeded``). ``metadata.priority``
    (``low``/``normal``/``high``) picks the pool's work queue. The job's id is a batch id: the job is
    visible through ``/v1/batches`` too."""
    settings = gw.settings
    tier = effective_tier(body.sla_tier, who.tier)
    priority = body.priority()
    check_metadata(body.metadata)
    drill = drill_params(gw, who, body.metadata)
    # Inline prompts run on the catalogue's default model, with its engine settings.
    served = gw.catalogue.default
    max_model_len = settings.engine.for_model(gw.catalogue.models[served].engine).max_model_len
    if body.max_tokens is not None and body.max_tokens >= max_model_len:
        raise ApiError(400, f"must be below the model's context length ({max_model_len})", param="max_tokens")
    for i, item in enumerate(body.input or []):
        if item.max_tokens is not None and item.max_tokens >= max_model_len:
            raise ApiError(400, f"must be below the model's context length ({max_model_len})", param=f"input[{i}].max_tokens")
    webhook = await checked_webhook(gw, who, body.webhook_url, param="webhook_url")
    if body.input is not None:
        data = render_inline(body, model=served, max_items=settings.api.max_inline_items)
        source = await store_upload(gw, who, io.BytesIO(data), "inline.jsonl")
    else:
        checked = check_input(settings, who, body.input_file_url or "")
        if checked.kind == "https":
            source = await download_input(gw, who, checked.url)
        elif checked.kind == "file":
            source = await copy_local_input(gw, who, checked)
        else:
            source = await register_input(gw, who, checked)
    now = datetime.now(UTC)
    hours = settings.sla.hours()
    row = await gw.lifecycle.start(
        who,
        source=source,
        endpoint=body.job_endpoint(),
        completion_window=f"{hours[tier.value]:g}h",
        metadata=body.metadata,
        webhook=webhook or await key_webhook(gw, who),
        tier=tier.value,
        deadline=deadline_for(now, tier, hours),
        now=now,
        priority=priority.value,
        drill=drill,
    )
    await gw.audit(who, "batch.create", row.id, input_file_id=source.id, pool=row.pool, priority=priority.value)
    return job_created(row)


@router.get("/{job_id}", response_model=JobStatus)
async def retrieve_job(who: Caller, gw: Gw, job_id: str) -> JobStatus:
    """Status, progress, throughput, SLA risk, pool and version, brought up to date now."""
    return job_status(*await gw.current(who, job_id))


@router.get("/{job_id}/results", response_model=JobResults)
async def job_results(who: Caller, gw: Gw, job_id: str, request: Request) -> JobResults:
    """Links to the output and error files, with stats and cost (409 until the job is done)."""
    row, _ = await gw.current(who, job_id)
    if row.status not in ("completed", "cancelled", "expired") or row.output_file_id is None:
        raise ApiError(409, f"job has no results yet (status {row.status})", code="job_not_finished")
    manifest = None
    if row.status == "completed" and row.version:
        path = gw.store.batch(row.id, row.version).manifest
        if await asyncio.to_thread(gw.store.exists, path):
            manifest = Manifest.model_validate_json(await asyncio.to_thread(gw.store.read_bytes, path))
    base = str(request.base_url).rstrip("/")

    async def link(file_id: str | None) -> str | None:
        if file_id is None:
            return None
        source = await gw.file(who, file_id)
        if "://" in source.uri and not source.uri.startswith("file://"):
            return await asyncio.to_thread(gw.store.sign, source.uri, gw.settings.api.results_url_seconds)
        return f"{base}/v1/files/{file_id}/content"

    body = job_results_body(
        row,
        results_url=await link(row.output_file_id),
        errors_url=await link(row.error_file_id),
        retention_days=gw.settings.storage.retention_days,
        manifest=manifest,
    )
    await gw.audit(who, "job.results", job_id)
    return body
