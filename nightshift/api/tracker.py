"""What the gateway learns about a batch's run, and from where: the store says how far it got
(``progress.json`` while it runs, the newest ``manifest.json`` once published) and Prefect says
whether its run failed. ``observe`` turns that into the one lifecycle event to apply (pure), so
the gateway's row follows the run without deciding anything twice.

The Prefect side sits behind ``Orchestrator``, which the app factory takes as a collaborator:
in-process tests pass their own, the server passes ``PrefectOrchestrator``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol
from uuid import UUID

from nightshift.core.artifacts import Manifest
from nightshift.core.lifecycle import BatchEvent, BatchStatus
from nightshift.core.progress import Progress
from nightshift.storage import ArtifactStore

if TYPE_CHECKING:
    from nightshift.api.db import Batch
    from nightshift.core.placement import PoolState
    from nightshift.orchestration.submit import Submission
    from nightshift.settings import Settings

log = logging.getLogger(__name__)

#: Prefect states after which a run does no more work on the batch.
RUN_OVER = frozenset({"Cancelled", "Crashed", "Failed", "Completed"})
#: Prefect states of a run that has not started (its cancel is immediate).
NOT_STARTED = frozenset({"Scheduled", "Late", "Pending"})


@dataclass(frozen=True)
class RunState:
    """The flow run now carrying a batch (a preempted or escalated batch moves to a new run)."""

    flow_run_id: str
    name: str | None
    message: str | None = None
    pool: str | None = None


class Orchestrator(Protocol):
    """Where batches run: starts them on a pool, reports and cancels their runs."""

    def submit(self, source_uri: str, **params: Any) -> Submission:
        """Place the batch and start its run (``orchestration.submit.submit_batch``'s arguments)."""
        ...

    def run_state(self, flow_run_id: str) -> RunState:
        """The current run of the batch started as ``flow_run_id``."""
        ...

    def cancel(self, flow_run_id: str) -> None:
        """Ask for the run to be cancelled (its worker stops the process)."""
        ...

    def pool_states(self, settings: Settings) -> tuple[PoolState, PoolState]:
        """(spot, dedicated) as the orchestrator sees them now (``orchestration.submit.read_pool_states``)."""
        ...


class PrefectOrchestrator:
    """``Orchestrator`` over Prefect deployments and flow runs (imports Prefect on first use)."""

    def submit(self, source_uri: str, **params: Any) -> Submission:
        """Place and start the batch (``orchestration.submit.submit_batch``)."""
        from nightshift.orchestration.submit import submit_batch

        return submit_batch(source_uri, **params)

    def pool_states(self, settings: Settings) -> tuple[PoolState, PoolState]:
        """(spot, dedicated) as Prefect sees them now: workers, slots, queue."""
        from nightshift.orchestration.submit import read_pool_states

        return read_pool_states(settings)

    def run_state(self, flow_run_id: str) -> RunState:
        """Follow the batch from ``flow_run_id`` to the run now carrying it (preemption and
        escalation hand a batch to a new run whose ``resumed_from`` names the old one)."""
        from prefect import get_client

        from nightshift.orchestration.submit import HANDED_OFF, find_successor

        with get_client(sync_client=True) as client:
            run = client.read_flow_run(UUID(flow_run_id))
            for _ in range(10):  # a batch moves at most a few times
                successor = find_successor(client, run) if run.state is not None and run.state.name in HANDED_OFF else None
                if successor is None:
                    break
                run = successor
            state = run.state
            return RunState(
                flow_run_id=str(run.id),
                name=state.name if state else None,
                message=state.message if state else None,
                pool=run.work_pool_name,
            )

    def cancel(self, flow_run_id: str) -> None:
        """Set the run to Cancelling (its worker then stops it); a failure is logged, not raised."""
        from prefect import get_client
        from prefect.states import Cancelling

        with get_client(sync_client=True) as client, contextlib.suppress(Exception):
            client.set_flow_run_state(UUID(flow_run_id), Cancelling(), force=True)


@dataclass
class BatchState:
    """What the store and the orchestrator say about one batch right now."""

    manifest: Manifest | None = None
    progress: Progress | None = None
    run: RunState | None = None


def read_store_state(store: ArtifactStore, batch_id: str) -> BatchState:
    """The newest published manifest of the batch (one file read), else its newest live progress."""
    state = BatchState()
    published = store.newest(batch_id, "manifest.json")
    if published is not None:
        state.manifest = Manifest.model_validate_json(store.read_bytes(published.manifest))
        return state
    running = store.newest(batch_id, "progress.json")
    if running is not None:
        state.progress = Progress.model_validate_json(store.read_bytes(running.progress))
    return state


@dataclass
class Observation:
    """The lifecycle event a batch's state calls for (None: none), the row fields that go with
    it, and progress fields to record whatever the status."""

    event: BatchEvent | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    progress: dict[str, Any] = field(default_factory=dict)
    partial: tuple[str, str] | None = None  # (error code, message) when partial results must be published
    cancel_run: bool = False


def observe(batch: Batch, state: BatchState, now: datetime) -> Observation:
    """The one thing to do about ``batch`` given ``state`` (pure: the caller applies it)."""
    seen = Observation()
    status = BatchStatus(batch.status)
    if status.is_terminal:
        return seen
    run = state.run
    if run is not None:
        if run.flow_run_id != batch.flow_run_id:
            seen.progress["flow_run_id"] = run.flow_run_id
        if run.pool and run.pool != batch.pool:
            seen.progress["pool"] = run.pool
    m = state.manifest
    if m is not None:
        seen.event = BatchEvent.PUBLISHED
        seen.fields = {
            "version": m.version,
            "request_counts": m.request_counts.model_dump(),
            "usage": m.usage.model_dump(),
            "cost": None if m.cost is None else m.cost.model_dump(mode="json"),
            "finalizing_at": batch.finalizing_at or m.completed_at,
            "completed_at": m.completed_at,
            "in_progress_at": batch.in_progress_at or m.created_at,
        }
        return seen
    run_name = run.name if run is not None else None
    if batch.expires_at is not None and now > batch.expires_at:
        seen.event = BatchEvent.WINDOW_ENDED
        seen.partial = ("batch_expired", "the batch's completion window ended first")
        seen.cancel_run = batch.flow_run_id is not None
        if status is BatchStatus.CANCELLING:
            seen.partial = ("batch_cancelled", "the batch was cancelled first")
        return seen
    if status is BatchStatus.CANCELLING:
        if run_name is None or run_name in RUN_OVER or run_name in NOT_STARTED:
            seen.event = BatchEvent.STOPPED
            seen.partial = ("batch_cancelled", "the batch was cancelled first")
            seen.cancel_run = run_name in NOT_STARTED
        return seen
    if run_name == "Failed":
        seen.event = BatchEvent.RUN_FAILED
        # Prefect's state message may carry a traceback or server paths: the owner gets the run id,
        # the operator's logs have the rest.
        message = f"the batch's run failed (flow run {run.flow_run_id if run else batch.flow_run_id}); no results were published"
        seen.fields = {"errors": [{"code": "batch_failed", "message": message, "param": None, "line": None}]}
        return seen
    p = state.progress
    if p is not None:
        seen.progress.update(
            version=p.version,
            request_counts={"total": p.total, "completed": p.completed, "failed": p.failed},
        )
        done = p.total > 0 and p.completed + p.failed >= p.total
        seen.event = BatchEvent.FINALIZING if done else BatchEvent.RUNNING
        seen.fields = {"in_progress_at": batch.in_progress_at or now}
    elif run_name == "Running":
        seen.event = BatchEvent.RUNNING
    return seen


async def prefect_batch_events() -> AsyncIterator[str]:
    """Batch ids as the flows report them (Prefect's ``nightshift.batch.*`` events: started,
    progress, completed, failed...), so the gateway moves a row when its run reports rather than
    at the next poll. Reconnects when the server goes away; ends only when cancelled."""
    import asyncio

    from prefect.events.clients import get_events_subscriber
    from prefect.events.filters import EventFilter, EventNameFilter

    flt = EventFilter(event=EventNameFilter(prefix=["nightshift.batch."]))
    while True:
        try:
            async with get_events_subscriber(filter=flt) as subscriber:
                async for event in subscriber:
                    batch_id = (event.payload or {}).get("batch_id")
                    if isinstance(batch_id, str):
                        yield batch_id
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the poll covers the gap; try again shortly
            log.warning("Prefect event stream interrupted (%s); polling covers it, reconnecting", type(exc).__name__)
        await asyncio.sleep(5)
