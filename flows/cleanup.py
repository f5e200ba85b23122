"""cleanup-batches: delete batch versions and request-cache entries past their retention.

Retention counts from a version's last write (see ``nightshift.core.retention``). Results stay
until then even when the request cache still points at them; a cache entry whose result is gone
is a miss on the next lookup, never an error, so versions and entries can go in any order.
The flow is I/O only, so it runs on Prefect's default task runner: no Ray cluster needed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from blocks.storage import resolve_storage
from nightshift.settings import Settings
from nightshift.storage import ArtifactStore
from tasks.cleanup import RetentionPlan, delete_expired, find_expired

#: Rows of the markdown artifact; the report and the logs still name every version.
_ARTIFACT_ROWS = 200


class CleanupParameters(BaseModel):
    """What to clean up. The Prefect UI renders this as the deployment's form."""

    max_age_hours: float | None = Field(
        default=None,
        ge=0,
        description="Delete what was last written this many hours ago or earlier; 0 means everything. "
        "Defaults to the storage retention (NIGHTSHIFT_STORAGE_RETENTION_DAYS, 7 days).",
    )
    dry_run: bool = Field(default=False, description="Only list what would be deleted.")


class CleanupReport(BaseModel):
    """What went (or, in a dry run, what would go) and what stays."""

    dry_run: bool
    flow_run_id: str | None = Field(default=None, description="The Prefect flow run that did the cleanup.")
    max_age_hours: float = Field(description="The retention this run applied.")
    deleted: list[str] = Field(description="URIs of the version folders deleted (dry run: that would be deleted).")
    cache_entries_deleted: int = Field(description="Cache entries deleted (dry run: that would be deleted).")
    kept: int = Field(description="Versions still within their retention.")


@flow(
    name="cleanup-batches",
    description="Delete batch versions and request-cache entries older than the retention (dry run lists them).",
    persist_result=False,
)
def cleanup(params: CleanupParameters | None = None) -> CleanupReport:
    """find-expired → delete-expired (skipped in a dry run) → a markdown report.

    Args:
        params: How old is too old, and whether only to list it; empty: the storage retention, for real.
    """
    params = params or CleanupParameters()
    settings = Settings()
    storage = resolve_storage(settings.storage)
    store = ArtifactStore.from_config(storage)
    hours = settings.storage.retention_days * 24 if params.max_age_hours is None else params.max_age_hours

    plan = find_expired(storage, datetime.now(UTC), timedelta(hours=hours))
    if params.dry_run:
        deleted, entries = [store.uri(v.path) for v in plan.versions], len(plan.cache_entries)
        for uri in deleted:
            get_run_logger().info("would delete %s", uri)
    else:
        result = delete_expired(storage, plan)
        deleted, entries = result.versions, result.cache_entries

    report = CleanupReport(
        dry_run=params.dry_run,
        flow_run_id=flow_run.get_id(),
        max_age_hours=hours,
        deleted=deleted,
        cache_entries_deleted=entries,
        kept=plan.kept,
    )
    _publish(report, plan, store)
    return report


def _publish(report: CleanupReport, plan: RetentionPlan, store: ArtifactStore) -> None:
    """The run's markdown artifact: what went (or would go), one row per version."""
    verb = "Would delete" if report.dry_run else "Deleted"
    lines = [
        f"# Cleanup{' (dry run)' if report.dry_run else ''}: {store.url}",
        "",
        f"{verb} {len(report.deleted)} version(s) and {report.cache_entries_deleted} cache entries "
        f"last written {report.max_age_hours:g} h ago or earlier; {report.kept} version(s) kept.",
    ]
    if plan.versions:
        lines += ["", "| batch | version | last written | location |", "|---|---|---|---|"]
        lines += [
            f"| {v.batch_id} | `{v.version}` | {v.last_modified.isoformat(timespec='seconds')} | `{store.uri(v.path)}` |"
            for v in plan.versions[:_ARTIFACT_ROWS]
        ]
        if len(plan.versions) > _ARTIFACT_ROWS:
            lines.append(f"\n… and {len(plan.versions) - _ARTIFACT_ROWS} more (see the run's logs).")
    create_markdown_artifact(
        key="cleanup-dry-run" if report.dry_run else "cleanup",
        description=f"{verb} {len(report.deleted)} batch version(s)",
        markdown="\n".join(lines),
    )
