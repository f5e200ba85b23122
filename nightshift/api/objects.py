"""OpenAI objects rendered from the gateway's rows, with the OpenAI names and shapes (the
official ``openai`` client parses them); nightshift's own fields go under ``nightshift``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TypeVar

from pydantic import BaseModel

from nightshift.api.db import Batch, File
from nightshift.api.schemas import (
    BatchError,
    BatchErrors,
    BatchObject,
    BatchPlacement,
    BatchUsage,
    ErrorBody,
    ErrorDetail,
    FileObject,
    JobCost,
    JobCreated,
    JobProgress,
    JobResults,
    JobSla,
    JobStats,
    JobStatus,
    JobThroughput,
    ListPage,
    RequestCounts,
)
from nightshift.core.artifacts import Manifest
from nightshift.core.cost import BatchCost
from nightshift.core.estimate import BatchEstimate
from nightshift.core.jobs import mean_request_latency
from nightshift.core.progress import Progress

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


def unix(ts: datetime | None) -> int | None:
    """OpenAI timestamps are integer Unix seconds."""
    return None if ts is None else int(ts.timestamp())


def file_object(f: File) -> FileObject:
    """A ``file`` object."""
    return FileObject(
        id=f.id,
        bytes=f.bytes,
        created_at=unix(f.created_at) or 0,
        filename=f.filename,
        purpose=f.purpose,
        status=f.status,
        expires_at=unix(f.expires_at),
    )


def _errors(b: Batch) -> list[BatchError]:
    """The row's ``errors`` column (OpenAI's ``errors.data``) as the response type."""
    return [BatchError.model_validate(e) for e in b.errors or []]


def batch_object(b: Batch, live: Progress | None = None) -> BatchObject:
    """A ``batch`` object; ``live`` adds the SLA watch's view (ETA, risk) while it runs."""
    usage = None
    if b.usage:
        usage = BatchUsage(
            input_tokens=b.usage.get("prompt_tokens", 0),
            output_tokens=b.usage.get("completion_tokens", 0),
            total_tokens=b.usage.get("total_tokens", 0),
        )
    return BatchObject(
        id=b.id,
        endpoint=b.endpoint,
        errors=BatchErrors(data=_errors(b)) if b.errors else None,
        input_file_id=b.input_file_id,
        completion_window=b.completion_window,
        status=b.status,
        output_file_id=b.output_file_id,
        error_file_id=b.error_file_id,
        created_at=unix(b.created_at) or 0,
        in_progress_at=unix(b.in_progress_at),
        expires_at=unix(b.expires_at),
        finalizing_at=unix(b.finalizing_at),
        completed_at=unix(b.completed_at),
        failed_at=unix(b.failed_at),
        expired_at=unix(b.expired_at),
        cancelling_at=unix(b.cancelling_at),
        cancelled_at=unix(b.cancelled_at),
        request_counts=RequestCounts.model_validate(b.request_counts or {}),
        metadata=b.metadata_ or None,
        usage=usage,
        nightshift=BatchPlacement(
            tier=b.tier,
            pool=b.pool,
            deadline=unix(b.deadline),
            version=b.version,
            flow_run_id=b.flow_run_id,
            placement=b.placement,
            eta_seconds=live.eta_seconds if live else None,
            slack_seconds=live.slack_seconds if live else None,
            risk=live.risk if live else None,
            estimate=BatchEstimate.model_validate(b.estimate) if b.estimate else None,
            cost=BatchCost.model_validate(b.cost) if b.cost else None,
        ),
    )


def page(items: list[T], has_more: bool, render: Callable[[T], M]) -> ListPage[M]:
    """An OpenAI list page of ``items`` rendered one by one."""
    data = [render(i) for i in items]
    first = getattr(data[0], "id", None) if data else None
    last = getattr(data[-1], "id", None) if data else None
    return ListPage[M](data=data, first_id=first, last_id=last, has_more=has_more)


def error_body(message: str, *, type_: str = "invalid_request_error", code: str | None = None, param: str | None = None) -> dict:
    """OpenAI's error envelope (the client raises its typed errors from it)."""
    return ErrorBody(error=ErrorDetail(message=message, type=type_, param=param, code=code)).model_dump()


