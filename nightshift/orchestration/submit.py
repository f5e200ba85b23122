"""Submit a batch: count it, read both pools' state from Prefect, place it, run the deployment.

``submit_batch`` is the one code path behind ``nightshift submit``, the Python API, the HTTP
gateway, the ``submit-batch`` deployment (the Prefect UI's way in) and the nightly scoring flow:
placement is decided here, then ``run_deployment`` hands the batch to the chosen pool's workers
and returns at once.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast
from uuid import UUID

from pydantic import BaseModel, Field

from nightshift.core.errors import OrchestrationError
from nightshift.core.estimate import BatchEstimate
from nightshift.core.placement import Placement, PoolState
from nightshift.core.runs import BatchRunContext, BatchRunParameters, FaultInjection, default_batch_id
from nightshift.core.sla import Tier, deadline_for
from nightshift.orchestration.estimate import estimate_input
from nightshift.settings import Settings

if TYPE_CHECKING:
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.objects import FlowRun

#: Flow-run states that hold one of a pool's concurrency slots.
_OCCUPYING = ("PENDING", "RUNNING", "CANCELLING")


class Submission(BaseModel):
    """A batch handed to a pool: which flow run carries it and why it went there."""

    flow_run_id: str
    flow_run_name: str
    deployment: str
    batch_id: str
    requests: int = Field(description="Request lines in the file (placement's batch size).")
    deadline: datetime
    placement: Placement
    estimate: BatchEstimate | None = Field(default=None, description="The forecast placement was decided on.")


def _absolute(input_uri: str) -> str:
    """Workers run from the repo root, not the caller's folder: send local paths absolute."""
    return input_uri if "://" in input_uri else str(Path(input_uri).absolute())


def _pool_state(client: SyncPrefectClient, deployment: str, kind: Literal["spot", "dedicated"], guess: float) -> PoolState:
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterNextScheduledStartTime,
        FlowRunFilterState,
        FlowRunFilterStateName,
        FlowRunFilterStateType,
        WorkerFilter,
        WorkerFilterStatus,
        WorkPoolFilter,
        WorkPoolFilterName,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.exceptions import ObjectNotFound

    try:
        pool_name = client.read_deployment_by_name(deployment).work_pool_name
    except ObjectNotFound as exc:
        raise OrchestrationError(f"deployment {deployment!r} is not registered; run `nightshift up` or `pools apply`") from exc
    if pool_name is None:
        raise OrchestrationError(f"deployment {deployment!r} has no work pool")
    pool = client.read_work_pool(pool_name)
    online = client.read_workers_for_work_pool(pool_name, worker_filter=WorkerFilter(status=WorkerFilterStatus(any_=["ONLINE"])))
    in_pool = WorkPoolFilter(name=WorkPoolFilterName(any_=[pool_name]))
    running = client.count_flow_runs(
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType(s) for s in _OCCUPYING]))
        ),
        work_pool_filter=in_pool,
    )
    queued = client.count_flow_runs(
        flow_run_filter=FlowRunFilter(
            state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Scheduled", "Late", "AwaitingConcurrencySlot"])),
            # Prefect types its filters with its own DateTime; an aware datetime is what it accepts.
            next_scheduled_start_time=FlowRunFilterNextScheduledStartTime(before_=cast(Any, datetime.now(UTC))),
        ),
        work_pool_filter=in_pool,
    )
    return PoolState(
        name=pool_name,
        kind=kind,
        online_workers=0 if pool.is_paused else len(online),
        concurrency_limit=pool.concurrency_limit,
        running=running,
        queued=queued,
        requests_per_second=guess,
    )


def read_pool_states(settings: Settings | None = None) -> tuple[PoolState, PoolState]:
    """(spot, dedicated) as Prefect sees them now: workers, slots and queue. Their throughput is the
    settings' default; a batch is placed on its own model's measured throughput
    (``orchestration.estimate.estimate_input``)."""
    from prefect import get_client

    settings = settings or Settings()
    cfg = settings.pools
    with get_client(sync_client=True) as client:
        return (
            _pool_state(client, cfg.spot_deployment, "spot", cfg.spot_requests_per_second),
            _pool_state(client, cfg.dedicated_deployment, "dedicated", cfg.dedicated_requests_per_second),
        )


