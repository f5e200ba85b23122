"""Batch versions, shard results and the manifest: what a published batch is made of.

A batch *version* is the hash of everything that decides its output: the input bytes, the
model's weights and tokenizer, the output-affecting engine settings and the endpoint. Same
version → same results, so a finished version is reused and a half-finished one is resumed.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from nightshift.core.cost import BatchCost
from nightshift.core.estimate import BatchEstimate
from nightshift.core.hashing import sha256_bytes, sha256_json
from nightshift.core.lineage import Lineage
from nightshift.core.progress import Progress
from nightshift.core.protocol import BatchError, BatchRequestOutput, BatchResponse, Endpoint, Usage, ValidRequest

MANIFEST_SCHEMA: Literal["nightshift.manifest/v1"] = "nightshift.manifest/v1"


def compute_version(*, input_sha256: str, model_sha256: str, engine_params: dict[str, Any], endpoint: Endpoint | None) -> str:
    """The version id of a batch: 16 hex chars of the SHA-256 of what decides its output."""
    return sha256_json(
        {
            "input": input_sha256,
            "model": model_sha256,
            "engine": engine_params,
            "endpoint": endpoint.value if endpoint else None,
        }
    )[:16]


class ResultRow(BaseModel):
    """One request's result as a shard stores it, before ids are assigned at publish."""

    line: int = Field(ge=1)
    custom_id: str | None
    body: dict[str, Any] | None = None
    error: BatchError | None = None
    usage: Usage = Field(default_factory=Usage)
    cache_key: str | None = Field(default=None, description="Content key when the request is cacheable.")
    cached: bool = Field(default=False, description="Answered from the request cache, not the engine.")
    prefix_cached_tokens: int = Field(
        default=0, ge=0, description="Prompt tokens the engine's prefix cache served instead of computing them."
    )


def encode_rows(rows: Iterable[BaseModel]) -> bytes:
    """JSONL bytes of pydantic rows."""
    return b"".join(r.model_dump_json().encode() + b"\n" for r in rows)


def decode_results(data: bytes) -> list[ResultRow]:
    """Read a shard result file."""
    return [ResultRow.model_validate_json(line) for line in data.splitlines() if line.strip()]


def to_output_line(row: ResultRow, *, version: str) -> BatchRequestOutput:
    """The OpenAI output/error line of a result, with ids stable for a given version and line."""
    key = sha256_bytes(f"{version}:{row.line}".encode())
    if row.error is not None or row.body is None:
        error = row.error or BatchError(code="internal_error", message="no response was produced", line=row.line)
        return BatchRequestOutput(id=f"batch_req_{key[:32]}", custom_id=row.custom_id, response=None, error=error)
    return BatchRequestOutput(
        id=f"batch_req_{key[:32]}",
        custom_id=row.custom_id,
        response=BatchResponse(status_code=200, request_id=f"req_{key[32:64]}", body=row.body),
        error=None,
    )


def total_usage(rows: Iterable[ResultRow]) -> Usage:
    """Sum of the token usage of ``rows``."""
    usage = Usage()
    for r in rows:
        usage.prompt_tokens += r.usage.prompt_tokens
        usage.completion_tokens += r.usage.completion_tokens
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens
    return usage


class FileRecord(BaseModel):
    """A file of the batch: where it is, its SHA-256, bytes and lines."""

    path: str
    sha256: str
    bytes: int
    lines: int | None = None


class WorkerRecord(BaseModel):
    """Where a shard ran: the Ray node, host and process of the engine replica that computed it."""

    node_id: str = Field(description="Ray node id (hex) of the node the engine actor ran on.")
    hostname: str | None = Field(default=None, description="Host name of that node.")
    pid: int | None = Field(default=None, description="Process id of the engine actor.")
    actor: str | None = Field(default=None, description="Name of the engine actor (engine-<spec hash>-<replica>).")
    engine: str | None = Field(default=None, description="Implementation the replica runs: vllm or transformers.")
    fallback_reason: str | None = Field(default=None, description="Why 'auto' chose transformers on this replica.")
    nightshift_version: str | None = Field(
        default=None,
        description="nightshift version the replica ran ('<version>+<code hash>' when the driver shipped its code).",
    )


