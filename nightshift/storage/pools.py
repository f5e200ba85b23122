"""Per-pool throughput measured by finished batches, kept in the store beside the batches.

Two runs finishing on the same pool at the same moment may each write their own sample and one
of them wins; a lost sample only makes the estimate a little staler, so no lock is taken.
"""

from __future__ import annotations

from nightshift.core.placement import PoolThroughput, ThroughputSample
from nightshift.storage.store import ArtifactStore


def read_throughput(store: ArtifactStore, pool: str) -> PoolThroughput:
    """The pool's throughput log (empty before its first measured batch)."""
    path = store.pool_throughput(pool)
    if not store.exists(path):
        return PoolThroughput(pool=pool)
    return PoolThroughput.model_validate_json(store.read_bytes(path))


def record_throughput(store: ArtifactStore, pool: str, sample: ThroughputSample) -> PoolThroughput:
    """Add one finished batch's measurement to the pool's log and return the new log."""
    log = read_throughput(store, pool).record(sample)
    store.write_bytes(store.pool_throughput(pool), log.model_dump_json(indent=2).encode())
    return log
