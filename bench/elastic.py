"""Elastic engines bench: a burst of 10 batches on an elastic fleet against a fixed fleet of the maximum (issue 24).

Two figures:
  (1) time to scale up   from the burst's first batch until the elastic fleet has the replicas its
      deadlines first asked for, all up (engine starts included);
  (2) engine-seconds     replica time paid by the elastic fleet (starts, work, idle until retired) ÷
      the fixed fleet's over the same window, with every deadline met in both. Target ≤ 0.70.

The window is the burst's: from the first batch's arrival until the last batch is done in both fleets
and the elastic fleet has retired its replicas. The fixed fleet is warm and stays up the whole window
(it is up whatever the queue holds: that is what a fixed `engine.replicas` costs); the elastic one
starts from zero.

A simulation, in steps of one second, of the controller's own decisions: every tick calls the
functions the engine controller calls (`core.demand.replica_target`, `plan_scale`) with the queued
work and deadlines. Replicas serve the batches earliest deadline first (the engine's priority
order) at a fixed rate each. A real run on this 2-CPU machine could hold two tiny replicas, too few
to show a fleet; the replica rate and start time are parameters, their defaults measured here
(`--rate`: SmolLM2-135M on one CPU replica, PLATFORM.md; `--start`: replica start on a fresh node of
the autoscaling test cluster, tests/engine/test_autoscale.py, ~30 s).

Usage (from the repo root, in the venv):
    python bench/elastic.py                         # defaults below
    python bench/elastic.py --max-replicas 16 --start 120 --rate 40   # a GPU-like fleet
Figures go to bench/results/elastic-<timestamp>.json.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from nightshift.core.demand import ReplicaState, WorkItem, plan_scale, replica_target

RESULTS_DIR = Path(__file__).resolve().parent / "results"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Batch:
    key: str
    arrives: float
    requests: int
    deadline: float
    left: float = 0.0
    done_at: float | None = None


@dataclass
class Replica:
    name: str
    created: float
    ready_at: float
    idle_since: float
    busy: bool = False


@dataclass
class Run:
    engine_seconds: float = 0.0
    replicas_over_time: list[int] = field(default_factory=list)
    scale_events: int = 0
    peak: int = 0
    first_up_at: float | None = None
    peak_up_at: float | None = None


def burst(n: int, seed: int, deadlines: list[float]) -> list[Batch]:
    """``n`` batches arriving within a minute: sizes 200..2,000 requests, each due one of ``deadlines`` seconds out."""
    rng = random.Random(seed)
    batches = []
    for i in range(n):
        arrives = rng.uniform(0, 60)
        requests = rng.randint(200, 2000)
        batches.append(Batch(f"b{i}", arrives, requests, arrives + rng.choice(deadlines)))
    return sorted(batches, key=lambda b: b.arrives)


def serve(batches: list[Batch], capacity: float, now: float) -> float:
    """Give ``capacity`` requests of engine time to the arrived batches, earliest deadline first; what was used."""
    used = 0.0
    for b in sorted((b for b in batches if b.arrives <= now and b.left > 0), key=lambda b: b.deadline):
        take = min(b.left, capacity - used)
        b.left -= take
        used += take
        if b.left <= 1e-9:
            b.left, b.done_at = 0.0, now + 1
        if used >= capacity:
            break
    return used


def simulate(
    batches: list[Batch], *, elastic: bool, args: argparse.Namespace, until: float | None = None
) -> tuple[Run, list[Batch]]:
    """One fleet over the burst, a tick a second; ``until``: keep the (fixed) fleet up until then."""
    batches = [Batch(b.key, b.arrives, b.requests, b.deadline, float(b.requests)) for b in batches]
    run = Run()
    replicas: list[Replica] = []
    if not elastic:
        replicas = [Replica(f"r{i}", 0.0, 0.0, 0.0) for i in range(args.max_replicas)]
    now, counter = 0.0, len(replicas)
    while True:
        everything_done = all(b.done_at is not None for b in batches)
        if elastic:
            work = [
                WorkItem(key=b.key, remaining=b.left, deadline=T0 + timedelta(seconds=b.deadline))
                for b in batches
                if b.arrives <= now and b.left > 0
            ]
            target = replica_target(
                work, now=T0 + timedelta(seconds=now), rate_per_replica=args.rate, safety_factor=args.safety,
                minimum=0, maximum=args.max_replicas,
            ).replicas  # fmt: skip
            states = [
                ReplicaState(
                    name=r.name,
                    in_flight=int(r.busy),
                    idle_since=None if r.busy else T0 + timedelta(seconds=r.idle_since),
                    started_at=T0 + timedelta(seconds=r.created),
                )  # fmt: skip
                for r in replicas
            ]
            plan = plan_scale(target, states, now=T0 + timedelta(seconds=now), idle_seconds=args.idle)
            replicas = [r for r in replicas if r.name not in plan.retire]
            for _ in range(plan.add):
                replicas.append(Replica(f"r{counter}", now, now + args.start, now + args.start))
                counter += 1
            run.scale_events += plan.add + len(plan.retire)
            ready = [r for r in replicas if r.ready_at <= now]
            if run.first_up_at is None and ready:
                run.first_up_at = now
            if ready and len(ready) == max(run.replicas_over_time, default=0) and len(ready) == len(replicas):
                run.peak_up_at = run.peak_up_at if run.peak_up_at is not None and len(ready) <= run.peak else now
                run.peak = max(run.peak, len(ready))
            if everything_done and not replicas:
                break
        elif everything_done and now >= (until or 0):
            break
        ready = [r for r in replicas if r.ready_at <= now]
        used = serve(batches, len(ready) * args.rate, now)
        # Work goes to the fewest replicas that carry it (the feed fills replicas in turn); the rest idle.
        busy_count = min(len(ready), int(-(-used // args.rate))) if used > 0 else 0
        for i, r in enumerate(ready):
            r.busy = i < busy_count
            if r.busy:
                r.idle_since = now + 1
        run.engine_seconds += len(replicas)
        run.replicas_over_time.append(len(replicas))
        now += 1
        if now > 24 * 3600:
            raise RuntimeError("simulation did not finish in a day")
    return run, batches


#: Deadline mixes (seconds from a batch's arrival): the tiers' spread, and a burst due so soon that it
#: needs most of the maximum fleet (where elastic has least to save).
SCENARIOS = {"mixed": [600.0, 1200.0, 1800.0, 2400.0], "tight": [300.0, 600.0, 900.0, 1800.0]}


def scenario(name: str, deadlines: list[float], args: argparse.Namespace) -> dict[str, Any]:
    """Both fleets on one burst; the figures of the comparison."""
    batches = burst(args.batches, args.seed, deadlines)
    elastic, elastic_batches = simulate(batches, elastic=True, args=args)
    fixed, fixed_batches = simulate(batches, elastic=False, args=args, until=len(elastic.replicas_over_time))
    window = max(len(elastic.replicas_over_time), len(fixed.replicas_over_time))

    def met(done: list[Batch]) -> int:
        return sum(b.done_at is not None and b.done_at <= b.deadline for b in done)

    ratio = elastic.engine_seconds / fixed.engine_seconds
    return {
        "scenario": name,
        "deadlines_s": deadlines,
        "batches": [
            {"key": b.key, "arrives_s": round(b.arrives, 1), "requests": b.requests, "deadline_s": round(b.deadline, 1)}
            for b in batches
        ],
        "requests": sum(b.requests for b in batches),
        "window_seconds": window,
        "time_to_first_replica_seconds": elastic.first_up_at,
        "time_to_scale_up_seconds": elastic.peak_up_at,
        "peak_replicas": elastic.peak,
        "elastic": {
            "engine_seconds": elastic.engine_seconds, "deadlines_met": met(elastic_batches),
            "last_done_s": max(b.done_at or 0 for b in elastic_batches), "scale_events": elastic.scale_events,
        },
        "fixed_max": {
            "replicas": args.max_replicas, "engine_seconds": fixed.engine_seconds, "deadlines_met": met(fixed_batches),
            "last_done_s": max(b.done_at or 0 for b in fixed_batches),
        },
        "engine_seconds_ratio": round(ratio, 3),
        "meets_target": ratio <= TARGET and met(elastic_batches) == met(fixed_batches) == len(batches),
    }  # fmt: skip


TARGET = 0.70


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--max-replicas", type=int, default=8, help="engine.max_replicas, and the fixed fleet's size")
    parser.add_argument("--rate", type=float, default=5.0, help="requests/s of one replica")
    parser.add_argument("--start", type=float, default=30.0, help="seconds from asking for a replica to its first shard")
    parser.add_argument("--idle", type=float, default=60.0, help="engine.idle_seconds")
    parser.add_argument("--safety", type=float, default=1.5, help="pools.safety_factor")
    parser.add_argument("--seed", type=int, default=24)
    args = parser.parse_args()

    results = [scenario(name, deadlines, args) for name, deadlines in SCENARIOS.items()]
    result: dict[str, Any] = {
        "bench": "elastic",
        "at": datetime.now(UTC).isoformat(),
        "kind": "simulation of the controller's rule (core.demand), one-second ticks",
        "parameters": vars(args),
        "target_ratio": TARGET,
        "scenarios": results,
    }
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"elastic-{datetime.now(UTC):%Y%m%d-%H%M%S}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    for r in results:
        e, f = r["elastic"], r["fixed_max"]
        due = "/".join(f"{d:.0f}" for d in r["deadlines_s"])
        print(f"[{r['scenario']}] burst of {len(r['batches'])} batches, {r['requests']} requests, each due {due} s after arrival")
        print(
            f"  time to scale up: first replica up {r['time_to_first_replica_seconds']:.0f} s, the peak of"
            f" {r['peak_replicas']} up {r['time_to_scale_up_seconds']:.0f} s after the burst began"
        )
        print(
            f"  engine-seconds over {r['window_seconds']} s: elastic {e['engine_seconds']:.0f} vs fixed {f['replicas']}"
            f" {f['engine_seconds']:.0f} = {r['engine_seconds_ratio']:.0%} (target <= {TARGET:.0%}:"
            f" {'met' if r['meets_target'] else 'NOT met'})"
        )
        print(
            f"  deadlines met: elastic {e['deadlines_met']}/{len(r['batches'])}, fixed {f['deadlines_met']}/{len(r['batches'])}"
        )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
