"""SLA tiers, deadlines and the end-of-batch SLA report: pure functions over timestamps."""

from __future__ import annotations

import enum
from datetime import datetime, timedelta

from pydantic import BaseModel, Field


class Tier(enum.StrEnum):
    """A customer's promise: how long after submission the batch must be done."""

    ENTERPRISE = "enterprise"
    PREMIUM = "premium"
    BASIC = "basic"
    FREE = "free"


#: Hours from submission to deadline; settings may override these (``SLAConfig``).
DEFAULT_TIER_HOURS: dict[str, float] = {"enterprise": 6.0, "premium": 12.0, "basic": 24.0, "free": 72.0}


def deadline_for(submitted_at: datetime, tier: Tier, tier_hours: dict[str, float] | None = None) -> datetime:
    """The moment a batch of ``tier`` submitted at ``submitted_at`` must be finished."""
    hours = (tier_hours or DEFAULT_TIER_HOURS)[tier.value]
    return submitted_at + timedelta(hours=hours)


def engine_priority(deadline: datetime, tier: Tier) -> int:
    """Rank of a batch's requests in an engine that other batches share, smallest first.

    Earliest deadline first, to the second; the higher tier breaks a tie. Nothing starves: a lax
    batch keeps its deadline while batches sent later get later ones, so its turn comes.
    """
    tiers = list(Tier)  # declared from the highest tier down
    return int(deadline.timestamp()) * len(tiers) + tiers.index(tier)


class SLAReport(BaseModel):
    """Whether a finished batch met its deadline, by how much, and how fast it ran."""

    tier: Tier
    submitted_at: datetime
    deadline: datetime
    finished_at: datetime
    met: bool
    slack_seconds: float = Field(description="deadline - finished_at; negative when breached.")
    elapsed_seconds: float
    requests_per_second: float
    tokens_per_second: float


def sla_report(
    *,
    tier: Tier,
    submitted_at: datetime,
    finished_at: datetime,
    requests: int,
    tokens: int,
    busy_seconds: float | None = None,
    tier_hours: dict[str, float] | None = None,
    deadline: datetime | None = None,
) -> SLAReport:
    """Judge a finished batch against its tier's deadline (or ``deadline``, when it has its own).

    Args:
        requests: Requests the engine answered (cached or failed ones excluded by the caller).
        tokens: Prompt plus completion tokens of those requests.
        busy_seconds: Time spent computing, for throughput; defaults to submission → finish.
    """
    deadline = deadline or deadline_for(submitted_at, tier, tier_hours)
    elapsed = max((finished_at - submitted_at).total_seconds(), 0.0)
    busy = busy_seconds if busy_seconds is not None else elapsed
    return SLAReport(
        tier=tier,
        submitted_at=submitted_at,
        deadline=deadline,
        finished_at=finished_at,
        met=finished_at <= deadline,
        slack_seconds=(deadline - finished_at).total_seconds(),
        elapsed_seconds=elapsed,
        requests_per_second=requests / busy if busy > 0 else 0.0,
        tokens_per_second=tokens / busy if busy > 0 else 0.0,
    )
