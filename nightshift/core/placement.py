"""Placement: run a batch on cheap spot capacity when its deadline allows, else on dedicated.

Pure decision over plain numbers (the caller reads pool states from Prefect and throughput
from earlier manifests), so every rule is checked on a table of cases.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class PoolState(BaseModel):
    """What placement needs to know about one work pool right now."""

    name: str
    kind: Literal["spot", "dedicated"]
    online_workers: int = Field(ge=0)
    concurrency_limit: int | None = Field(default=None, ge=0, description="None: no limit.")
    running: int = Field(default=0, ge=0, description="Flow runs occupying the pool's slots (pending or running).")
    queued: int = Field(default=0, ge=0, description="Flow runs already due and waiting for a slot: they go first.")
    requests_per_second: float = Field(gt=0, description="Measured throughput of one batch on this pool.")

    @property
    def free_slots(self) -> int | None:
        """Slots left (None when the pool has no limit)."""
        if self.concurrency_limit is None:
            return None
        return max(self.concurrency_limit - self.running - self.queued, 0)

    @property
    def available(self) -> bool:
        """A worker is online and a slot is free."""
        return self.online_workers > 0 and self.free_slots != 0


class Placement(BaseModel):
    """The chosen pool and why."""

    pool: str = Field(description="Work pool the batch was sent to.")
    kind: Literal["spot", "dedicated"] = Field(description="spot: cheap, preemptible capacity; dedicated: on-demand.")
    reason: str = Field(description="Why this pool: the runtime estimate against the time left.")
    estimated_seconds: float = Field(description="Estimated runtime on the chosen pool.")
    remaining_seconds: float = Field(description="Time left until the deadline at decision time.")


def choose_pool(
    *, requests: int, now: datetime, deadline: datetime, spot: PoolState, dedicated: PoolState, safety_factor: float = 1.5
) -> Placement:
    """Spot when its estimated runtime times ``safety_factor`` fits before the deadline and it can
    take the batch now; otherwise dedicated, with the reason recorded.

    A preempted spot run resumes on dedicated from its finished shards, so the safety factor only
    has to cover spot's own slowness and queueing, not a full restart.
    """
    remaining = (deadline - now).total_seconds()
    spot_eta = requests / spot.requests_per_second
    dedicated_eta = requests / dedicated.requests_per_second

    def on_dedicated(reason: str) -> Placement:
        return Placement(
            pool=dedicated.name, kind="dedicated", reason=reason, estimated_seconds=dedicated_eta, remaining_seconds=remaining
        )

    if spot.online_workers == 0:
        return on_dedicated("spot pool has no online worker")
    if spot.free_slots == 0:
        if dedicated.available:
            return on_dedicated("spot pool has no free slot")
        return on_dedicated("both pools are full; queued on dedicated, which runs it first when a slot frees")
    if spot_eta * safety_factor > remaining:
        return on_dedicated(
            f"deadline too tight for spot: {spot_eta:.0f}s x {safety_factor} safety > {max(remaining, 0):.0f}s left"
        )
    return Placement(
        pool=spot.name,
        kind="spot",
        reason=f"slack covers spot: {spot_eta:.0f}s x {safety_factor} safety <= {remaining:.0f}s left",
        estimated_seconds=spot_eta,
        remaining_seconds=remaining,
    )


def queue_order(*, queue_priority: int, scheduled_at: datetime) -> tuple[int, datetime]:
    """Where a waiting run stands in its pool's line, smallest first: the work queue with the lowest
    priority number (deployments/pools.yaml), then the earliest scheduled start.

    This is the order Prefect workers take due runs in; nothing else reorders them (no
    deadline-first), so a run moved to dedicated (preempted or escalated) queues behind the runs
    already waiting there. The fleet simulator orders its pools with this key.
    """
    return queue_priority, scheduled_at


class ThroughputSample(BaseModel):
    """One finished batch's engine throughput on a pool."""

    at: datetime
    requests: int = Field(ge=0, description="Requests the engine answered in the run.")
    seconds: float = Field(ge=0, description="Time the run spent computing them.")


class PoolThroughput(BaseModel):
    """A pool's recent throughput, measured from the batches it finished (what placement estimates
    runtimes with instead of a guess once the pool has run something)."""

    pool: str
    samples: list[ThroughputSample] = Field(default_factory=list)

    def record(self, sample: ThroughputSample, keep: int = 20) -> PoolThroughput:
        """The log with ``sample`` added, keeping the ``keep`` newest (old hardware ages out)."""
        return self.model_copy(update={"samples": [*self.samples, sample][-keep:]})

    def requests_per_second(self) -> float | None:
        """Requests over busy seconds across the kept samples (big batches weigh more); None
        before the pool has measured anything."""
        seconds = sum(s.seconds for s in self.samples)
        requests = sum(s.requests for s in self.samples)
        return requests / seconds if seconds > 0 and requests > 0 else None
