"""validate-input: check every line, stage the valid requests, decide the batch version."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from prefect import get_run_logger, task
from pydantic import BaseModel

from nightshift.core import validation
from nightshift.core.artifacts import FileRecord, ResultRow, compute_version, encode_rows
from nightshift.core.catalogue import Catalogue
from nightshift.core.errors import BatchFileError, InputSchemaError
from nightshift.core.jsonl import iter_lines
from nightshift.core.protocol import BatchError, Endpoint
from nightshift.settings import EngineConfig, LimitsConfig, StorageConfig
from nightshift.storage import ArtifactStore
from nightshift.storage.io import INPUT_CHUNK, input_size, read_chunks
from nightshift.storage.merge import AtomicWriter


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
    catalogue: Catalogue | None = None,
) -> ValidatedBatch:
    """Check every line of the batch file; stage valid requests and error rows under its version.

    ``served_model`` is the batch's model id; with ``catalogue``, a line naming an id outside it is
    ``model_not_found`` and one naming another of its models ``model_mismatch``.
    """
    from nightshift.engine.tokens import build_token_counter

    batch = stage_input(
        input_uri,
        batch_id,
        endpoint,
        model_sha256=model_sha256,
        engine=engine,
        limits=limits,
        storage=storage,
        count_tokens=build_token_counter(model_path),
        served_model=served_model,
        catalogue=catalogue,
    )
    get_run_logger().info(
        "%s: %d lines, %d valid, %d invalid → version %s%s",
        input_uri,
        batch.total_lines,
        batch.valid_lines,
        batch.invalid_lines,
        batch.version,
        " (already published)" if batch.published else "",
    )
    return batch


def stage_input(
    input_uri: str,
    batch_id: str,
    endpoint: Endpoint | None,
    *,
    model_sha256: str,
    engine: EngineConfig,
    limits: LimitsConfig,
    storage: StorageConfig,
    count_tokens: validation.TokenCounter | None,
    served_model: str | None = None,
    catalogue: Catalogue | None = None,
) -> ValidatedBatch:
    """``validate_input`` without the task: two streaming passes over the file, in bounded memory.

    The first counts the lines, hashes the bytes and finds the endpoint and model, so the version
    (whose folder the staged files go to) is known before any row is written; the second validates
    ``limits.validate_window`` lines at a time and streams the input copy, the valid requests and
    the error rows through ``AtomicWriter``s: each staged file is whole, or (on any failure) absent.
    The size limit is checked before the file is read, the line limit while it is.
    """
    store = ArtifactStore.from_config(storage)
    options = storage.storage_options(input_uri)
    size = input_size(input_uri, retry_seconds=storage.retry_seconds, **options)
    if size > limits.max_bytes:
        raise BatchFileError.too_large(input_uri, size, limits.max_bytes)
    first = _Pass(input_uri, limits.max_bytes, storage.retry_seconds, options)
    survey = validation.survey_lines(
        iter_lines(first), uri=input_uri, max_lines=limits.max_lines, endpoint=endpoint, catalogue=catalogue
    )
    input_sha = first.sha.hexdigest()
    version = compute_version(
        input_sha256=input_sha, model_sha256=model_sha256, engine_params=engine.output_params(), endpoint=survey.endpoint
    )
    paths = store.batch(batch_id, version)
    published = store.exists(paths.manifest)
    # Staged under the version, so an interrupted run of the same batch finds them again.
    staged = [] if published else [paths.valid, paths.invalid] + ([] if store.exists(paths.input) else [paths.input])
    writers: dict[str, AtomicWriter] = {}
    counts = dict.fromkeys(("total", "valid", "invalid"), 0)
    try:
        for path in staged:
            writers[path] = AtomicWriter(store, path)
        second = _Pass(input_uri, limits.max_bytes, storage.retry_seconds, options, copy=writers.get(paths.input))
        windows = validation.validate_windows(
            iter_lines(second),
            survey=survey,
            window=limits.validate_window,
            max_model_len=engine.max_model_len,
            count_tokens=count_tokens,
            served_model=served_model,
            catalogue=catalogue,
        )
        for result in windows:
            for name, count in result.counts.items():
                counts[name] += count
            if writers:
                writers[paths.valid].write(encode_rows(result.valid))
                writers[paths.invalid].write(encode_rows(_error_row(e) for e in result.errors))
        if second.sha.hexdigest() != input_sha:
            raise BatchFileError("the file changed while it was validated; submit it again once it is complete", uri=input_uri)
        for writer in writers.values():
            writer.commit()
    except BaseException:
        for writer in writers.values():
            writer.abort()
        raise
    return ValidatedBatch(
        batch_id=batch_id,
        version=version,
        endpoint=survey.endpoint,
        input=FileRecord(path=store.uri(paths.input), sha256=input_sha, bytes=first.bytes, lines=counts["total"]),
        valid_path=paths.valid,
        invalid_path=paths.invalid,
        total_lines=counts["total"],
        valid_lines=counts["valid"],
        invalid_lines=counts["invalid"],
        published=published,
    )


class _Pass:
    """One read of the input from its start, in chunks: hashed and counted on the way, and copied
    to ``copy`` when given. The size limit holds even if the file grew since its size was asked."""

    def __init__(
        self, uri: str, max_bytes: int, retry_seconds: float, options: dict[str, object], *, copy: AtomicWriter | None = None
    ) -> None:
        self.uri, self.max_bytes, self.retry_seconds, self.options, self.copy = uri, max_bytes, retry_seconds, options, copy
        self.sha = hashlib.sha256()
        self.bytes = 0

    def __iter__(self) -> Iterator[bytes]:
        for chunk in read_chunks(self.uri, chunk_size=INPUT_CHUNK, retry_seconds=self.retry_seconds, **self.options):
            self.bytes += len(chunk)
            if self.bytes > self.max_bytes:
                raise BatchFileError.too_large(self.uri, self.bytes, self.max_bytes)
            self.sha.update(chunk)
            if self.copy is not None:
                self.copy.write(chunk)
            yield chunk


def _error_row(error: InputSchemaError) -> ResultRow:
    return ResultRow(
        line=error.line,
        custom_id=error.custom_id,
        error=BatchError(code=error.code, message=error.message, param=error.param, line=error.line),
    )
