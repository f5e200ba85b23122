"""Live SLA progress of a running batch: throughput over a sliding window, ETA, risk and warnings.

Pure functions over counts and timestamps (the caller reads the counters from the run and the
engine's utilisation from its metrics), so every rule is checked on a table of snapshots. Whether a
*finished* batch met its deadline is judged by ``sla.sla_report``; this module only looks ahead.
"""

from __future__ import annotations

import enum
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class RiskThresholds(BaseModel):
    """Where a running batch turns from on track to at risk, and when to warn about it."""

    # Frozen because one instance is shared as the default of ``assess_progress``.
    model_config = ConfigDict(frozen=True)

    at_risk_margin_seconds: float = Field(
        default=360.0, ge=0, description="At risk when ETA > remaining + this margin (0.1 h by default)."
    )
    min_requests_per_second: float = Field(
        default=5.0, ge=0, description="Warn when the measured throughput is below this while work remains."
    )
    max_error_rate: float = Field(default=0.05, ge=0, description="Warn when failed / (completed + failed) exceeds this.")
    max_accelerator_utilisation: float = Field(
        default=0.9, ge=0, description="Warn when the engine reports utilisation (0..1) above this."
    )


#: The thresholds ``assess_progress`` uses when the caller passes none.
DEFAULT_THRESHOLDS = RiskThresholds()


class RateSample(BaseModel):
    """The batch's cumulative counters at one moment."""

    at: datetime
    requests: int = Field(ge=0, description="Cumulative requests done (completed + failed) at `at`.")
    tokens: int = Field(ge=0, description="Cumulative tokens at `at`.")


class RateWindow(BaseModel):
    """Recent counter samples, from which the current throughput is measured."""

    seconds: float = Field(default=120.0, gt=0, description="Sliding window length.")
    samples: list[RateSample] = Field(default_factory=list, description="Kept samples, oldest first.")

    def add(self, sample: RateSample) -> RateWindow:
        """A new window with ``sample`` added and samples older than the window start dropped,
        except the newest one at or before the start, kept as the anchor."""
        # Sorted so a late-arriving sample cannot make the window end move backwards.
        samples = sorted([*self.samples, sample], key=lambda s: s.at)
        start = samples[-1].at - timedelta(seconds=self.seconds)
        # The anchor keeps the past in view: after a quiet spell the rate is still measured over the
        # whole window (0 when nothing moved) instead of from the newest sample alone (unknown).
        anchor = max((i for i, s in enumerate(samples) if s.at <= start), default=0)
        return self.model_copy(update={"samples": samples[anchor:]})

    def rates(self) -> tuple[float | None, float | None]:
        """(requests/s, tokens/s) between the oldest and newest kept sample; (None, None) with fewer
        than two samples or a zero time span."""
        if len(self.samples) < 2:
            return None, None
        first, last = self.samples[0], self.samples[-1]
        span = (last.at - first.at).total_seconds()
        if span <= 0:
            return None, None
        # Cumulative counters only grow; a drop (a counter reset on restart) reads as no progress,
        # not as negative throughput that would make the ETA meaningless.
        return max(last.requests - first.requests, 0) / span, max(last.tokens - first.tokens, 0) / span


class Risk(enum.StrEnum):
    """How a running batch stands against its deadline."""

    ON_TRACK = "on-track"
    AT_RISK = "at-risk"
    BREACHED = "breached"


#: Which verdict on which kind of pool moves a running batch to the dedicated pool. The watch raises
#: a verdict's event once per batch version (nightshift/orchestration/watch.py); the escalation automation is built from
#: this table (deployments/automations.py) and the fleet simulator asks ``escalates_to_dedicated``.
#: A breached batch is only alerted: it can no longer make its deadline, and a move costs a restart.
ESCALATIONS: frozenset[tuple[Risk, str]] = frozenset({(Risk.AT_RISK, "spot")})


def escalates_to_dedicated(risk: Risk, pool_kind: str | None) -> bool:
    """Whether a running batch with verdict ``risk`` on a ``pool_kind`` pool moves to dedicated."""
    return (risk, pool_kind) in ESCALATIONS


def escalating_risks(pool_kind: str) -> set[Risk]:
    """The verdicts that move a batch off a ``pool_kind`` pool (what its automation listens for)."""
    return {risk for risk, kind in ESCALATIONS if kind == pool_kind}


class SLAWarning(BaseModel):
    """A condition worth an operator's look, independent of the deadline risk."""

    code: Literal["low-throughput", "high-error-rate", "accelerator-saturated"]
    message: str = Field(description="Human readable, with the numbers.")
    value: float = Field(description="The measured value that crossed the threshold.")
    threshold: float = Field(description="The threshold it crossed.")


