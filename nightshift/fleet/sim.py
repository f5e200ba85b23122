"""The discrete-event fleet (SimPy): arrivals, batch runs on GPUs, spot reclaims.

Every decision is taken by the product's own code, imported and called:

- placement: ``core.placement.choose_pool`` with ``settings.pools.safety_factor``, on pool states
  built like ``orchestration.submit`` builds them (throughput measured by finished batches through
  ``PoolThroughput``, else the settings' guess);
- the SLA watch of a spot run: ``core.progress.RateWindow`` and ``assess_progress`` published on
  every finished shard and every ``progress_interval_seconds``, as nightshift/orchestration/watch.py does, and the
  escalation rule ``core.progress.escalates_to_dedicated``;
- resume from finished shards: ``core.sharding.shard_bounds`` with ``settings.storage.shard_size``
  (a reclaimed or cancelled run keeps the shards it finished, loses the one in flight);
- the order waiting runs start in: ``core.placement.queue_order``;
- deadlines and the final verdict: ``core.sla.deadline_for`` and ``sla_report``.

What is modelled, not called: one batch run holds one GPU; a GPU that finished a run stays warm
(``engine.keep_warm``) and the next run skips start-up; a reclaimed spot GPU takes no new run
during its notice, keeps the running one until the notice ends, then is replaced after a delay;
moving a run (preemption, escalation) is immediate (automation latency is not modelled);
validation, sharding and publishing take no time.
"""

from __future__ import annotations

import bisect
import heapq
import random
from collections.abc import Generator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

import simpy

from nightshift.core.placement import Placement, PoolState, PoolThroughput, ThroughputSample, choose_pool, queue_order
from nightshift.core.progress import RateSample, RateWindow, RiskThresholds, assess_progress, escalates_to_dedicated
from nightshift.core.sharding import shard_bounds
from nightshift.core.sla import SLAReport, deadline_for, sla_report
from nightshift.fleet.scenario import Arrival, Mode, Scenario, ScenarioError
from nightshift.settings import Settings

Kind = Literal["spot", "dedicated"]
#: A SimPy process body: yields events, resumed with their values.
Process = Generator[simpy.Event, object, None]

#: How long after the last arrival a run may still go on before the simulation gives up on it (a
#: pool with no GPU never finishes its queue): unfinished batches are reported as breached.
DRAIN_CAP_SECONDS = 30 * 86_400.0


@dataclass
class RunRecord:
    """One flow run of a batch: where, when, and how it ended."""

    pool: Kind
    queued_at: float
    started: float
    ended: float
    outcome: Literal["finished", "preempted", "escalated"]
    requests: int


@dataclass
class BatchState:
    """A batch through the simulation: its shards, runs and SLA verdict."""

    arrival: Arrival
    deadline: float
    deadline_at: datetime
    shard_ends: list[int]
    speed: float = 1.0
    placement: Placement | None = None
    done_shards: int = 0
    runs: list[RunRecord] = field(default_factory=list)
    preemptions: int = 0
    escalated: bool = False
    finished: float | None = None
    report: SLAReport | None = None

    @property
    def done_requests(self) -> int:
        """Requests in the finished shards (what a new run reuses)."""
        return self.shard_ends[self.done_shards - 1] if self.done_shards else 0


@dataclass
class _Gpu:
    index: int
    alive: bool = True
    draining: bool = False
    warm: bool = False
    idle: bool = True
    run: _Run | None = None


@dataclass
class _Run:
    batch: BatchState
    pool: _Pool
    queued_at: float
    gpu: _Gpu | None = None
    process: simpy.Process | None = None


