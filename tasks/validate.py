"""validate-input: check every line, stage the valid requests, decide the batch version."""

from __future__ import annotations

from prefect import get_run_logger, task
from pydantic import BaseModel

from nightshift.core import validation
from nightshift.core.artifacts import FileRecord, ResultRow, compute_version, encode_rows
from nightshift.core.hashing import sha256_bytes
from nightshift.core.protocol import BatchError, Endpoint
from nightshift.settings import EngineConfig, LimitsConfig, StorageConfig
from nightshift.storage import ArtifactStore
from nightshift.storage.io import read_uri


class ValidatedBatch(BaseModel):
    """Handle to a validated batch: where its staged files are and what they hold."""

    batch_id: str
    version: str
    endpoint: Endpoint | None
    input: FileRecord
    valid_path: str
    invalid_path: str
    total_lines: int
    valid_lines: int
    invalid_lines: int
    published: bool


@task(name="validate-input", retries=2, retry_delay_seconds=2)
def validate_input(
    input_uri: str,
    batch_id: str,
    endpoint: Endpoint | None,
    model_path: str,
    model_sha256: str,
    engine: EngineConfig,
    limits: LimitsConfig,
    storage: StorageConfig,
    served_model: str | None = None,
) -> ValidatedBatch:
    """Check every line of the batch file; stage valid requests and error rows under its version."""
    store = ArtifactStore.from_config(storage)
    from nightshift.engine.tokens import build_token_counter

    data = read_uri(input_uri, **storage.storage_options(input_uri))
    lines = validation.read_lines(data, uri=input_uri, max_lines=limits.max_lines, max_bytes=limits.max_bytes)
    result = validation.validate_lines(
        lines,
        uri=input_uri,
        endpoint=endpoint,
        max_model_len=engine.max_model_len,
        count_tokens=build_token_counter(model_path),
        served_model=served_model,
    )
    input_sha = sha256_bytes(data)
    version = compute_version(
        input_sha256=input_sha, model_sha256=model_sha256, engine_params=engine.output_params(), endpoint=result.endpoint
    )
    paths = store.batch(batch_id, version)
    published = store.exists(paths.manifest)
    if not published:
        # Staged under the version, so an interrupted run of the same batch finds them again.
        if not store.exists(paths.input):
            store.write_bytes(paths.input, data)
        store.write_bytes(paths.valid, encode_rows(result.valid))
        store.write_bytes(
            paths.invalid,
            encode_rows(
                ResultRow(
                    line=e.line,
                    custom_id=e.custom_id,
                    error=BatchError(code=e.code, message=e.message, param=e.param, line=e.line),
                )
                for e in result.errors
            ),
        )
    counts = result.counts
    get_run_logger().info(
        "%s: %d lines, %d valid, %d invalid → version %s%s",
        input_uri,
        counts["total"],
        counts["valid"],
        counts["invalid"],
        version,
        " (already published)" if published else "",
    )
    return ValidatedBatch(
        batch_id=batch_id,
        version=version,
        endpoint=result.endpoint,
        input=FileRecord(path=store.uri(paths.input), sha256=input_sha, bytes=len(data), lines=counts["total"]),
        valid_path=paths.valid,
        invalid_path=paths.invalid,
        total_lines=counts["total"],
        valid_lines=counts["valid"],
        invalid_lines=counts["invalid"],
        published=published,
    )
