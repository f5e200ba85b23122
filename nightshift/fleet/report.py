"""The fleet report: the policy against two baselines simulated on the same arrivals, and sweeps.

Cost is billed per GPU-second a run holds a GPU (start-up and work lost to reclaims included), as
with node pools that scale with the work; ``provisioned`` states the bill of keeping every GPU of
the pools up for the whole horizon instead.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any

from pydantic import BaseModel, Field

from nightshift.core.sla import Tier
from nightshift.fleet.scenario import Arrival, Mode, Scenario, ScenarioError, arrivals
from nightshift.fleet.sim import Fleet, FleetRun, measured_throughput
from nightshift.settings import Settings

#: Knobs ``--sweep`` may vary: name → (where it lives, what it is).
KNOBS: dict[str, tuple[str, str]] = {
    "safety_factor": ("settings.pools.safety_factor", "placement: spot when its ETA x this fits the deadline"),
    "at_risk_margin": ("settings.sla.at_risk_margin_seconds", "at risk when the ETA passes the time left by this (s)"),
    "dedicated_gpus": ("pools.dedicated.gpus", "GPUs in the dedicated pool"),
    "spot_gpus": ("pools.spot.gpus", "GPUs in the spot pool"),
    "shard_size": ("settings.storage.shard_size", "requests per shard (what a reclaim loses at most)"),
    "rate_window": ("settings.sla.rate_window_seconds", "the SLA watch's throughput window (s)"),
}

#: The issue's targets for the default policy.
TARGET_ATTAINMENT = 0.999
TARGET_COST_RATIO = 0.6


class TierResult(BaseModel):
    """Deadline attainment and lateness of one tier."""

    batches: int
    met: int
    attainment: float = Field(description="met / batches (1.0 with no batch).")
    breaches: int
    late_hours_max: float = Field(description="Largest lateness of a breached batch, hours (0 when none).")
    late_hours_mean: float
    slack_hours_p01: float | None = Field(description="1st percentile of slack (deadline - finish), hours.")
    slack_hours_median: float | None


class PoolResult(BaseModel):
    """One pool's use in one simulation."""

    gpus: int
    busy_gpu_hours: float
    utilisation: float = Field(description="busy GPU-hours / (GPUs x horizon).")
    cost: float
    queue_depth_max: int
    queue_depth_mean: float = Field(description="Time-weighted over the horizon.")
    queue_depth_hourly_max: list[int] = Field(description="Most runs waiting in each hour since the start.")


class RunResult(BaseModel):
    """One simulation's figures."""

    mode: Mode
    batches: int
    requests: int
    unfinished: int
    attainment: float
    tiers: dict[str, TierResult]
    cost: float = Field(description="USD billed for GPU time runs held (usage).")
    provisioned_cost: float = Field(description="USD to keep every GPU up for the horizon.")
    pools: dict[str, PoolResult]
    placed_on_spot: int
    placed_on_dedicated: int
    escalations: int
    preempted_runs: int
    reclaims: int
    horizon_hours: float = Field(description="Until the last batch finished (at least the scenario's duration).")


class FleetReport(BaseModel):
    """``nightshift simulate``'s output."""

    scenario: str
    seed: int
    policy_settings: dict[str, Any]
    policy: RunResult
    baselines: dict[str, RunResult]
    cost_vs_all_dedicated: float | None
    cost_vs_all_spot: float | None
    targets: dict[str, bool]
    sweep: list[dict[str, Any]] = Field(default_factory=list)
    wall_seconds: float


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]


