"""plan-shards: answer what the request cache can, cut the rest into deterministic shard files."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prefect import get_run_logger, task
from pydantic import BaseModel

from nightshift.core.artifacts import ResultRow, encode_rows
from nightshift.core.cache import is_cacheable, request_key
from nightshift.core.protocol import ValidRequest
from nightshift.core.sharding import ShardSpec, plan_shards, prefix_order
from nightshift.settings import StorageConfig
from nightshift.storage import ArtifactStore
from nightshift.storage.cache import ResultCache
from nightshift.storage.merge import AtomicWriter


class ShardPlan(BaseModel):
    """The shards the engine must compute, and what the cache answered instead."""

    shards: list[ShardSpec]
    cached_path: str
    cacheable: int
    cache_hits: int


@task(name="plan-shards", retries=2, retry_delay_seconds=2)
def plan_shards_task(
    storage: StorageConfig,
    batch_id: str,
    version: str,
    valid_path: str,
    shard_size: int,
    model_sha256: str,
    engine_params: dict[str, Any],
    use_cache: bool = True,
) -> ShardPlan:
    """Look up every cacheable request, write cache hits and shard files, and fix the plan.

    The valid requests are read a window at a time (``storage.order_window``), so planning holds
    one window, not the batch; within a window, requests sharing a prompt prefix go to the same
    shards (``storage.shard_order``). The plan is written once per version: a resumed run reuses
    it even if the cache has gained entries since, so shard names always mean the same requests.
    """
    log = get_run_logger()
    store = ArtifactStore.from_config(storage)
    paths = store.batch(batch_id, version)
    if store.exists(paths.plan):
        plan = ShardPlan.model_validate_json(store.read_bytes(paths.plan))
        log.info("reusing the shard plan of an earlier run: %d shards", len(plan.shards))
        return plan

    cache = ResultCache(store)
    specs: list[ShardSpec] = []
    total = cacheable = hits = 0
    with AtomicWriter(store, paths.cached) as cached:  # cache hits stream out window by window
        for window in _windows(store, valid_path, storage.order_window):
            total += len(window)
            for r in window:
                if is_cacheable(r.url, r.body):
                    r.cache_key = request_key(model_sha256=model_sha256, engine_params=engine_params, endpoint=r.url, body=r.body)
            keys = [r.cache_key for r in window if r.cache_key]
            cacheable += len(keys)
            found = cache.lookup(keys) if use_cache and keys else {}
            cached_rows = [
                ResultRow(line=r.line, custom_id=r.custom_id, body=hit.body, usage=hit.usage, cached=True)
                for r in window
                if r.cache_key is not None and (hit := found.get(r.cache_key)) is not None
            ]
            hits += len(cached_rows)
            cached.write(encode_rows(cached_rows))
            misses = [r for r in window if r.cache_key not in found]
            if storage.shard_order == "prefix":
                misses = prefix_order(misses)
            for spec, shard_bytes in plan_shards(misses, shard_size, first_index=len(specs)):
                store.write_bytes(paths.shard_requests(spec.name), shard_bytes)
                specs.append(spec)
    plan = ShardPlan(shards=specs, cached_path=paths.cached, cacheable=cacheable, cache_hits=hits)
    store.write_bytes(paths.plan, plan.model_dump_json(indent=2).encode())
    log.info(
        "%d requests: %d answered from the cache, %d in %d shards of at most %d (%s order)",
        total,
        hits,
        total - hits,
        len(specs),
        shard_size,
        storage.shard_order,
    )
    return plan


def _windows(store: ArtifactStore, valid_path: str, size: int) -> Iterator[list[ValidRequest]]:
    """The valid requests file, ``size`` requests at a time, read as a stream."""
    window: list[ValidRequest] = []
    with store.fs.open(valid_path, "rb") as f:
        for line in f:
            if line.strip():
                window.append(ValidRequest.model_validate_json(line))
                if len(window) == size:
                    yield window
                    window = []
    if window:
        yield window
