"""check-sla: judge the finished batch against its tier's deadline."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import get_run_logger, task

from nightshift.core.artifacts import Manifest
from nightshift.core.placement import ThroughputSample
from nightshift.core.sla import SLAReport, Tier, sla_report
from nightshift.settings import SLAConfig, StorageConfig
from nightshift.storage import ArtifactStore
from nightshift.storage.pools import record_throughput


@task(name="check-sla")
def check_sla(
    storage: StorageConfig,
    manifest: Manifest,
    tier: Tier,
    submitted_at: datetime,
    engine_requests: int,
    engine_tokens: int,
    busy_seconds: float,
    sla: SLAConfig,
    pool: str | None = None,
    deadline: datetime | None = None,
    model: str | None = None,
) -> SLAReport:
    """Record whether the batch met its tier's deadline, the slack left and the throughput; the
    throughput also goes into ``model``'s log on ``pool``, which placement and estimates use for
    later batches of that model."""
    finished = datetime.now(UTC)
    report = sla_report(
        tier=tier,
        submitted_at=submitted_at,
        finished_at=finished,
        requests=engine_requests,
        tokens=engine_tokens,
        busy_seconds=busy_seconds,
        tier_hours=sla.hours(),
        deadline=deadline,
    )
    store = ArtifactStore.from_config(storage)
    store.write_bytes(store.batch(manifest.batch_id, manifest.version).sla, report.model_dump_json(indent=2).encode())
    if pool and model and engine_requests > 0 and busy_seconds > 0:
        record_throughput(store, pool, model, ThroughputSample(at=finished, requests=engine_requests, seconds=busy_seconds))
    get_run_logger().info(
        "SLA %s: %s with %.0fs slack (%.2f req/s)",
        tier.value,
        "met" if report.met else "BREACHED",
        report.slack_seconds,
        report.requests_per_second,
    )
    return report