# -- the native job API: the same rows, in the job's shape -----------------------------------
def iso(ts: datetime | None) -> str | None:
    """Job timestamps are ISO 8601 (UTC)."""
    return None if ts is None else ts.isoformat()


def job_created(b: Batch) -> JobCreated:
    """``POST /v1/jobs`` response."""
    placement = b.placement or {}
    eta = placement.get("estimated_seconds")
    return JobCreated(
        job_id=b.id,
        status=b.status,
        created_at=iso(b.created_at) or "",
        deadline_at=iso(b.deadline),
        estimated_completion=iso(b.created_at + timedelta(seconds=eta)) if eta is not None else None,
        priority=(b.metadata_ or {}).get("priority", "normal"),
        pool=b.pool,
        errors=_errors(b) or None,
    )


def _throughput(b: Batch, live: Progress | None) -> JobThroughput:
    """Rates while running (the SLA watch's window); over the whole run once finished."""
    if live is not None:
        return JobThroughput(
            req_per_sec=live.requests_per_second,
            tokens_per_sec=live.tokens_per_second,
            estimated_remaining=live.eta_seconds,
        )
    counts, usage = b.request_counts or {}, b.usage or {}
    if b.completed_at is not None and b.in_progress_at is not None:
        seconds = max((b.completed_at - b.in_progress_at).total_seconds(), 1e-9)
        return JobThroughput(
            req_per_sec=round(counts.get("total", 0) / seconds, 3),
            tokens_per_sec=round(usage.get("total_tokens", 0) / seconds, 3),
            estimated_remaining=0.0,
        )
    return JobThroughput()


def job_status(b: Batch, live: Progress | None = None) -> JobStatus:
    """``GET /v1/jobs/{id}``: status, progress, throughput, SLA, pool and version."""
    counts = b.request_counts or {}
    total, completed, failed = counts.get("total", 0), counts.get("completed", 0), counts.get("failed", 0)
    percent = live.percent if live else None
    if percent is None:
        percent = 100.0 if b.status == "completed" else (100.0 * (completed + failed) / total if total else 0.0)
    return JobStatus(
        job_id=b.id,
        status=b.status,
        created_at=iso(b.created_at) or "",
        progress=JobProgress(completed=completed, failed=failed, total=total, percent=round(percent, 2)),
        throughput=_throughput(b, live),
        sla=JobSla(tier=b.tier, deadline_at=iso(b.deadline), risk=live.risk if live else None),
        pool=b.pool,
        version=b.version,
        priority=(b.metadata_ or {}).get("priority", "normal"),
        metadata=b.metadata_ or None,
        errors=_errors(b) or None,
    )


def _job_cost(cost: BatchCost | None) -> JobCost:
    """The job's cost from the batch's (the one cost rule, ``core.cost``); empty when nothing was charged."""
    if cost is None:
        return JobCost()
    return JobCost(
        usd=cost.usd,
        capacity=cost.pool,
        engine_seconds=cost.engine_seconds,
        price_per_engine_hour=cost.price_per_engine_hour,
        spot_saving_usd=cost.spot_saving_usd,
        model=cost.model,
    )


def job_results_body(
    b: Batch,
    *,
    results_url: str | None,
    errors_url: str | None,
    retention_days: float,
    manifest: Manifest | None,
) -> JobResults:
    """``GET /v1/jobs/{id}/results``: where the files are, until when, and what the job did."""
    counts = b.request_counts or {}
    finished = b.completed_at or b.cancelled_at or b.expired_at
    shards = [s.model_dump() for s in manifest.shards] if manifest is not None else []
    latency = mean_request_latency(shards)
    return JobResults(
        job_id=b.id,
        status=b.status,
        results_url=results_url,
        errors_url=errors_url,
        expires_at=iso(finished + timedelta(days=retention_days)) if finished else None,
        stats=JobStats(
            total=counts.get("total", 0),
            successful=counts.get("completed", 0),
            failed=counts.get("failed", 0),
            avg_latency_s=None if latency is None else round(latency, 4),
            usage=b.usage,
            cost=_job_cost(BatchCost.model_validate(b.cost) if b.cost else None),
        ),
    )