def _hourly_max(depth: list[tuple[float, int]], end: float) -> list[int]:
    """The largest value of a step series (time, value) within each hour of [0, end]."""
    out = [0] * (int(end // 3600) + 1)
    hour, current = 0, 0
    for t, d in depth:
        index = min(int(t // 3600), len(out) - 1)
        while hour < index:  # hours the previous value held through
            out[hour] = max(out[hour], current)
            hour += 1
        out[index] = max(out[index], current, d)
        current = d
    for h in range(hour, len(out)):
        out[h] = max(out[h], current)
    return out


def summarize(run: FleetRun, scenario: Scenario) -> RunResult:
    """The figures of one simulation."""
    # Until the last batch finished: a run stuck in a pool with no GPU would stretch it to the drain cap.
    horizon = max([scenario.duration_hours * 3600] + [b.finished for b in run.batches if b.finished is not None])
    tiers: dict[str, TierResult] = {}
    for tier in Tier:
        batches = [b for b in run.batches if b.arrival.tier is tier]
        if not batches:
            continue
        slack = [b.report.slack_seconds / 3600 for b in batches if b.report is not None]
        late = [-s for s in slack if s < 0] + [(run.end - b.deadline) / 3600 for b in batches if b.report is None]
        met = sum(b.report is not None and b.report.met for b in batches)
        tiers[tier.value] = TierResult(
            batches=len(batches),
            met=met,
            attainment=met / len(batches),
            breaches=len(batches) - met,
            late_hours_max=max(late, default=0.0),
            late_hours_mean=statistics.fmean(late) if late else 0.0,
            slack_hours_p01=_percentile(slack, 0.01),
            slack_hours_median=_percentile(slack, 0.5),
        )
    pools = {}
    for kind, p in run.pools.items():
        depth = [(t, d[0] if kind == "spot" else d[1]) for t, *d in run.queue_depth]
        weighted = sum(d * (t2 - t1) for (t1, d), (t2, _) in zip(depth, [*depth[1:], (run.end, 0)], strict=True))
        pools[kind] = PoolResult(
            gpus=int(p["gpus"]),
            busy_gpu_hours=p["busy_seconds"] / 3600,
            utilisation=p["busy_seconds"] / (p["gpus"] * horizon) if p["gpus"] else 0.0,
            cost=p["busy_seconds"] / 3600 * p["price_per_gpu_hour"],
            queue_depth_max=max((d for _, d in depth), default=0),
            queue_depth_mean=weighted / run.end if run.end > 0 else 0.0,
            queue_depth_hourly_max=_hourly_max(depth, run.end),
        )
    met = sum(b.report is not None and b.report.met for b in run.batches)
    return RunResult(
        mode=run.mode,
        batches=len(run.batches),
        requests=sum(b.arrival.requests for b in run.batches),
        unfinished=sum(b.report is None for b in run.batches),
        attainment=met / len(run.batches) if run.batches else 1.0,
        tiers=tiers,
        cost=sum(p.cost for p in pools.values()),
        provisioned_cost=sum(p["gpus"] * p["price_per_gpu_hour"] for p in run.pools.values()) * horizon / 3600,
        pools={str(kind): result for kind, result in pools.items()},
        placed_on_spot=sum(b.runs[0].pool == "spot" for b in run.batches if b.runs),
        placed_on_dedicated=sum(b.runs[0].pool == "dedicated" for b in run.batches if b.runs),
        escalations=sum(b.escalated for b in run.batches),
        preempted_runs=sum(b.preemptions for b in run.batches),
        reclaims=run.reclaims,
        horizon_hours=horizon / 3600,
    )


def with_knob(scenario: Scenario, knob: str, value: float) -> Scenario:
    """The scenario with one sweep knob set (a settings override or a pool size)."""
    if knob not in KNOBS:
        raise ScenarioError(f"unknown knob; one of {', '.join(KNOBS)}", source="--sweep", field=knob)
    path = KNOBS[knob][0].split(".")
    data = scenario.model_dump()
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = int(value) if path[-1] in ("gpus", "shard_size") else value
    return Scenario.model_validate({**data, "base_dir": scenario.base_dir})


def policy_settings(settings: Settings) -> dict[str, Any]:
    """The settings the policy ran with (what a sweep or a tuning changes)."""
    return {
        "pools.safety_factor": settings.pools.safety_factor,
        "pools.spot_requests_per_second": settings.pools.spot_requests_per_second,
        "pools.dedicated_requests_per_second": settings.pools.dedicated_requests_per_second,
        "sla.at_risk_margin_seconds": settings.sla.at_risk_margin_seconds,
        "sla.progress_interval_seconds": settings.sla.progress_interval_seconds,
        "sla.rate_window_seconds": settings.sla.rate_window_seconds,
        "sla.tier_hours": settings.sla.hours(),
        "storage.shard_size": settings.storage.shard_size_for(None),
    }


def run_scenario(
    scenario: Scenario,
    *,
    base_settings: Settings | None = None,
    queue_priorities: dict[str, dict[str, int]] | None = None,
    sweep: tuple[str, list[float]] | None = None,
    baselines: bool = True,
) -> tuple[FleetReport, dict[str, FleetRun]]:
    """Simulate the policy and the baselines on the same arrivals (and each sweep value); return
    the report and the raw runs (for the plots)."""
    began = time.perf_counter()
    if sweep is not None and sweep[0] not in KNOBS:
        raise ScenarioError(f"unknown knob; one of {', '.join(KNOBS)}", source="--sweep", field=sweep[0])
    settings = scenario.build_settings(base_settings)
    arrived: list[Arrival] = arrivals(scenario)
    measured = measured_throughput(scenario)

    def one(sc: Scenario, mode: Mode) -> FleetRun:
        own = sc.build_settings(base_settings)
        return Fleet(sc, own, arrived, mode=mode, queue_priorities=queue_priorities, measured=measured).run()

    runs = {"policy": one(scenario, "policy")}
    if baselines:
        runs["all-dedicated"] = one(scenario, "all-dedicated")
        runs["all-spot"] = one(scenario, "all-spot")
    results = {name: summarize(run, scenario) for name, run in runs.items()}
    policy = results["policy"]
    ded = results.get("all-dedicated")
    spot = results.get("all-spot")
    points = []
    if sweep is not None:
        knob, values = sweep
        for value in values:
            sc = with_knob(scenario, knob, value)
            r = summarize(one(sc, "policy"), sc)
            points.append(
                {
                    "knob": knob,
                    "value": value,
                    "attainment": r.attainment,
                    "min_tier_attainment": min((t.attainment for t in r.tiers.values()), default=1.0),
                    "breaches": sum(t.breaches for t in r.tiers.values()),
                    "cost": r.cost,
                    "provisioned_cost": r.provisioned_cost,
                    "cost_vs_all_dedicated": r.cost / ded.cost if ded and ded.cost else None,
                    "escalations": r.escalations,
                    "placed_on_spot": r.placed_on_spot,
                }
            )
    ratio = policy.cost / ded.cost if ded and ded.cost else None
    report = FleetReport(
        scenario=scenario.name,
        seed=scenario.seed,
        policy_settings=policy_settings(settings),
        policy=policy,
        baselines={k: v for k, v in results.items() if k != "policy"},
        cost_vs_all_dedicated=ratio,
        cost_vs_all_spot=policy.cost / spot.cost if spot and spot.cost else None,
        targets={
            "attainment_every_tier_at_least_99_9_percent": all(t.attainment >= TARGET_ATTAINMENT for t in policy.tiers.values()),
            "cost_at_most_0_6_of_all_dedicated": ratio is not None and ratio <= TARGET_COST_RATIO,
        },
        sweep=points,
        wall_seconds=round(time.perf_counter() - began, 2),
    )
    return report, runs
