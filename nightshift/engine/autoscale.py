"""Elastic engines: a controller per engine spec that keeps as many replicas as the deadlines need.

Ray's autoscaler (KubeRay's in-tree one on a cluster) adds a node when an actor cannot be placed
and removes a node that sat idle; it knows resource requests, not deadlines. The controller is the
other half: a named, detached Ray actor per engine spec that hears every running batch's remaining
requests and deadline (``ElasticFleet.report``), turns them into a replica target
(``nightshift.core.demand``) and creates or retires named engine replicas to meet it. A replica
Ray cannot place yet is exactly the resource request that makes the autoscaler add a node; a
retired one frees its node for the autoscaler to remove.

A replica is retired only between shards (``_EngineActor.retire`` refuses while a shard is in
it), and the shard feed (``runner.run_shards``) sends a shard whose replica was lost or retired to
another one, so scaling down or losing a node never loses a request.

With ``engine.spot_resource`` and ``engine.dedicated_resource`` set (Ray custom resources the
node groups advertise), replicas ask for spot or dedicated nodes by the placement rule batches are
placed with (``core.demand.capacity_for`` → ``core.placement.choose_pool``); a spot node lost, or
spot nodes that do not come, make the rule put the next replicas on dedicated capacity.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from nightshift.core.demand import ReplicaState, WorkItem, capacity_for, plan_scale, replica_target
from nightshift.core.hashing import sha256_json
from nightshift.engine.runner import NAMESPACE, EngineSpec, ReplicaFleet, get_engine

log = logging.getLogger(__name__)

#: Seconds between two looks at the demand and the replicas (a replica starts in seconds to minutes).
TICK_SECONDS = 1.0
#: A batch's demand is dropped when its feed has not reported for this long (the run died).
DEMAND_TTL_SECONDS = 60.0
#: How long a start-engine hint (a batch being validated, its size not known yet) holds one replica.
HINT_SECONDS = 120.0
#: How often a running feed re-reads the replicas and reports its remaining work.
FEED_REFRESH_SECONDS = 1.0


class ScaleEvent(BaseModel):
    """One change the controller made: what, to which replica, and why."""

    at: float = Field(description="Wall clock (seconds since the epoch).")
    action: str = Field(description="'up': a replica created; 'down': retired; 'lost': gone without being retired.")
    replica: str
    pool: str | None
    reason: str


class FleetStatus(BaseModel):
    """What the controller wants and has, for tests, the bench and the metrics."""

    target: int
    replicas: list[str] = Field(description="Replicas created and not retired (up or still being placed).")
    ready: list[str] = Field(description="Replicas up and answering.")
    pool: str | None
    reason: str
    requests_per_second: float = Field(description="Per replica: measured, or the configured assumption.")
    demand: dict[str, float] = Field(description="Batch key → requests left.")
    events: list[ScaleEvent]


def controller_name(spec: EngineSpec) -> str:
    """The controller's actor name: one per engine spec (the replicas' names share its digest)."""
    return "autoscaler-" + spec.actor_name(0).removeprefix("engine-").rsplit("-", 1)[0]


class _Replica:
    def __init__(self, name: str, handle: Any, pool: str | None, created_at: float) -> None:
        self.name, self.handle, self.pool, self.created_at = name, handle, pool, created_at
        self.ready_ref: Any = handle.__ray_ready__.remote()
        self.ready = False
        self.load: dict[str, Any] | None = None


class _Controller:
    """Ray actor body: the demand of every batch on one engine spec, and the replicas serving it."""

    def __init__(self, spec: EngineSpec, safety_factor: float) -> None:
        self.spec, self.safety_factor = spec, safety_factor
        self._lock = threading.Lock()
        self._demand: dict[str, tuple[float, float, float]] = {}  # key → (requests left, deadline, reported at)
        self._replicas: dict[str, _Replica] = {}
        self._events: list[ScaleEvent] = []
        self._done = (0, 0.0)  # requests and busy seconds of replicas already retired
        self._spot_lost_at: float | None = None
        self._target, self._reason, self._rate = 0, "starting", spec.config.replica_requests_per_second
        self._pool: str | None = None
        self._metrics = _RayMetrics(spec)
        self._next_index = 0
        self._adopt()
        threading.Thread(target=self._loop, name="autoscaler", daemon=True).start()

    # -- what the feeds call -----------------------------------------------------------------
    def report(self, key: str, remaining: float, deadline: float) -> None:
        with self._lock:
            if remaining > 0:
                self._demand[key] = (remaining, deadline, time.time())
            else:
                self._demand.pop(key, None)

    def hint(self, key: str) -> None:
        """A batch will need this engine soon (it is being validated): hold one replica for a while."""
        with self._lock:
            if key not in self._demand:
                self._demand[key] = (1.0, time.time() + 365 * 86_400, time.time() + HINT_SECONDS - DEMAND_TTL_SECONDS)

    def replicas(self) -> list[str]:
        with self._lock:
            return list(self._replicas)

    def status(self) -> FleetStatus:
        with self._lock:
            return FleetStatus(
                target=self._target,
                replicas=list(self._replicas),
                ready=[r.name for r in self._replicas.values() if r.ready],
                pool=self._pool,
                reason=self._reason,
                requests_per_second=self._rate,
                demand={k: v[0] for k, v in self._demand.items()},
                events=list(self._events),
            )

    # -- the loop ----------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - one bad look must not stop the controller for good
                log.exception("autoscaler tick failed")
            time.sleep(TICK_SECONDS)

    def tick(self) -> None:
        """Look at the replicas and the demand once, and create or retire replicas to meet the target."""
        import ray

        cfg = self.spec.config
        now = time.time()
        self._observe(ray, now)
        with self._lock:
            self._demand = {k: v for k, v in self._demand.items() if now - v[2] < DEMAND_TTL_SECONDS}
            work = [WorkItem(key=k, remaining=v[0], deadline=_at(v[1])) for k, v in self._demand.items()]
            replicas = list(self._replicas.values())
        requests = self._done[0] + sum(r.load["requests"] for r in replicas if r.load)
        busy = self._done[1] + sum(r.load["busy_seconds"] for r in replicas if r.load)
        # Measured once a replica has been busy for a while; the configured guess until then.
        rate = requests / busy if busy >= 5.0 and requests > 0 else cfg.replica_requests_per_second
        target = replica_target(
            work, now=_at(now), rate_per_replica=rate, safety_factor=self.safety_factor,
            minimum=cfg.min_replicas, maximum=cfg.max_replicas,
        )  # fmt: skip
        pool: str | None = None
        reason = target.reason
        if cfg.spot_resource and cfg.dedicated_resource:
            spot_ok = self._spot_lost_at is None or now - self._spot_lost_at >= cfg.spot_wait_seconds
            pool, why = capacity_for(
                work, now=_at(now), replicas=target.replicas, rate_per_replica=rate,
                spot_available=spot_ok, safety_factor=self.safety_factor,
            )  # fmt: skip
            reason = f"{reason}; on {pool}: {why}"
        with self._lock:
            self._target, self._pool, self._reason, self._rate = target.replicas, pool, reason, rate
        # The rule picks the capacity of the replicas added now; replicas already up keep theirs
        # (moving a working replica costs an engine start). Lost ones are replaced on what it picks.
        plan = plan_scale(target.replicas, [_state(r, now) for r in replicas], now=_at(now), idle_seconds=cfg.idle_seconds)
        for name in plan.retire:
            self._retire(ray, name, reason)
        for _ in range(plan.add):
            self._add(pool, reason)
        self._metrics.record(target.replicas, sum(r.ready for r in self._replicas.values()), pool)

    def _observe(self, ray: Any, now: float) -> None:
        """Which replicas are up, what each holds, and which were lost (a spot one marks spot gone)."""
        cfg = self.spec.config
        for replica in list(self._replicas.values()):
            if not replica.ready:
                done, _ = ray.wait([replica.ready_ref], timeout=0)
                if done:
                    try:
                        ray.get(done[0])
                        replica.ready = True
                    except ray.exceptions.RayError as exc:
                        # An engine that cannot load says nothing about the capacity it was on.
                        failed = isinstance(exc, ray.exceptions.RayActorError) and exc.actor_init_failed
                        self._lost(replica, f"did not start: {type(exc).__name__}", capacity_lost=not failed)
                        continue
                elif replica.pool == "spot" and now - replica.created_at > cfg.spot_wait_seconds:
                    self._spot_lost_at = now
                    self._retire(ray, replica.name, f"no spot node came in {cfg.spot_wait_seconds:.0f}s", force=True)
                    continue
            if replica.ready:
                try:
                    replica.load = ray.get(replica.handle.load.remote(), timeout=30)
                except ray.exceptions.GetTimeoutError:
                    continue
                except ray.exceptions.RayError as exc:
                    self._lost(replica, f"lost: {type(exc).__name__}")

    def _lost(self, replica: _Replica, reason: str, *, capacity_lost: bool = True) -> None:
        if replica.pool == "spot" and capacity_lost:
            self._spot_lost_at = time.time()
        self._forget(replica)
        self._event("lost", replica, reason)

    def _forget(self, replica: _Replica) -> None:
        with self._lock:
            self._replicas.pop(replica.name, None)
        if replica.load:
            self._done = (self._done[0] + replica.load["requests"], self._done[1] + replica.load["busy_seconds"])

    def _add(self, pool: str | None, reason: str) -> None:
        cfg = self.spec.config
        # A new name each time, never one a retired or lost replica had: a feed that still holds the
        # old name's handle must not mistake the new replica for it.
        index, self._next_index = self._next_index, self._next_index + 1
        options: dict[str, Any] = {
            "lifetime": "detached",  # owned by this controller's decisions, not by the batch that asked
            "max_restarts": 0,  # a lost replica is replaced by the controller, on the capacity the rule picks then
        }
        resource = {"spot": cfg.spot_resource, "dedicated": cfg.dedicated_resource}.get(pool or "")
        if resource:
            options["resources"] = {resource: 0.001}  # a node of that kind; its CPUs/GPUs decide how many fit
        handle = get_engine(self.spec, index, options)
        replica = _Replica(self.spec.actor_name(index), handle, pool, time.time())
        with self._lock:
            self._replicas[replica.name] = replica
        self._event("up", replica, reason)

    def _retire(self, ray: Any, name: str, reason: str, *, force: bool = False) -> None:
        replica = self._replicas.get(name)
        if replica is None:
            return
        if not force and replica.ready:
            try:
                if not ray.get(replica.handle.retire.remote(), timeout=30):
                    return  # a shard arrived since the last look: keep it, look again next tick
            except ray.exceptions.RayError:
                pass  # gone already
        with contextlib.suppress(Exception):
            ray.kill(replica.handle, no_restart=True)
        self._forget(replica)
        self._event("down", replica, reason)

    def _event(self, action: str, replica: _Replica, reason: str) -> None:
        event = ScaleEvent(at=time.time(), action=action, replica=replica.name, pool=replica.pool, reason=reason)
        log.info("engine %s %s (%s): %s", action, replica.name, replica.pool or "any node", reason)
        with self._lock:
            self._events = [*self._events, event][-500:]
        self._metrics.event(action, replica.pool)

    def _adopt(self) -> None:
        """Take over replicas of this spec already on the cluster (a restarted controller, fixed replicas)."""
        import ray

        prefix = self.spec.actor_name(0).rsplit("-", 1)[0] + "-"
        for entry in ray.util.list_named_actors(all_namespaces=True):
            if entry["namespace"] == NAMESPACE and entry["name"].startswith(prefix):
                with contextlib.suppress(ValueError):
                    handle = ray.get_actor(entry["name"], namespace=NAMESPACE)
                    self._replicas[entry["name"]] = _Replica(entry["name"], handle, None, time.time())
                    self._next_index = max(self._next_index, int(entry["name"].rsplit("-", 1)[1]) + 1)


def _at(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _state(replica: _Replica, now: float) -> ReplicaState:
    load = replica.load or {}
    idle = load.get("idle_since") if replica.ready else None
    return ReplicaState(
        name=replica.name,
        in_flight=load.get("in_flight", 0),
        idle_since=_at(idle) if idle is not None else None,
        started_at=_at(load.get("started_at", replica.created_at)),
    )


#: The controller's metrics as Ray's metrics API names them; Prometheus sees them with Ray's ``ray_``
#: prefix (and ``_total`` on the counter): ``exported_metric_names``.
TARGET_METRIC, RUNNING_METRIC, EVENTS_METRIC = (
    "nightshift_engine_replicas_target",
    "nightshift_engine_replicas_running",
    "nightshift_engine_scale_events",
)


def exported_metric_names() -> set[str]:
    """The names the controller's metrics have on a Ray node's metrics export port (what dashboards query)."""
    return {f"ray_{TARGET_METRIC}", f"ray_{RUNNING_METRIC}", f"ray_{EVENTS_METRIC}_total"}


class _RayMetrics:
    """The controller's metrics through Ray's own metrics API: exported on every node's metrics port
    (``metrics-export-port``, scraped by Prometheus) with Ray's ``ray_`` prefix, which the Grafana
    dashboard queries (``ray_nightshift_engine_*``)."""

    def __init__(self, spec: EngineSpec) -> None:
        from ray.util.metrics import Counter, Gauge

        self.tags = {"model": spec.served_model_name}
        keys = ("model", "pool")
        self.target = Gauge(TARGET_METRIC, "Engine replicas the deadlines need.", keys)
        self.running = Gauge(RUNNING_METRIC, "Engine replicas up and answering.", keys)
        self.events = Counter(EVENTS_METRIC, "Engine replicas created, retired or lost.", (*keys, "action"))

    def record(self, target: int, running: int, pool: str | None) -> None:
        tags = self.tags | {"pool": pool or "any"}
        self.target.set(target, tags)
        self.running.set(running, tags)

    def event(self, action: str, pool: str | None) -> None:
        self.events.inc(1, self.tags | {"pool": pool or "any", "action": action})


def get_controller(spec: EngineSpec, safety_factor: float) -> Any:
    """The spec's controller, created on first use (detached: it outlives the batch that started it)."""
    import ray

    return (
        ray.remote(_Controller)
        .options(
            name=controller_name(spec),
            namespace=NAMESPACE,
            get_if_exists=True,
            lifetime="detached",
            num_cpus=0,
            max_concurrency=16,
            max_restarts=-1,
        )  # fmt: skip
        .remote(spec, safety_factor)
    )


