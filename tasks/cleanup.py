"""find-expired and delete-expired: retention of batch versions and request-cache entries."""

from __future__ import annotations

from datetime import datetime, timedelta

from prefect import get_run_logger, task
from pydantic import BaseModel, Field

from nightshift.core.retention import VersionInfo, expired
from nightshift.settings import StorageConfig
from nightshift.storage import ArtifactStore
from nightshift.storage.retention import delete_cache_entries, delete_version, expired_cache_entries, list_versions


class RetentionPlan(BaseModel):
    """What is past its retention at one instant, and how many versions stay."""

    versions: list[VersionInfo] = Field(description="Expired batch versions, oldest path first.")
    cache_entries: list[str] = Field(description="Expired request-cache entry files.")
    kept: int = Field(description="Versions still within their retention.")


class DeletionResult(BaseModel):
    """What delete-expired removed."""

    versions: list[str] = Field(description="URIs of the deleted version folders.")
    cache_entries: int


@task(name="find-expired")
def find_expired(storage: StorageConfig, now: datetime, max_age: timedelta) -> RetentionPlan:
    """List every version and cache entry, and keep those last written ``max_age`` before ``now``."""
    store = ArtifactStore.from_config(storage)
    versions = list_versions(store)
    old = expired(versions, now, max_age)
    plan = RetentionPlan(versions=old, cache_entries=expired_cache_entries(store, now, max_age), kept=len(versions) - len(old))
    get_run_logger().info(
        "%d of %d versions and %d cache entries are older than %s",
        len(old),
        len(versions),
        len(plan.cache_entries),
        max_age,
    )
    return plan


@task(name="delete-expired")
def delete_expired(storage: StorageConfig, plan: RetentionPlan) -> DeletionResult:
    """Delete the planned versions, then the planned cache entries.

    Versions go first, as they hold the bytes: if the run stops in between, the entries left
    behind point at nothing, which the cache treats as a miss, and the next cleanup takes them.
    """
    log = get_run_logger()
    store = ArtifactStore.from_config(storage)
    deleted = []
    for info in plan.versions:
        delete_version(store, info)
        deleted.append(store.uri(info.path))
        log.info("deleted %s (last written %s)", store.uri(info.path), info.last_modified.isoformat())
    entries = delete_cache_entries(store, plan.cache_entries)
    log.info("deleted %d versions and %d cache entries", len(deleted), entries)
    return DeletionResult(versions=deleted, cache_entries=entries)