class _Pool:
    def __init__(self, kind: Kind, name: str, gpus: int, price: float, rps: float, tps: float | None, log: PoolThroughput):
        self.kind, self.name, self.price, self.rps, self.tps = kind, name, price, rps, tps
        self.gpus = [_Gpu(i) for i in range(gpus)]
        self.idle: list[_Gpu] = list(reversed(self.gpus))  # a stack: the most recently freed (warm) GPU first
        self.waiting: list[tuple[tuple, int, _Run]] = []
        self.throughput = log
        self.busy_seconds = 0.0

    def rate(self, batch: Arrival) -> float:
        """Requests/s of ``batch`` on one GPU here: the request rate, or the token rate if lower."""
        if self.tps is None or batch.tokens <= 0:
            return self.rps
        return min(self.rps, self.tps * batch.requests / batch.tokens)

    def state(self, guess: float) -> PoolState:
        """What placement sees of this pool now (as ``orchestration.submit`` reads it from Prefect)."""
        alive = [g for g in self.gpus if g.alive]
        return PoolState(
            name=self.name,
            kind=self.kind,
            online_workers=sum(not g.draining for g in alive),
            concurrency_limit=len(alive),
            running=sum(g.run is not None for g in alive),
            queued=len(self.waiting),
            requests_per_second=self.throughput.requests_per_second() or guess,
        )


@dataclass
class FleetRun:
    """Everything one simulation produced, for the report."""

    mode: Mode
    batches: list[BatchState]
    pools: dict[Kind, dict[str, float]]
    cost_segments: list[tuple[float, float, float]]
    queue_depth: list[tuple[float, int, int]]
    reclaims: int
    end: float


def measured_throughput(scenario: Scenario) -> dict[Kind, PoolThroughput]:
    """The pools' throughput logs the product recorded in the scenario's store (none without one)."""
    if scenario.model.store is None:
        return {}
    from nightshift.settings import StorageConfig
    from nightshift.storage import ArtifactStore
    from nightshift.storage.pools import read_throughput

    store = ArtifactStore.from_config(StorageConfig(root=scenario.model.store))
    model = scenario.model.name or Settings().catalogue().default
    return {
        "spot": read_throughput(store, scenario.pools.spot.name, model),
        "dedicated": read_throughput(store, scenario.pools.dedicated.name, model),
    }


