"""PNG plots of a fleet report (matplotlib, imported here only, on the Agg backend)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nightshift.core.sla import Tier
from nightshift.fleet.report import FleetReport
from nightshift.fleet.sim import FleetRun

_COLOURS = {"policy": "tab:blue", "all-dedicated": "tab:red", "all-spot": "tab:green"}


def _cumulative_cost(run: FleetRun, grid: np.ndarray) -> np.ndarray:
    """Billed USD up to each grid time: every run segment counts for the part of it already spent."""
    if not run.cost_segments:
        return np.zeros_like(grid)
    seg = np.array(run.cost_segments)
    start, end, price = seg[:, 0], seg[:, 1], seg[:, 2] / 3600
    spent = np.clip(grid[:, None] - start[None, :], 0, (end - start)[None, :])
    return (spent * price[None, :]).sum(axis=1)


def write_plots(report: FleetReport, runs: dict[str, FleetRun], out: Path) -> list[Path]:
    """Write cost.png, slack.png, queue.png (and sweep.png after a sweep) into ``out``; return their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    horizon = max(run.end for run in runs.values())
    grid = np.linspace(0, horizon, 400)
    hours = grid / 3600

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, run in runs.items():
        ax.plot(hours, _cumulative_cost(run, grid), label=name, color=_COLOURS.get(name))
    ax.set(xlabel="hours since start", ylabel="GPU cost billed so far (USD)", title=f"{report.scenario}: cost over time")
    ax.grid(alpha=0.3)
    ax.legend()
    written.append(_save(fig, out / "cost.png"))

    policy = runs["policy"]
    tiers = [t for t in Tier if any(b.arrival.tier is t for b in policy.batches)]
    fig, axes = plt.subplots(1, max(len(tiers), 1), figsize=(3.2 * max(len(tiers), 1), 4), squeeze=False)
    for ax, tier in zip(axes[0], tiers, strict=False):
        slack = [b.report.slack_seconds / 3600 for b in policy.batches if b.arrival.tier is tier and b.report is not None]
        ax.hist(slack, bins=40, color="tab:blue")
        ax.axvline(0, color="tab:red", linestyle="--", linewidth=1)
        r = report.policy.tiers[tier.value]
        ax.set(title=f"{tier.value}: {r.attainment:.2%} met", xlabel="slack at finish (h)", ylabel="batches")
        ax.set_xlim(left=min(0, *slack) - 0.5 if slack else -0.5)
    fig.suptitle(f"{report.scenario}: slack per tier under the policy (left of the red line: late)")
    written.append(_save(fig, out / "slack.png"))

    fig, ax = plt.subplots(figsize=(8, 4.5))
    t = np.array([d[0] for d in policy.queue_depth] + [policy.end]) / 3600
    for i, kind in ((1, "spot"), (2, "dedicated")):
        depth = [d[i] for d in policy.queue_depth]
        ax.step(t, [*depth, depth[-1]], where="post", label=f"{kind} pool", linewidth=1)
    ax.set(xlabel="hours since start", ylabel="runs waiting for a GPU", title=f"{report.scenario}: queue depth (policy)")
    ax.grid(alpha=0.3)
    ax.legend()
    written.append(_save(fig, out / "queue.png"))

    if report.sweep:
        knob = report.sweep[0]["knob"]
        attained = [100 * p["min_tier_attainment"] for p in report.sweep]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
        for ax, key, label in (
            (axes[0], "cost", "GPU cost billed for use (USD)"),
            (axes[1], "provisioned_cost", "GPU cost with every GPU kept up (USD)"),
        ):
            costs = [p[key] for p in report.sweep]
            ax.plot(costs, attained, marker="o")
            for i, (p, x, y) in enumerate(zip(report.sweep, costs, attained, strict=True)):
                ax.annotate(f"{p['value']:g}", (x, y), textcoords="offset points", xytext=(5, 5 if i % 2 else -12), fontsize=8)
            ax.axhline(99.9, color="tab:red", linestyle="--", linewidth=1, label="99.9 % target")
            ax.set(xlabel=label)
            ax.grid(alpha=0.3)
        axes[0].set(ylabel="lowest tier attainment (%)")
        axes[0].legend()
        fig.suptitle(f"{report.scenario}: attainment against cost as {knob} varies (labels: {knob})")
        written.append(_save(fig, out / "sweep.png"))
    return written


def _save(fig, path: Path) -> Path:  # noqa: ANN001 - a matplotlib Figure, imported lazily
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
