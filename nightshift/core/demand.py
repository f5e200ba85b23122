"""Engine demand: how many replicas of an engine the queued work needs to meet every deadline.

Ray's autoscaler sees resource requests, not deadlines: it adds a node when an actor cannot be
placed and removes one that sat idle. What it cannot know is how many engine replicas to ask for,
which is what this module decides from what nightshift knows: each batch's remaining work and its
deadline, and what one replica answers per second. Pure functions over plain numbers (the engine
controller, ``nightshift.engine.autoscale``, gathers them), so every rule is checked on a table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, Field

from nightshift.core.placement import PoolState, choose_pool


class WorkItem(BaseModel):
    """The remaining work of one queued or running batch on an engine."""

    key: str = Field(description="The batch (and version) the work belongs to.")
    remaining: float = Field(ge=0, description="Work left, in the unit the replica rate is measured in (requests or tokens).")
    deadline: datetime


class ReplicaTarget(BaseModel):
    """How many replicas an engine should have, and why."""

    replicas: int = Field(ge=0)
    required_rate: float = Field(ge=0, description="Work per second that meets every deadline (before the safety factor).")
    binding: str | None = Field(default=None, description="The batch whose deadline sets the rate (None: no work).")
    reason: str


def required_rate(work: Iterable[WorkItem], now: datetime) -> tuple[float, str | None]:
    """The rate that finishes every item by its deadline when served earliest deadline first, and
    the item whose deadline binds.

    Earliest deadline first is what the engine does (``sla.engine_priority``), and under it every
    deadline is met exactly when, for each deadline ``d``, all work due by ``d`` fits in the time
    left until ``d``: the rate is the largest (work due by ``d``) / (time left until ``d``). Summing
    each batch's own remaining / slack would over-ask (it counts the same time twice for batches
    that can run one after the other) and taking the largest single one would under-ask.
    A deadline already passed with work left needs an unbounded rate (as fast as possible).
    """
    rate, binding, due = 0.0, None, 0.0
    for item in sorted((w for w in work if w.remaining > 0), key=lambda w: w.deadline):
        due += item.remaining
        left = (item.deadline - now).total_seconds()
        if left <= 0:
            return math.inf, item.key
        if due / left > rate:
            rate, binding = due / left, item.key
    return rate, binding


def replica_target(
    work: Sequence[WorkItem],
    *,
    now: datetime,
    rate_per_replica: float,
    safety_factor: float,
    minimum: int,
    maximum: int,
) -> ReplicaTarget:
    """Replicas needed for ``work``: the required rate times ``safety_factor`` over one replica's
    rate, rounded up, at least one while any work remains, within ``minimum``..``maximum``.

    The safety factor is the one placement uses (``pools.safety_factor``): it covers the replicas'
    start-up and the throughput's noise, so a deadline is met with room rather than exactly.
    """
    if rate_per_replica <= 0:
        raise ValueError("rate_per_replica must be positive")
    if not 0 <= minimum <= maximum:
        raise ValueError("need 0 <= minimum <= maximum")
    rate, binding = required_rate(work, now)
    pending = sum(w.remaining for w in work)
    if pending == 0:
        wanted = 0
    elif math.isinf(rate):
        wanted = maximum + 1  # a deadline passed: everything allowed, to finish as soon as possible
    else:
        wanted = math.ceil(rate * safety_factor / rate_per_replica - 1e-9)
    if pending > 0:
        wanted = max(wanted, 1)  # some work and a lax deadline still needs an engine to run on
    replicas = min(max(wanted, minimum), maximum)
    if pending == 0:
        reason = f"no work queued: {replicas} (minimum)"
    elif math.isinf(rate):
        reason = f"a deadline has passed with work left: all {maximum} replicas"
    elif wanted > maximum:
        reason = f"deadlines need {wanted} replicas at {rate_per_replica:.3g}/s each; capped at the maximum {maximum}"
    else:
        reason = f"{rate:.3g}/s x {safety_factor} safety over {rate_per_replica:.3g}/s per replica = {wanted}" + (
            f", raised to the minimum {minimum}" if minimum > wanted else ""
        )
    return ReplicaTarget(replicas=replicas, required_rate=rate, binding=binding, reason=reason)


class ReplicaState(BaseModel):
    """One live replica as the controller sees it."""

    name: str
    in_flight: int = Field(ge=0, description="Shards in the replica now.")
    idle_since: datetime | None = Field(description="When its last shard finished (None: busy, or never fed).")
    started_at: datetime


class ScalePlan(BaseModel):
    """What to change now: how many replicas to add, which to retire."""

    add: int = Field(ge=0)
    retire: list[str] = Field(default_factory=list)


def plan_scale(target: int, replicas: Sequence[ReplicaState], *, now: datetime, idle_seconds: float) -> ScalePlan:
    """Add replicas up to ``target`` at once; retire a replica above it only when it has run no
    shard for ``idle_seconds`` (a replica never fed counts from its start).

    Why wait while scaling down and not up: a new replica costs an engine start, an idle one only
    its time, and batches arrive in bursts: a replica kept through a short gap serves the next batch
    at once. A replica with shards in it is never chosen, so a retirement never loses work.
    """
    add = max(target - len(replicas), 0)
    surplus = len(replicas) - target
    if surplus <= 0:
        return ScalePlan(add=add)
    idle_for = timedelta(seconds=idle_seconds)
    idle = [r for r in replicas if r.in_flight == 0 and (r.idle_since or r.started_at) <= now - idle_for]
    # The longest idle first, so replicas that just finished a shard stay warm.
    idle.sort(key=lambda r: r.idle_since or r.started_at)
    return ScalePlan(add=0, retire=[r.name for r in idle[:surplus]])


PoolKind = Literal["spot", "dedicated"]


def capacity_for(
    work: Sequence[WorkItem],
    *,
    now: datetime,
    replicas: int,
    rate_per_replica: float,
    spot_available: bool,
    safety_factor: float,
) -> tuple[PoolKind, str]:
    """Whether an engine's replicas go on spot or dedicated capacity, and why: the placement rule
    batches are placed with (``placement.choose_pool``), asked about all the engine's work at once.

    The engine's work stands for one batch due at the binding deadline, served by ``replicas``
    replicas; spot is "online" while spot nodes come when asked (``spot_available``: the controller
    marks it False once spot nodes are lost or do not come). So when spot capacity disappears, the
    replicas move to dedicated capacity exactly when a batch would have.
    """
    pending = sum(w.remaining for w in work)
    due = min((w.deadline for w in work if w.remaining > 0), default=now + timedelta(days=365))
    rate = max(replicas, 1) * rate_per_replica
    spot = PoolState(name="spot", kind="spot", online_workers=int(spot_available), requests_per_second=rate)
    dedicated = PoolState(name="dedicated", kind="dedicated", online_workers=1, requests_per_second=rate)
    placement = choose_pool(
        requests=math.ceil(pending), now=now, deadline=due, spot=spot, dedicated=dedicated, safety_factor=safety_factor
    )
    return placement.kind, placement.reason
