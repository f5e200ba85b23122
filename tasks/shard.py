"""plan-shards: answer what the request cache can, cut the rest into deterministic shard files."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from pydantic import BaseModel

from nightshift.core.artifacts import ResultRow, encode_rows
from nightshift.core.cache import is_cacheable, request_key
from nightshift.core.protocol import ValidRequest
from nightshift.core.sharding import ShardSpec, plan_shards
from nightshift.settings import StorageConfig
from nightshift.storage import ArtifactStore
from nightshift.storage.cache import ResultCache


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

    The plan is written once per version: a resumed run reuses it even if the cache has gained
    entries since, so shard names always mean the same requests.
    """
    log = get_run_logger()
    store = ArtifactStore.from_config(storage)
    paths = store.batch(batch_id, version)
    if store.exists(paths.plan):
        plan = ShardPlan.model_validate_json(store.read_bytes(paths.plan))
        log.info("reusing the shard plan of an earlier run: %d shards", len(plan.shards))
        return plan

    requests = [ValidRequest.model_validate_json(line) for line in store.read_bytes(valid_path).splitlines() if line.strip()]
    for r in requests:
        if is_cacheable(r.url, r.body):
            r.cache_key = request_key(model_sha256=model_sha256, engine_params=engine_params, endpoint=r.url, body=r.body)
    cacheable = [r for r in requests if r.cache_key]
    hits = ResultCache(store).lookup(r.cache_key for r in cacheable if r.cache_key) if use_cache else {}
    cached_rows = [
        ResultRow(line=r.line, custom_id=r.custom_id, body=hits[r.cache_key].body, usage=hits[r.cache_key].usage, cached=True)
        for r in requests
        if r.cache_key in hits
    ]
    misses = [r for r in requests if r.cache_key not in hits]
    store.write_bytes(paths.cached, encode_rows(cached_rows))
    specs = []
    for spec, shard_bytes in plan_shards(misses, shard_size):
        store.write_bytes(paths.shard_requests(spec.name), shard_bytes)
        specs.append(spec)
    plan = ShardPlan(shards=specs, cached_path=paths.cached, cacheable=len(cacheable), cache_hits=len(cached_rows))
    store.write_bytes(paths.plan, plan.model_dump_json(indent=2).encode())
    log.info(
        "%d requests: %d answered from the cache, %d in %d shards of at most %d",
        len(requests),
        len(cached_rows),
        len(misses),
        len(specs),
        shard_size,
    )
    return plan
