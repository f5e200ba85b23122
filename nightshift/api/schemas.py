"""Request and response bodies of the gateway, shaped like the ``openai`` SDK's types
(``openai.types.FileObject``, ``openai.types.Batch``...) so an unchanged client parses them;
nightshift's own fields sit under ``nightshift``. Routes declare these as ``response_model``s,
which also makes the OpenAPI document the reference of the HTTP API."""

from __future__ import annotations

from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from nightshift.core.cost import BatchCost
from nightshift.core.estimate import BatchEstimate
from nightshift.core.retention import ExpiresAfter

T = TypeVar("T")


class ErrorDetail(BaseModel):
    """OpenAI's error: the client raises its typed errors from ``type`` and the status code."""

    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    """OpenAI's error envelope."""

    error: ErrorDetail


# -- files ------------------------------------------------------------------------------------
class FileObject(BaseModel):
    """``openai.types.FileObject``."""

    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str
    expires_at: int | None = Field(default=None, description="Unix seconds when the file expires and is deleted.")


class FileDeleted(BaseModel):
    """``openai.types.FileDeleted``."""

    id: str
    object: Literal["file"] = "file"
    deleted: bool


class ListPage(BaseModel, Generic[T]):
    """OpenAI's cursor page: ``data`` plus the ids to pass as ``after`` and whether more follow."""

    object: Literal["list"] = "list"
    data: list[T]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


# -- models -----------------------------------------------------------------------------------
class ModelObject(BaseModel):
    """``openai.types.Model``, with vLLM's ``root`` and ``parent``: a LoRA adapter is a model of its
    own whose ``parent`` is the base model it runs on (ids only: never where weights are)."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="Unix seconds: when the gateway loaded the catalogue.")
    owned_by: str = "nightshift"
    root: str = Field(description="The base model's id (the model's own id for a base model).")
    parent: str | None = Field(default=None, description="For an adapter, the base model it runs on; null for a base model.")


class ModelList(BaseModel):
    """``GET /v1/models``: every model id a batch line's ``body.model`` may name."""

    object: Literal["list"] = "list"
    data: list[ModelObject]


# -- batches ----------------------------------------------------------------------------------
class BatchCreate(BaseModel):
    """``POST /v1/batches`` body, as the OpenAI client sends it."""

    model_config = ConfigDict(extra="forbid")

    input_file_id: str = Field(max_length=64)
    endpoint: str = Field(max_length=64)
    completion_window: str = Field(default="24h", max_length=16)
    metadata: dict[str, str] | None = Field(default=None, description="At most 16 pairs; keys ≤ 64, values ≤ 512 characters.")
    output_expires_after: ExpiresAfter | None = Field(
        default=None, description="When the batch's output and error files expire, counted from their creation."
    )


class BatchError(BaseModel):
    """One entry of a batch's ``errors.data``."""

    code: str | None = None
    message: str | None = None
    param: str | None = None
    line: int | None = None


class BatchErrors(BaseModel):
    """``errors`` of a batch."""

    object: Literal["list"] = "list"
    data: list[BatchError]


class RequestCounts(BaseModel):
    """``request_counts`` of a batch."""

    total: int = 0
    completed: int = 0
    failed: int = 0


class BatchUsage(BaseModel):
    """``usage`` of a batch (tokens over every request)."""

    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: dict[str, int] = Field(default_factory=lambda: {"cached_tokens": 0})
    output_tokens_details: dict[str, int] = Field(default_factory=lambda: {"reasoning_tokens": 0})


class BatchPlacement(BaseModel):
    """nightshift's view of a batch: tier, pool, deadline, version, the live SLA forecast, and the
    estimate it was placed on beside what it cost once published."""

    tier: str
    pool: str | None = None
    deadline: int | None = None
    version: str | None = None
    flow_run_id: str | None = None
    placement: dict[str, Any] | None = None
    eta_seconds: float | None = None
    slack_seconds: float | None = None
    risk: str | None = None
    estimate: BatchEstimate | None = Field(default=None, description="The forecast made when the batch was placed.")
    cost: BatchCost | None = Field(
        default=None, description="Engine-seconds, pool and cost (engine-hours × the pool's price), once published."
    )


class BatchEstimateObject(BaseModel):
    """``POST /v1/batches/estimate``: what the batch would take and cost; nothing is started."""

    object: Literal["batch.estimate"] = "batch.estimate"
    input_file_id: str
    endpoint: str
    completion_window: str
    deadline: int = Field(description="Unix seconds: the deadline the batch would get if created now.")
    estimate: BatchEstimate


class BatchObject(BaseModel):
    """``openai.types.Batch``."""

    id: str
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None = None
    input_file_id: str
    completion_window: str
    status: str
    output_file_id: str | None = None
    error_file_id: str | None = None
    created_at: int
    in_progress_at: int | None = None
    expires_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    request_counts: RequestCounts
    metadata: dict[str, str] | None = None
    usage: BatchUsage | None = None
    nightshift: BatchPlacement


# -- jobs (the native API over the same rows) ------------------------------------------------
class JobCreated(BaseModel):
    """``POST /v1/jobs`` response."""

    job_id: str
    object: Literal["job"] = "job"
    status: str
    created_at: str
    deadline_at: str | None
    estimated_completion: str | None
    priority: str
    pool: str | None
    errors: list[BatchError] | None = None


class JobProgress(BaseModel):
    """How far a job got."""

    completed: int
    failed: int
    total: int
    percent: float


class JobThroughput(BaseModel):
    """Rates while running (the SLA watch's window); over the whole run once finished."""

    req_per_sec: float | None = None
    tokens_per_sec: float | None = None
    estimated_remaining: float | None = None


class JobSla(BaseModel):
    """The job's tier, deadline and the live risk."""

    tier: str
    deadline_at: str | None
    risk: str | None = None


class JobStatus(BaseModel):
    """``GET /v1/jobs/{id}``."""

    job_id: str
    object: Literal["job"] = "job"
    status: str
    created_at: str
    progress: JobProgress
    throughput: JobThroughput
    sla: JobSla
    pool: str | None
    version: str | None
    priority: str
    metadata: dict[str, str] | None = None
    errors: list[BatchError] | None = None


class JobCost(BaseModel):
    """What the job cost: its engine-seconds on its capacity, at that capacity's engine-hour price."""

    usd: float | None = Field(default=None, description="engine_seconds / 3600 × price_per_engine_hour (None: not run).")
    capacity: str | None = Field(default=None, description="spot or dedicated.")
    engine_seconds: float | None = None
    price_per_engine_hour: float | None = None
    spot_saving_usd: float | None = Field(default=None, description="What the same engine time costs on dedicated, minus usd.")
    model: str | None = Field(default=None, description="The catalogue model whose price applies.")


class JobStats(BaseModel):
    """What a finished job did."""

    total: int
    successful: int
    failed: int
    avg_latency_s: float | None
    usage: dict[str, int] | None
    cost: JobCost


class JobResults(BaseModel):
    """``GET /v1/jobs/{id}/results``: where the files are, until when, and what the job did."""

    job_id: str
    object: Literal["job.results"] = "job.results"
    status: str
    results_url: str | None
    errors_url: str | None
    expires_at: str | None
    stats: JobStats


class Health(BaseModel):
    """``GET /health``: each dependency's state, named without server details."""

    status: Literal["ok", "degraded"]
    checks: dict[str, str]
