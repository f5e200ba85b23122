"""publish-results: OpenAI output and error files in input order, then the manifest, last.

Nothing here holds the batch: rows stream from the shard files through ``merge_results`` into
the output and error files, one shard is in memory at a time, and the cache entries of this run
wait in a local spill file until the manifest is written.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any

from prefect import get_run_logger, task
from pydantic import BaseModel, Field

from nightshift.core.artifacts import CacheStats, FileRecord, Manifest, ModelRecord, ShardRecord, decode_results
from nightshift.core.cache import CacheEntry
from nightshift.core.cost import BatchCost
from nightshift.core.estimate import BatchEstimate
from nightshift.core.hashing import sha256_bytes
from nightshift.core.lineage import Lineage
from nightshift.core.progress import Progress
from nightshift.core.sharding import ShardSpec
from nightshift.engine.runner import ShardOutcome
from nightshift.settings import StorageConfig
from nightshift.storage import ArtifactStore, BatchPaths
from nightshift.storage.cache import ResultCache
from nightshift.storage.merge import merge_results, stored_lines
from tasks.infer import InferenceReport
from tasks.shard import ShardPlan
from tasks.validate import ValidatedBatch


class PublishRequest(BaseModel):
    """Everything publish-results needs: the run's handles and what the manifest says about it."""

    storage: StorageConfig
    batch: ValidatedBatch
    plan: ShardPlan
    inference: InferenceReport
    model: ModelRecord
    engine: dict[str, Any] = Field(description="Engine settings, and the engine that actually ran.")
    engine_params_in_version: dict[str, Any] = Field(description="The output-affecting engine settings hashed into the version.")
    created_at: datetime
    timings: dict[str, float] = Field(default_factory=dict, description="Seconds per stage of this run.")
    lineage: Lineage | None = Field(default=None, description="The version this one re-runs or retries (None: work it out).")
    progress: Progress | None = Field(default=None, description="The SLA watch's last snapshot of this run.")
    estimate: BatchEstimate | None = Field(default=None, description="The forecast made before the run.")
    cost: BatchCost | None = Field(default=None, description="This run's engine-seconds and what they cost.")


def _record(store: ArtifactStore, path: str, data: bytes) -> FileRecord:
    return FileRecord(path=store.uri(path), sha256=sha256_bytes(data), bytes=len(data), lines=data.count(b"\n"))


class _Shards:
    """The shards' rows as merge sources, one shard file in memory at a time; on the way it
    notes each shard's manifest record and spills this run's cache entries."""

    def __init__(self, store: ArtifactStore, request: PublishRequest, paths: BatchPaths, entries: IO[bytes]) -> None:
        self.store, self.request, self.paths, self.entries = store, request, paths, entries
        self.records: list[ShardRecord] = []
        self.now = datetime.now(UTC)

    def rows(self, spec: ShardSpec, outcome: ShardOutcome) -> Iterator[bytes]:
        """The encoded rows of one shard (a generator: the file is read when the merge gets to it)."""
        batch, inference, store = self.request.batch, self.request.inference, self.store
        data = store.read_bytes(outcome.results_path)
        for r in decode_results(data):
            if r.cache_key and r.error is None and r.body is not None:
                entry = CacheEntry(
                    key=r.cache_key,
                    batch_id=batch.batch_id,
                    version=batch.version,
                    results_path=outcome.results_path,
                    line=r.line,
                    created_at=self.now,
                )
                self.entries.write(entry.model_dump_json().encode() + b"\n")
        req_path = self.paths.shard_requests(spec.name)
        self.records.append(
            ShardRecord(
                name=spec.name,
                index=spec.index,
                num_requests=spec.num_requests,
                input=FileRecord(path=store.uri(req_path), sha256=spec.sha256, bytes=spec.bytes, lines=spec.num_requests),
                results=_record(store, outcome.results_path, data),
                seconds=None if spec.name in inference.reused_shards else outcome.seconds,
                reused=spec.name in inference.reused_shards,
                worker=outcome.worker,  # None for a reused shard: its outcome was read back from disk
            )
        )
        yield from data.splitlines()


def _spilled_entries(entries: IO[bytes]) -> Iterator[CacheEntry]:
    entries.seek(0)
    for raw in entries:
        yield CacheEntry.model_validate_json(raw)


@task(name="publish-results", retries=2, retry_delay_seconds=2)
def publish_results(request: PublishRequest) -> Manifest:
    """Merge validation errors, cache hits and shard results into the output/error files and the manifest."""
    batch, plan = request.batch, request.plan
    store = ArtifactStore.from_config(request.storage)
    paths = store.batch(batch.batch_id, batch.version)
    lineage = request.lineage
    if lineage is None:
        # A new version of a batch that was published before re-runs the latest of those.
        earlier = [m for m in store.published(batch.batch_id) if m.version != batch.version]
        if earlier:
            lineage = Lineage(parent_batch_id=batch.batch_id, parent_version=earlier[-1].version, relation="rerun")
    outcomes = {o.name: o for o in request.inference.outcomes}
    with tempfile.TemporaryFile(prefix="nightshift-cache-entries-") as entries:
        shards = _Shards(store, request, paths, entries)
        sources = [stored_lines(store, batch.invalid_path), stored_lines(store, plan.cached_path)]
        sources += [shards.rows(spec, outcomes[spec.name]) for spec in plan.shards]
        merged = merge_results(store, sources, version=batch.version, output_path=paths.output, errors_path=paths.errors)
        manifest = Manifest(
            batch_id=batch.batch_id,
            version=batch.version,
            lineage=lineage,
            endpoint=batch.endpoint,
            created_at=request.created_at,
            completed_at=datetime.now(UTC),
            input=batch.input,
            model=request.model,
            engine=request.engine,
            engine_params_in_version=request.engine_params_in_version,
            shards=shards.records,
            output_file=merged.output_file,
            error_file=merged.error_file,
            request_counts=merged.request_counts,
            cache=CacheStats(cacheable=plan.cacheable, hits=plan.cache_hits),
            usage=merged.usage,
            timings=request.timings,
            progress=request.progress,
            prefix_cache=request.inference.prefix_cache(),
            estimate=request.estimate,
            cost=request.cost,
        )
        store.write_bytes(paths.manifest, manifest.to_json())
        # Entries are written after the manifest: they point at results that are now published.
        ResultCache(store).record(_spilled_entries(entries))
    counts = merged.request_counts
    get_run_logger().info("published %s: %d ok, %d failed", paths.root, counts.completed, counts.failed)
    return manifest