class ShardRecord(BaseModel):
    """One shard in the manifest: its input and result files and how it was obtained."""

    name: str
    index: int
    num_requests: int
    input: FileRecord
    results: FileRecord | None = None
    seconds: float | None = Field(default=None, description="Engine time for this shard in this run.")
    reused: bool = Field(default=False, description="Found finished on disk (an earlier, interrupted run).")
    worker: WorkerRecord | None = Field(
        default=None, description="Engine replica that computed it in this run (None: reused, or an engine without actors)."
    )


class CacheStats(BaseModel):
    """How much of the batch the request cache answered."""

    cacheable: int = Field(description="Valid requests that are deterministic, so cacheable.")
    hits: int = Field(description="Requests answered from the cache; they never reached the engine.")


class PrefixCacheStats(BaseModel):
    """How much of the prompts the engine computed its prefix cache served (this run's shards)."""

    prompt_tokens: int = Field(ge=0, description="Prompt tokens of the requests the engine answered in this run.")
    cached_tokens: int = Field(ge=0, description="Of those, tokens served from the prefix cache instead of computed.")

    @property
    def hit_rate(self) -> float:
        """Share of prompt tokens the prefix cache served (0 when nothing ran)."""
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0


class RequestCounts(BaseModel):
    """OpenAI's request_counts: every input line is in exactly one of completed/failed."""

    total: int
    completed: int
    failed: int


class ModelRecord(BaseModel):
    name: str = Field(description="Model id written in responses.")
    source: str = Field(description="Where the weights were loaded from.")
    sha256: str = Field(description="Hash over the model folder (weights, config, tokenizer).")


class Manifest(BaseModel):
    """Everything about one published batch version; written last, so its presence means done."""

    schema_: Literal["nightshift.manifest/v1"] = Field(default=MANIFEST_SCHEMA, alias="schema")
    batch_id: str
    version: str
    lineage: Lineage | None = Field(default=None, description="The version this one re-runs or retries.")
    endpoint: Endpoint | None
    status: Literal["completed"] = "completed"
    created_at: datetime
    completed_at: datetime
    input: FileRecord
    model: ModelRecord
    engine: dict[str, Any] = Field(description="Engine backend and parameters of this run.")
    engine_params_in_version: dict[str, Any]
    shards: list[ShardRecord]
    output_file: FileRecord
    error_file: FileRecord
    request_counts: RequestCounts
    cache: CacheStats = Field(default_factory=lambda: CacheStats(cacheable=0, hits=0))
    usage: Usage
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per stage of the run that computed it.")
    prefix_cache: PrefixCacheStats | None = Field(
        default=None, description="Prefix-cache hits of the requests this run sent to the engine (None: none sent)."
    )
    progress: Progress | None = Field(
        default=None, description="The SLA watch's last snapshot of the run that computed it (rates, ETA, risk, warnings)."
    )
    estimate: BatchEstimate | None = Field(
        default=None, description="The forecast made before the run (at submit, else at the run's start), from core.estimate."
    )
    cost: BatchCost | None = Field(
        default=None, description="What the run that computed it cost: its engine-seconds on its pool (core.cost)."
    )

    model_config = {"populate_by_name": True}

    def to_json(self) -> bytes:
        """Pretty JSON bytes, with the ``schema`` key as written on disk."""
        return self.model_dump_json(by_alias=True, indent=2).encode()


def unanswered_rows(valid: Iterable[ValidRequest], answered: Iterable[ResultRow], *, code: str, message: str) -> list[ResultRow]:
    """Error rows for the valid requests that have no result yet (a cancelled or expired batch
    still accounts for every line: finished ones in the output file, the rest as errors)."""
    done = {r.line for r in answered}
    return [
        ResultRow(line=v.line, custom_id=v.custom_id, error=BatchError(code=code, message=message, line=v.line))
        for v in valid
        if v.line not in done
    ]
