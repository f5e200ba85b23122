"""publish-results: OpenAI output and error files in input order, then the manifest, last."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger, task

from nightshift.core.artifacts import (
    CacheStats,
    FileRecord,
    Manifest,
    ModelRecord,
    RequestCounts,
    ShardRecord,
    decode_results,
    encode_rows,
    to_output_line,
    total_usage,
)
from nightshift.core.cache import CacheEntry
from nightshift.core.hashing import sha256_bytes
from nightshift.core.lineage import Lineage
from nightshift.core.progress import Progress
from nightshift.settings import StorageConfig
from nightshift.storage import ArtifactStore
from nightshift.storage.cache import ResultCache
from tasks.infer import InferenceReport
from tasks.shard import ShardPlan
from tasks.validate import ValidatedBatch


def _record(store: ArtifactStore, path: str, data: bytes) -> FileRecord:
    return FileRecord(path=store.uri(path), sha256=sha256_bytes(data), bytes=len(data), lines=data.count(b"\n"))


@task(name="publish-results", retries=2, retry_delay_seconds=2)
def publish_results(
    storage: StorageConfig,
    batch: ValidatedBatch,
    plan: ShardPlan,
    inference: InferenceReport,
    model: ModelRecord,
    engine: dict[str, Any],
    engine_params_in_version: dict[str, Any],
    created_at: datetime,
    timings: dict[str, float],
    lineage: Lineage | None = None,
    progress: Progress | None = None,
) -> Manifest:
    """Merge validation errors and shard results into the output/error files and the manifest."""
    store = ArtifactStore.from_config(storage)
    paths = store.batch(batch.batch_id, batch.version)
    if lineage is None:
        # A new version of a batch that was published before re-runs the latest of those.
        earlier = [m for m in store.published(batch.batch_id) if m.version != batch.version]
        if earlier:
            lineage = Lineage(parent_batch_id=batch.batch_id, parent_version=earlier[-1].version, relation="rerun")
    rows = decode_results(store.read_bytes(batch.invalid_path)) + decode_results(store.read_bytes(plan.cached_path))
    outcomes = {o.name: o for o in inference.outcomes}
    records, new_entries = [], []
    now = datetime.now(UTC)
    for spec in plan.shards:
        outcome = outcomes[spec.name]
        data = store.read_bytes(outcome.results_path)
        shard_rows = decode_results(data)
        rows.extend(shard_rows)
        new_entries += [
            CacheEntry(
                key=r.cache_key,
                batch_id=batch.batch_id,
                version=batch.version,
                results_path=outcome.results_path,
                line=r.line,
                created_at=now,
            )
            for r in shard_rows
            if r.cache_key and r.error is None and r.body is not None
        ]
        req_path = paths.shard_requests(spec.name)
        records.append(
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
    rows.sort(key=lambda r: r.line)
    lines = [to_output_line(r, version=batch.version) for r in rows]
    ok = [line for line in lines if line.ok]
    failed = [line for line in lines if not line.ok]
    out_bytes, err_bytes = encode_rows(ok), encode_rows(failed)
    store.write_bytes(paths.output, out_bytes)
    store.write_bytes(paths.errors, err_bytes)
    manifest = Manifest(
        batch_id=batch.batch_id,
        version=batch.version,
        lineage=lineage,
        endpoint=batch.endpoint,
        created_at=created_at,
        completed_at=datetime.now(UTC),
        input=batch.input,
        model=model,
        engine=engine,
        engine_params_in_version=engine_params_in_version,
        shards=records,
        output_file=_record(store, paths.output, out_bytes),
        error_file=_record(store, paths.errors, err_bytes),
        request_counts=RequestCounts(total=len(lines), completed=len(ok), failed=len(failed)),
        cache=CacheStats(cacheable=plan.cacheable, hits=plan.cache_hits),
        usage=total_usage(rows),
        timings=timings,
        progress=progress,
    )
    store.write_bytes(paths.manifest, manifest.to_json())
    # Entries are written after the manifest: they point at results that are now published.
    ResultCache(store).record(new_entries)
    get_run_logger().info("published %s: %d ok, %d failed", paths.root, len(ok), len(failed))
    return manifest
