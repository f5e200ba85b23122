"""Every batch in the store at a glance (``nightshift ls``): its newest version's state, read from
the manifest once published, else from the live progress the SLA watch writes."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from nightshift.core.artifacts import Manifest
from nightshift.core.progress import Progress
from nightshift.storage.store import ArtifactStore


class BatchSummary(BaseModel):
    """One line of ``nightshift ls``."""

    batch_id: str
    status: str  # completed, or the live risk's word while running
    tier: str | None
    pool: str | None
    done: int
    total: int
    eta_seconds: float | None
    risk: str | None
    usage: dict[str, int] | None
    updated_at: datetime


def batch_summaries(store: ArtifactStore, limit: int = 20) -> list[BatchSummary]:
    """The ``limit`` most recently updated batches, newest first."""
    found: list[BatchSummary] = []
    try:
        folders = store.fs.ls(store.batches_root, detail=False)
    except FileNotFoundError:
        return []
    for folder in folders:
        batch_id = str(folder).rstrip("/").rsplit("/", 1)[-1]
        published = store.newest(batch_id, "manifest.json")
        if published is not None:
            m = Manifest.model_validate_json(store.read_bytes(published.manifest))
            p = m.progress
            found.append(
                BatchSummary(
                    batch_id=batch_id,
                    status="completed",
                    tier=p.tier if p else None,
                    pool=p.pool if p else None,
                    done=m.request_counts.completed + m.request_counts.failed,
                    total=m.request_counts.total,
                    eta_seconds=0.0,
                    risk=p.risk if p else None,
                    usage=m.usage.model_dump(),
                    updated_at=m.completed_at,
                )  # fmt: skip
            )
            continue
        running = store.newest(batch_id, "progress.json")
        if running is not None:
            p = Progress.model_validate_json(store.read_bytes(running.progress))
            found.append(
                BatchSummary(
                    batch_id=batch_id,
                    status="running",
                    tier=p.tier,
                    pool=p.pool,
                    done=p.completed + p.failed,
                    total=p.total,
                    eta_seconds=p.eta_seconds,
                    risk=p.risk,
                    usage=None,
                    updated_at=p.updated_at,
                )  # fmt: skip
            )
    return sorted(found, key=lambda s: s.updated_at, reverse=True)[:limit]
