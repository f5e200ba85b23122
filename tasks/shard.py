"""shard-requests: cut the valid requests into deterministic shard files."""

from __future__ import annotations

from prefect import get_run_logger, task

from nightshift.core.protocol import ValidRequest
from nightshift.core.sharding import ShardSpec, plan_shards
from nightshift.storage import ArtifactStore


@task(name="shard-requests", retries=2, retry_delay_seconds=2)
def shard_requests(store_url: str, batch_id: str, version: str, valid_path: str, shard_size: int) -> list[ShardSpec]:
    """Write one requests file per shard (skipping ones already written) and return their specs."""
    store = ArtifactStore(store_url)
    paths = store.batch(batch_id, version)
    data = store.read_bytes(valid_path)
    requests = [ValidRequest.model_validate_json(line) for line in data.splitlines() if line.strip()]
    specs = []
    for spec, shard_bytes in plan_shards(requests, shard_size):
        path = paths.shard_requests(spec.name)
        if not store.exists(path):
            store.write_bytes(path, shard_bytes)
        specs.append(spec)
    get_run_logger().info("%d requests in %d shards of at most %d", len(requests), len(specs), shard_size)
    return specs