class Fleet:
    """One simulation of a scenario under one policy mode."""

    def __init__(
        self,
        scenario: Scenario,
        settings: Settings,
        arrivals: list[Arrival],
        *,
        mode: Mode = "policy",
        queue_priorities: dict[str, dict[str, int]] | None = None,
        measured: dict[Kind, PoolThroughput] | None = None,
    ) -> None:
        """``queue_priorities``: pool kind → job priority → its work queue's priority number (1 first);
        absent: one queue, FIFO."""
        self.scenario, self.settings, self.mode = scenario, settings, mode
        self.arrivals = arrivals
        self.queue_priorities = queue_priorities or {}
        self.env = simpy.Environment()
        self.start = scenario.start
        self.thresholds = RiskThresholds(
            at_risk_margin_seconds=settings.sla.at_risk_margin_seconds,
            min_requests_per_second=settings.sla.min_requests_per_second,
            max_error_rate=settings.sla.max_error_rate,
            max_accelerator_utilisation=settings.sla.max_accelerator_utilisation,
        )
        spec, model = scenario.pools, scenario.model
        # Read once per report by the caller; a lone simulation reads the store itself.
        measured = measured_throughput(scenario) if measured is None else measured
        total = spec.spot.gpus + spec.dedicated.gpus
        spot_gpus = {"policy": spec.spot.gpus, "all-dedicated": 0, "all-spot": total}[mode]
        dedicated_gpus = {"policy": spec.dedicated.gpus, "all-dedicated": total, "all-spot": 0}[mode]

        def speed(kind: Kind, override: float | None) -> float:
            if override is not None:
                return override
            if model.requests_per_second is not None:
                return model.requests_per_second
            rps = measured[kind].requests_per_second() if kind in measured else None
            if rps is None:
                raise ScenarioError(f"no measured throughput for the {kind} pool in the store", source=scenario.name)
            return rps

        def pool(kind: Kind, gpus: int) -> _Pool:
            own = spec.spot if kind == "spot" else spec.dedicated
            return _Pool(
                kind,
                own.name,
                gpus,
                own.price_per_gpu_hour,
                speed(kind, own.requests_per_second),
                own.tokens_per_second or model.tokens_per_second,
                measured.get(kind, PoolThroughput(pool=own.name)),
            )

        self.pools: dict[Kind, _Pool] = {"spot": pool("spot", spot_gpus), "dedicated": pool("dedicated", dedicated_gpus)}
        self.batches: list[BatchState] = []
        self.cost_segments: list[tuple[float, float, float]] = []
        self.queue_depth: list[tuple[float, int, int]] = [(0.0, 0, 0)]
        self.reclaims = 0
        self._seq = 0
        self._pending = len(arrivals)
        self._all_done = self.env.event()

    # -- time ------------------------------------------------------------------------------
    def at(self, t: float) -> datetime:
        """The simulated clock as a datetime (what the product's functions take)."""
        return self.start + timedelta(seconds=t)

    # -- the simulation --------------------------------------------------------------------
    def run(self) -> FleetRun:
        """Simulate until every batch has finished (or the drain cap); return the record."""
        env = self.env
        env.process(self._arrive())
        spot = self.pools["spot"]
        spec = self.scenario.pools.spot
        if spot.gpus and spec.preemptions_per_gpu_hour > 0:
            for gpu in spot.gpus:
                # One stream per GPU index: the baselines' first GPUs see the policy run's reclaims.
                rng = random.Random(f"{self.scenario.seed}:reclaim:{gpu.index}")
                env.process(self._reclaimer(gpu, rng))
        if spot.gpus:
            for reclaim in spec.reclaims:
                env.process(self._reclaim_at(reclaim.at_seconds, spot.gpus[reclaim.gpu % len(spot.gpus)]))
        if self._pending:
            cap = self.scenario.duration_hours * 3600 + DRAIN_CAP_SECONDS
            env.run(until=simpy.AnyOf(env, [self._all_done, env.timeout(cap)]))
        return FleetRun(
            mode=self.mode,
            batches=self.batches,
            pools={
                kind: {"gpus": len(p.gpus), "busy_seconds": p.busy_seconds, "price_per_gpu_hour": p.price}
                for kind, p in self.pools.items()
            },
            cost_segments=self.cost_segments,
            queue_depth=self.queue_depth,
            reclaims=self.reclaims,
            end=env.now,
        )

    def _arrive(self) -> Process:
        sla_hours = self.settings.sla.hours()
        shard_size = self.settings.storage.shard_size_for(None)  # fixed, or the size before any measurement
        for a in self.arrivals:
            if a.at > self.env.now:
                yield self.env.timeout(a.at - self.env.now)
            deadline_at = deadline_for(self.at(a.at), a.tier, sla_hours)
            batch = BatchState(
                arrival=a,
                deadline=(deadline_at - self.start).total_seconds(),
                deadline_at=deadline_at,
                shard_ends=[stop for _, stop in shard_bounds(a.requests, shard_size)],
                speed=self._speed(a),
            )
            self.batches.append(batch)
            self._enqueue(batch, self._place(batch))

    def _speed(self, a: Arrival) -> float:
        """The batch's own speed factor: seeded by its name, so every mode runs it equally fast."""
        sigma = self.scenario.model.speed_sigma
        return random.Random(f"{self.scenario.seed}:speed:{a.name}").lognormvariate(0.0, sigma) if sigma else 1.0

    def _place(self, batch: BatchState) -> _Pool:
        if self.mode == "all-dedicated":
            return self.pools["dedicated"]
        if self.mode == "all-spot":
            return self.pools["spot"]
        cfg = self.settings.pools
        batch.placement = choose_pool(
            requests=batch.arrival.requests,
            now=self.at(self.env.now),
            deadline=batch.deadline_at,
            spot=self.pools["spot"].state(cfg.spot_requests_per_second),
            dedicated=self.pools["dedicated"].state(cfg.dedicated_requests_per_second),
            safety_factor=cfg.safety_factor,
        )
        return self.pools[batch.placement.kind]

    def _enqueue(self, batch: BatchState, pool: _Pool) -> None:
        now = self.env.now
        rank = self.queue_priorities.get(pool.kind, {}).get(batch.arrival.priority, 0)
        key = queue_order(queue_priority=rank, scheduled_at=self.at(now))
        self._seq += 1
        heapq.heappush(pool.waiting, (key, self._seq, _Run(batch=batch, pool=pool, queued_at=now)))
        self._dispatch(pool)
        self._record_depth()

    def _record_depth(self) -> None:
        depth = (self.env.now, len(self.pools["spot"].waiting), len(self.pools["dedicated"].waiting))
        if depth[1:] != self.queue_depth[-1][1:]:
            self.queue_depth.append(depth)

    def _dispatch(self, pool: _Pool) -> None:
        changed = False
        while pool.waiting and pool.idle:
            gpu = pool.idle.pop()
            gpu.idle = False
            _, _, run = heapq.heappop(pool.waiting)
            run.gpu, gpu.run = gpu, run
            run.process = self.env.process(self._run(run))
            changed = True
        if changed:
            self._record_depth()

    def _release(self, pool: _Pool, gpu: _Gpu) -> None:
        gpu.run = None
        if gpu.alive and not gpu.draining and not gpu.idle:
            gpu.idle = True
            pool.idle.append(gpu)
        self._dispatch(pool)

    # -- one flow run on one GPU -----------------------------------------------------------
    def _run(self, run: _Run) -> Process:
        env, batch, pool, gpu = self.env, run.batch, run.pool, run.gpu
        assert gpu is not None
        start = env.now
        rate = pool.rate(batch.arrival) * batch.speed
        startup = 0.0 if gpu.warm else self.scenario.model.startup_seconds
        first, reused = batch.done_shards, batch.done_requests
        # When each remaining shard is written, one after the other on this GPU.
        ends = [start + startup + (stop - reused) / rate for stop in batch.shard_ends[first:]]
        outcome: Literal["finished", "preempted", "escalated"] = "finished"
        stop_at = ends[-1]
        if self.mode == "policy" and pool.kind == "spot":
            escalation = self._watch(batch, pool, start, ends, batch.shard_ends[first:], reused)
            if escalation is not None:
                stop_at, outcome = escalation, "escalated"
        try:
            yield env.timeout(stop_at - start)
        except simpy.Interrupt:
            outcome = "preempted"
        now = env.now
        gpu.warm = gpu.warm or now >= start + startup
        batch.done_shards = first + bisect.bisect_right(ends, now)
        if batch.done_shards == len(batch.shard_ends):
            outcome = "finished"  # the last shard was written in the same instant as the reclaim
        pool.busy_seconds += now - start
        self.cost_segments.append((start, now, pool.price))
        batch.runs.append(RunRecord(pool.kind, run.queued_at, start, now, outcome, batch.done_requests - reused))
        if outcome == "finished":
            self._finish(batch, pool, start, now, batch.done_requests - reused)
        elif outcome == "escalated":
            batch.escalated = True
            self._enqueue(batch, self.pools["dedicated"])
        else:
            batch.preemptions += 1
            # The preemption automation resumes a crashed spot run on dedicated; with no dedicated
            # pool (the all-spot baseline) the batch waits for spot again.
            self._enqueue(batch, self.pools["spot" if self.mode == "all-spot" else "dedicated"])
        self._release(pool, gpu)

    def _finish(self, batch: BatchState, pool: _Pool, start: float, now: float, engine_requests: int) -> None:
        a = batch.arrival
        batch.finished = now
        tokens = round(a.tokens * engine_requests / a.requests)
        batch.report = sla_report(
            tier=a.tier,
            submitted_at=self.at(a.at),
            finished_at=self.at(now),
            requests=engine_requests,
            tokens=tokens,
            busy_seconds=now - start,
            deadline=batch.deadline_at,
        )
        if engine_requests > 0 and now > start:
            # What check-sla records: placement estimates later runtimes on this pool from it.
            pool.throughput = pool.throughput.record(
                ThroughputSample(at=self.at(now), requests=engine_requests, seconds=now - start)
            )
        self._pending -= 1
        if self._pending == 0:
            self._all_done.succeed()

    def _watch(
        self, batch: BatchState, pool: _Pool, start: float, ends: list[float], stops: list[int], reused: int
    ) -> float | None:
        """When the run's SLA watch first raises a verdict that escalates it, or None.

        Replays nightshift/orchestration/watch.py on the run's own timeline: a publication at start, on every written
        shard, and ``progress_interval_seconds`` after the last one while a shard is in flight.
        Pure, so it can be replayed ahead of the clock: a reclaim that ends the run earlier
        discards the rest.
        """
        sla = self.settings.sla
        a = batch.arrival
        window = RateWindow(seconds=sla.rate_window_seconds)
        fallback = pool.throughput.requests_per_second()
        tokens_per_request = a.tokens / a.requests
        interval = sla.progress_interval_seconds

        def escalates(t: float, done: int) -> bool:
            nonlocal window
            now = self.at(t)
            window = window.add(RateSample(at=now, requests=done, tokens=round(done * tokens_per_request)))
            rps, tps = window.rates()
            p = assess_progress(
                batch_id=a.name,
                version="simulated",
                tier=a.tier.value,
                pool=pool.name,
                total=a.requests,
                completed=done,
                failed=0,
                now=now,
                deadline=batch.deadline_at,
                requests_per_second=rps,
                tokens_per_second=tps,
                fallback_requests_per_second=fallback,
                thresholds=self.thresholds,
            )
            return escalates_to_dedicated(p.risk, pool.kind)

        last, done = start, reused
        if escalates(start, done):
            return start
        for i, (end, stop) in enumerate(zip(ends, stops, strict=True)):
            while last + interval < end:
                last += interval
                if escalates(last, done):
                    return last
            last, done = end, stop
            if i == len(ends) - 1:
                return None  # the last shard: the batch is done, nothing left to move
            if escalates(end, done):
                return end
        return None

    # -- spot reclaims ---------------------------------------------------------------------
    def _reclaimer(self, gpu: _Gpu, rng: random.Random) -> Process:
        rate = self.scenario.pools.spot.preemptions_per_gpu_hour / 3600
        while True:
            yield self.env.timeout(rng.expovariate(rate))
            yield from self._reclaim(gpu)

    def _reclaim_at(self, at: float, gpu: _Gpu) -> Process:
        yield self.env.timeout(at)
        yield from self._reclaim(gpu)

    def _reclaim(self, gpu: _Gpu) -> Process:
        spec, pool = self.scenario.pools.spot, self.pools["spot"]
        if not gpu.alive or gpu.draining:
            return
        self.reclaims += 1
        gpu.draining = True
        if gpu.idle:
            gpu.idle = False
            pool.idle.remove(gpu)
        yield self.env.timeout(spec.notice_seconds)
        gpu.alive = False
        run = gpu.run
        if run is not None and run.process is not None and run.process.is_alive:
            run.process.interrupt("reclaimed")
        yield self.env.timeout(spec.replacement_seconds)
        gpu.alive, gpu.draining, gpu.warm = True, False, False
        if gpu.run is None and not gpu.idle:
            gpu.idle = True
            pool.idle.append(gpu)
            self._dispatch(pool)
