"""Throughput measured by finished batches, per model and pool, kept in the store beside the batches.

Each model has its own log on each pool (a 7B model is not as fast as a 135M one on the same
GPUs), so placement and ETAs use the batch's own model's speed; a model with no history on a pool
falls back to the settings' default.

Two runs finishing on the same pool at the same moment may each write their own sample and one
of them wins; a lost sample only makes the estimate a little staler, so no lock is taken.
"""

from __future__ import annotations

from nightshift.core.placement import PoolThroughput, ThroughputSample
from nightshift.storage.store import ArtifactStore


def read_throughput(store: ArtifactStore, pool: str, model: str) -> PoolThroughput:
    """``model``'s throughput log on ``pool`` (empty before its first measured batch there)."""
    path = store.pool_throughput(pool, model)
    if not store.exists(path):
        return PoolThroughput(pool=pool)
    return PoolThroughput.model_validate_json(store.read_bytes(path))


def record_throughput(store: ArtifactStore, pool: str, model: str, sample: ThroughputSample) -> PoolThroughput:
    """Add one finished batch's measurement to ``model``'s log on ``pool`` and return the new log."""
    log = read_throughput(store, pool, model).record(sample)
    store.write_bytes(store.pool_throughput(pool, model), log.model_dump_json(indent=2).encode())
    return log
