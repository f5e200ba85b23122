"""Keeps the gateway's batch rows in step with the runs: the store says how far a batch got
(``progress.json`` while it runs, ``manifest.json`` once published), Prefect says whether its run
failed. Rows, not processes, are the record: after a gateway restart, every unfinished batch is
picked up again from the same two sources.
"""

from __future__ import annotations

import contextlib
import logging
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from nightshift.core.artifacts import Manifest
from nightshift.storage import ArtifactStore

log = logging.getLogger(__name__)

TERMINAL = ("completed", "failed", "expired", "cancelled")


class BatchState:
    """What the store and Prefect say about one batch right now (read in a worker thread)."""

    def __init__(self) -> None:
        self.manifest: Manifest | None = None
        self.progress: dict[str, Any] | None = None
        self.flow_run_id: str | None = None
        self.run_state: str | None = None  # Prefect state name of the newest run carrying the batch
        self.run_message: str | None = None
        self.pool: str | None = None


def read_state(store: ArtifactStore, store_batch_id: str, flow_run_id: str | None) -> BatchState:
    """The batch's published manifest or live progress, and the state of its current flow run."""
    state = BatchState()
    published = store.published(store_batch_id)
    if published:
        state.manifest = published[-1]
    else:
        progress = store.fs.glob(f"{store.root}/batches/{store_batch_id}/*/progress.json")
        if progress:
            import json

            state.progress = json.loads(store.read_bytes(max(progress, key=lambda p: store.fs.modified(p))))
    if flow_run_id:
        state.flow_run_id, state.run_state, state.run_message, state.pool = _current_run(flow_run_id)
    return state


def _current_run(flow_run_id: str) -> tuple[str, str | None, str | None, str | None]:
    """Follow the batch from ``flow_run_id`` to the run now carrying it (preemption and escalation
    hand a batch to a new run whose ``resumed_from`` names the old one)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterExpectedStartTime
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(UUID(flow_run_id))
        for _ in range(10):  # a batch moves at most a few times
            if run.state is None or run.state.name not in ("Crashed", "Cancelled", "Cancelling"):
                break
            since = run.expected_start_time or run.created
            newer = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(after_=since)),
                sort=FlowRunSort.EXPECTED_START_TIME_DESC,
                limit=200,
            )
            successor = next((r for r in newer if r.parameters.get("resumed_from") == str(run.id)), None)
            if successor is None:
                break
            run = successor
        state = run.state
        return str(run.id), state.name if state else None, state.message if state else None, run.work_pool_name


def request_flow_run_cancel(flow_run_id: str) -> None:
    """Ask Prefect to cancel the run (its worker stops the process)."""
    from prefect import get_client
    from prefect.states import Cancelling

    with get_client(sync_client=True) as client, contextlib.suppress(Exception):
        client.set_flow_run_state(UUID(flow_run_id), Cancelling(), force=True)


def transition(batch: Any, state: BatchState, now: datetime | None = None) -> dict[str, Any]:
    """The row fields to change given ``state`` (pure: the caller writes them)."""
    now = now or datetime.now(UTC)
    changes: dict[str, Any] = {}
    if state.flow_run_id and state.flow_run_id != batch.flow_run_id:
        changes["flow_run_id"] = state.flow_run_id
    if state.pool and state.pool != batch.pool:
        changes["pool"] = state.pool
    m = state.manifest
    if m is not None and batch.status not in TERMINAL:
        # Published means done, even if a cancel arrived meanwhile: the work is finished (and was
        # paid for), so the caller gets the complete files rather than a "cancelled" label on them.
        changes.update(
            status="completed",
            version=m.version,
            request_counts=m.request_counts.model_dump(),
            usage=m.usage.model_dump(),
            finalizing_at=batch.finalizing_at or m.completed_at,
            completed_at=m.completed_at,
            in_progress_at=batch.in_progress_at or m.created_at,
        )
        return changes
    p = state.progress
    if p is not None and batch.status in ("validating", "in_progress"):
        changes.update(
            status="in_progress",
            version=p.get("version"),
            request_counts={"total": p["total"], "completed": p["completed"], "failed": p["failed"]},
            in_progress_at=batch.in_progress_at or now,
        )
    if state.run_state == "Failed" and batch.status not in TERMINAL:
        changes.update(
            status="failed",
            failed_at=now,
            errors=[
                {"code": "batch_failed", "message": (state.run_message or "the run failed")[:1000], "param": None, "line": None}
            ],
        )
    elif state.run_state == "Running" and batch.status == "validating":
        changes.update(status="in_progress", in_progress_at=batch.in_progress_at or now)
    return changes