class Progress(BaseModel):
    """A running batch's progress snapshot: how far, how fast, when done, and whether in time."""

    batch_id: str
    version: str
    tier: str
    pool: str | None = Field(description="Work pool running the batch; None before placement.")
    total: int = Field(description="Requests in the batch.")
    completed: int
    failed: int
    pending: int = Field(description="total - completed - failed, never negative.")
    percent: float = Field(description="100 * (completed + failed) / total; 100.0 when total == 0.")
    requests_per_second: float | None = Field(description="Measured over the rate window; None before two samples.")
    tokens_per_second: float | None
    eta_seconds: float | None = Field(
        description="Time to finish the pending requests; 0 when nothing is pending, None when no rate is known."
    )
    deadline: datetime
    remaining_seconds: float = Field(description="deadline - now; negative once passed.")
    slack_seconds: float | None = Field(description="remaining - eta; None when the ETA is unknown.")
    risk: Risk
    warnings: list[SLAWarning]
    updated_at: datetime


def _eta(pending: int, rate: float | None) -> float | None:
    """Seconds to finish ``pending`` requests at ``rate``; None when the rate is unknown or zero."""
    if pending == 0:
        return 0.0
    # A zero rate: the ETA is unknown rather than infinite (the deadline still marks a real stall).
    if rate is None or rate <= 0:
        return None
    return pending / rate


def _warnings(
    *, pending: int, completed: int, failed: int, measured_rps: float | None, utilisation: float | None, t: RiskThresholds
) -> list[SLAWarning]:
    """The warnings a snapshot raises; every comparison is strict, so exactly at a threshold is fine."""
    warnings: list[SLAWarning] = []
    # Only the measured rate: a fallback is another batch's history, not evidence about this one.
    if pending > 0 and measured_rps is not None and measured_rps < t.min_requests_per_second:
        warnings.append(
            SLAWarning(
                code="low-throughput",
                message=f"throughput {measured_rps:.2f} req/s is below {t.min_requests_per_second:.2f} req/s "
                f"with {pending} requests pending",
                value=measured_rps,
                threshold=t.min_requests_per_second,
            )
        )
    done = completed + failed
    if done > 0 and (error_rate := failed / done) > t.max_error_rate:
        warnings.append(
            SLAWarning(
                code="high-error-rate",
                message=f"error rate {error_rate:.1%} ({failed} of {done} requests failed) exceeds {t.max_error_rate:.1%}",
                value=error_rate,
                threshold=t.max_error_rate,
            )
        )
    if utilisation is not None and utilisation > t.max_accelerator_utilisation:
        warnings.append(
            SLAWarning(
                code="accelerator-saturated",
                message=f"accelerator utilisation {utilisation:.0%} exceeds {t.max_accelerator_utilisation:.0%}",
                value=utilisation,
                threshold=t.max_accelerator_utilisation,
            )
        )
    return warnings


def assess_progress(
    *,
    batch_id: str,
    version: str,
    tier: str,
    pool: str | None,
    total: int,
    completed: int,
    failed: int,
    now: datetime,
    deadline: datetime,
    requests_per_second: float | None,
    tokens_per_second: float | None = None,
    fallback_requests_per_second: float | None = None,
    accelerator_utilisation: float | None = None,
    thresholds: RiskThresholds = DEFAULT_THRESHOLDS,
) -> Progress:
    """Snapshot a running batch: ETA from the measured rate (else the fallback), risk against the
    deadline and any warnings.

    Args:
        requests_per_second: Measured over the batch's ``RateWindow``; None before two samples.
        fallback_requests_per_second: Used for the ETA only while nothing is measured, e.g. the
            pool's throughput from earlier batches (``placement.PoolThroughput``).
        accelerator_utilisation: The engine's reported utilisation, 0..1; None when unknown.
    """
    done = completed + failed
    pending = max(total - done, 0)
    # Capped: counters that overshoot the total (a retried request counted twice) still read 100 %.
    percent = min(100.0 * done / total, 100.0) if total > 0 else 100.0
    # Nothing finished in the window is not proof of a stall: an engine still loading, or shards
    # longer than the window, look the same. The pool's history estimates the ETA meanwhile, and
    # the deadline itself still marks the batch breached if it truly stopped.
    measured = requests_per_second if requests_per_second is not None and requests_per_second > 0 else None
    rate = measured if measured is not None else fallback_requests_per_second
    eta = _eta(pending, rate)
    remaining = (deadline - now).total_seconds()

    if pending > 0 and remaining <= 0:
        risk = Risk.BREACHED
    elif pending > 0 and eta is not None and eta > remaining + thresholds.at_risk_margin_seconds:
        risk = Risk.AT_RISK
    else:
        # A finished batch is on track here even if it finished late: sla_report judges that.
        risk = Risk.ON_TRACK

    return Progress(
        batch_id=batch_id,
        version=version,
        tier=tier,
        pool=pool,
        total=total,
        completed=completed,
        failed=failed,
        pending=pending,
        percent=percent,
        requests_per_second=requests_per_second,
        tokens_per_second=tokens_per_second,
        eta_seconds=eta,
        deadline=deadline,
        remaining_seconds=remaining,
        slack_seconds=remaining - eta if eta is not None else None,
        risk=risk,
        warnings=_warnings(
            pending=pending,
            completed=completed,
            failed=failed,
            measured_rps=requests_per_second,
            utilisation=accelerator_utilisation,
            t=thresholds,
        ),
        updated_at=now,
    )