def submit_batch(
    input_uri: str,
    *,
    tier: Tier = Tier.BASIC,
    settings: Settings | None = None,
    submitted_at: datetime | None = None,
    priority: str = "normal",
    slow_shards_seconds: float | None = None,
    fail_after_shards: int | None = None,
    as_subflow: bool = False,
    **params: Any,
) -> Submission:
    """Place the batch on spot or dedicated and start the chosen deployment (returns at once).

    Args:
        input_uri: The batch JSONL file; local paths are sent absolute.
        tier: SLA tier; the deadline counts from ``submitted_at`` (default now) and stays with
            the batch if it is resumed elsewhere.
        priority: low, normal or high: the work queue of the chosen pool the run waits in
            (``settings.pools.priority_queues``); workers take higher-priority queues first.
        slow_shards_seconds, fail_after_shards: operator drills (``FaultInjection``); callers
            that take them from a tenant check that the tenant may drill (the gateway does).
        as_subflow: called from a flow (submit-batch, score-table): the run is linked as its
            subflow, so the Prefect UI shows it under the caller and a cancelled caller cancels it.
        params: Further ``BatchRunParameters`` fields (batch_id, model, shard_size, ...).

    Raises:
        BatchFileError: the file does not exist or has no request line.
        OrchestrationError: the deployments are not registered.
    """
    from prefect.deployments import run_deployment

    settings = settings or Settings()
    tier = Tier(tier)
    submitted_at = submitted_at or datetime.now(UTC)
    input_uri = _absolute(input_uri)
    run_params = BatchRunParameters(input_uri=input_uri, tier=tier, **params)  # a bad field fails before any placement
    deadline = run_params.deadline or deadline_for(submitted_at, tier, settings.sla.hours())
    # Counted, then placed on the batch model's measured throughput: the run keeps this estimate.
    estimate = estimate_input(input_uri, settings=settings, deadline=deadline, pools=read_pool_states(settings))
    requests = estimate.requests
    placement = estimate.placement
    drilled = slow_shards_seconds is not None or fail_after_shards is not None
    drill = FaultInjection(slow_shards_seconds=slow_shards_seconds, fail_after_shards=fail_after_shards) if drilled else None
    context = BatchRunContext(submitted_at=submitted_at, placement=placement, drill=drill, estimate=estimate)
    deployment = settings.pools.spot_deployment if placement.kind == "spot" else settings.pools.dedicated_deployment
    run = cast(
        "FlowRun",
        run_deployment(
            deployment,
            parameters={
                "params": run_params.model_dump(mode="json", exclude_none=True),
                "context": context.model_dump(mode="json", exclude_none=True),
            },
            timeout=0,
            as_subflow=as_subflow,
            work_queue_name=settings.pools.priority_queues[priority],
            tags=[f"tier:{tier.value}", f"capacity:{placement.kind}", f"priority:{priority}"],
        ),
    )
    return Submission(
        flow_run_id=str(run.id),
        flow_run_name=run.name,
        deployment=deployment,
        batch_id=run_params.batch_id or default_batch_id(input_uri),
        requests=requests,
        deadline=deadline,
        placement=placement,
        estimate=estimate,
    )


#: Prefect states in which a batch's run may have handed the batch to another run: preempted
#: (Crashed) or moved off an at-risk spot pool (Cancelling, then Cancelled).
HANDED_OFF = frozenset({"Crashed", "Cancelling", "Cancelled"})


def find_successor(client: SyncPrefectClient, run: FlowRun) -> FlowRun | None:
    """The flow run that took the batch over from ``run`` (its ``resumed_from`` names ``run``), if any yet.

    The run taking over is created after ``run`` was (by the automation reacting to its crash,
    or by the escalation that cancels it): only runs expected to start since then are read, newest first.
    """
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterExpectedStartTime
    from prefect.client.schemas.sorting import FlowRunSort

    since = run.expected_start_time or run.created
    newer = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(after_=since)),
        sort=FlowRunSort.EXPECTED_START_TIME_DESC,
        limit=200,
    )
    return next((r for r in newer if r.parameters.get("resumed_from") == str(run.id)), None)


def follow_batch(flow_run_id: str, *, timeout: float = 3600.0, poll: float = 1.0, handoff: float = 60.0) -> list[FlowRun]:
    """Wait for the batch started as ``flow_run_id`` to finish, following it when it moves: a spot
    run that crashed (preempted) or was cancelled as at risk is taken over by a dedicated run
    whose ``resumed_from`` names it. Returns every flow run the batch went through, the final one
    last. A crashed or cancelled run that no run takes over within ``handoff`` seconds is final.
    """
    from prefect import get_client

    chain: list[FlowRun] = []
    deadline = time.monotonic() + timeout
    current: str | None = flow_run_id
    with get_client(sync_client=True) as client:
        while current is not None and time.monotonic() < deadline:
            run = client.read_flow_run(UUID(current))
            if run.state is None or not run.state.is_final():
                time.sleep(poll)
                continue
            chain.append(run)
            if run.state.name not in HANDED_OFF:
                return chain
            current = None
            handoff_until = min(time.monotonic() + handoff, deadline)
            while current is None and time.monotonic() < handoff_until:
                successor = find_successor(client, run)
                if successor is not None:
                    current = str(successor.id)
                else:
                    time.sleep(poll)
            if current is None:
                return chain
    raise TimeoutError(f"batch of flow run {flow_run_id} not finished after {timeout:.0f}s (runs so far: {len(chain)})")