def _key(spec: EngineSpec, batch: str) -> str:
    return sha256_json([spec.actor_name(0), batch])[:16]


class ElasticFleet(ReplicaFleet):
    """The replicas of an autoscaled spec, as one batch's shard feed sees them; tells the controller
    how many of the batch's requests are left and by when they are due."""

    refresh_seconds = FEED_REFRESH_SECONDS

    def __init__(self, spec: EngineSpec, *, batch: str, deadline: datetime, safety_factor: float) -> None:
        super().__init__(spec)
        self.key, self.deadline = _key(spec, batch), deadline.timestamp()
        self.controller = get_controller(spec, safety_factor)
        self._handles: dict[str, Any] = {}

    def replicas(self) -> dict[str, Any]:
        import ray

        names = ray.get(self.controller.replicas.remote())
        current = {}
        for name in names:
            if name not in self._handles:
                with contextlib.suppress(ValueError):
                    self._handles[name] = ray.get_actor(name, namespace=NAMESPACE)
            if name in self._handles:
                current[name] = self._handles[name]
        self._handles = {n: h for n, h in self._handles.items() if n in names}
        return current

    def report(self, remaining: int) -> None:
        self.controller.report.remote(self.key, float(remaining), self.deadline)

    def close(self) -> None:
        """The batch is done with the engine (its demand goes at once, not after the TTL)."""
        self.report(0)

    def wait_for_one(self, remaining: int, timeout: float | None = None) -> float:
        """Block until a replica is up (the controller scales from zero for the ``remaining`` requests);
        the seconds it took: the batch's start cost, recorded in its manifest timings."""
        import ray

        started = time.perf_counter()
        while timeout is None or time.perf_counter() - started < timeout:
            self.report(remaining)
            handles = list(self.replicas().values())
            if handles:
                done, _ = ray.wait([h.__ray_ready__.remote() for h in handles], num_returns=1, timeout=FEED_REFRESH_SECONDS)
                if done:
                    with contextlib.suppress(ray.exceptions.RayError):
                        ray.get(done[0])
                        return time.perf_counter() - started
            else:
                time.sleep(FEED_REFRESH_SECONDS)
        raise TimeoutError("no engine replica came up in time")


def hint_engine(spec: EngineSpec, batch: str, safety_factor: float) -> None:
    """Ask the spec's controller for a replica ahead of a batch whose size is not known yet."""
    get_controller(spec, safety_factor).hint.remote(_key(spec, batch))


def fleet_status(spec: EngineSpec, safety_factor: float = 1.5) -> FleetStatus:
    """The controller's view of the spec's replicas (created if it was not running)."""
    import ray

    return ray.get(get_controller(spec, safety_factor).status.remote())
