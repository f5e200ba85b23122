"""Ray side of inference: a warm engine actor per (model, endpoint, engine settings), fed shards.

Why an actor and not a per-batch ``ray.data.llm`` processor by default: the engine is the
expensive part (weights load, KV cache allocation), and a named actor outlives one batch, so the
next batch on the same Ray cluster starts generating at once. Shards travel as storage paths;
the actor reads them and writes each result file itself as soon as the shard is done, so the
driver holds no request data and a crash keeps every finished shard.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, Field

from nightshift.core.artifacts import ResultRow, WorkerRecord, decode_results, encode_rows, total_usage
from nightshift.core.errors import EngineError, NightshiftError
from nightshift.core.hashing import sha256_bytes
from nightshift.core.protocol import Usage
from nightshift.core.sharding import decode_shard
from nightshift.engine.base import EngineSpec
from nightshift.runtime import RAY_ENV, apply_defaults
from nightshift.settings import RayConfig, StorageConfig
from nightshift.storage import ArtifactStore

log = logging.getLogger(__name__)

NAMESPACE = "nightshift"

#: Shards one engine actor holds at once, over all batches sharing it (each batch keeps a few in flight).
MAX_SHARDS_IN_ACTOR = 64


class ShardOutcome(BaseModel):
    """What one shard's run produced (the rows themselves are in its results file)."""

    name: str
    results_path: str
    results_sha256: str
    results_bytes: int
    num_requests: int
    num_errors: int
    usage: Usage
    prefix_cached_tokens: int = Field(default=0, description="Prompt tokens the engine's prefix cache served.")
    seconds: float
    worker: WorkerRecord | None = Field(default=None, description="The engine replica that ran it (None: read back from disk).")

    @classmethod
    def of(cls, name: str, results_path: str, data: bytes, rows: Sequence[ResultRow], seconds: float) -> ShardOutcome:
        """The outcome of a shard whose results file holds ``data`` (the encoding of ``rows``)."""
        return cls(
            name=name,
            results_path=results_path,
            results_sha256=sha256_bytes(data),
            results_bytes=len(data),
            num_requests=len(rows),
            num_errors=sum(r.error is not None for r in rows),
            usage=total_usage(rows),
            prefix_cached_tokens=sum(r.prefix_cached_tokens for r in rows),
            seconds=seconds,
        )


def ray_init_kwargs(config: RayConfig) -> dict[str, Any]:
    """Arguments for ``ray.init`` (or ``RayTaskRunner(init_kwargs=...)``) from settings."""
    apply_defaults(RAY_ENV)  # Ray on loopback, quiet, no token auth between our own processes (nightshift.runtime)
    kwargs: dict[str, Any] = {"namespace": NAMESPACE, "log_to_driver": True}
    if config.address is not None:
        kwargs["address"] = config.address  # 'auto' then fails when no cluster runs, rather than starting one
        from nightshift.engine.cluster import build_runtime_env

        # The cluster's nodes may not have this code: ship it with the job (None: their image has it).
        runtime_env = build_runtime_env(config)
        if runtime_env is not None:
            kwargs["runtime_env"] = runtime_env
    else:
        kwargs.update(
            num_cpus=config.num_cpus,
            include_dashboard=False,
            object_store_memory=config.object_store_memory,
            _node_ip_address="127.0.0.1",
        )
        if config.temp_dir is not None:
            kwargs["_temp_dir"] = str(config.temp_dir.absolute())
    return kwargs


class _EngineActor:
    """Ray actor body: an engine (vLLM or transformers) plus storage I/O for shards.

    A threaded actor: shards of any number of batches are in it at once. With vLLM their requests
    join one continuously stepped engine, ranked by each batch's deadline; the transformers engine
    answers one shard at a time.
    """

    def __init__(self, spec: EngineSpec) -> None:
        import threading

        from nightshift.engine.base import build_engine

        # vLLM or transformers, as spec.config.kind says ("auto": vLLM unless it cannot serve the model).
        self.engine = build_engine(spec)
        self._one_at_a_time = contextlib.nullcontext() if getattr(self.engine, "concurrent", False) else threading.Lock()
        # What the autoscaler reads (nightshift.engine.autoscale): shards in the replica, since when
        # it is idle, how much it answered in how much busy time, and whether it is retiring.
        self._state = threading.Lock()
        self._in_flight, self._retiring = 0, False
        self._started_at = self._idle_since = time.time()
        self._busy_since: float | None = None
        self._busy_seconds, self._requests = 0.0, 0

    def info(self) -> dict[str, Any]:
        return self.engine.info()

    def load(self) -> dict[str, Any]:
        """Shards in the replica, idle since (wall clock), requests answered and busy seconds so far."""
        with self._state:
            busy = self._busy_seconds + (time.time() - self._busy_since if self._busy_since is not None else 0.0)
            return {
                "in_flight": self._in_flight,
                "idle_since": self._idle_since if self._in_flight == 0 else None,
                "started_at": self._started_at,
                "requests": self._requests,
                "busy_seconds": busy,
            }

    def retire(self) -> bool:
        """Take no more shards if none is in the replica now (True: it may be stopped; a shard sent
        after this is refused with ``ReplicaRetired`` and the feed sends it elsewhere)."""
        with self._state:
            if self._in_flight == 0:
                self._retiring = True
            return self._retiring

    def run_shard(
        self, storage: StorageConfig, name: str, requests_path: str, results_path: str, priority: int = 0
    ) -> ShardOutcome:
        with self._state:
            if self._retiring:
                raise ReplicaRetired(f"engine replica retiring; shard {name} goes to another")
            self._in_flight += 1
            if self._busy_since is None:
                self._busy_since = time.time()
        try:
            store = ArtifactStore.from_config(storage)
            requests = decode_shard(store.read_bytes(requests_path))
            with self._one_at_a_time:
                started = time.perf_counter()
                rows: list[ResultRow] = self.engine.run(requests, priority=priority)
                seconds = time.perf_counter() - started
            data = encode_rows(rows)
            store.write_bytes(results_path, data)
        finally:
            with self._state:
                self._in_flight -= 1
                if self._in_flight == 0 and self._busy_since is not None:
                    self._idle_since = time.time()
                    self._busy_seconds += self._idle_since - self._busy_since
                    self._busy_since = None
        with self._state:
            self._requests += len(rows)
        worker = _this_worker(self.engine.info())
        return ShardOutcome.of(name, results_path, data, rows, seconds).model_copy(update={"worker": worker})


class ReplicaRetired(NightshiftError):
    """A shard reached a replica that is being retired (between shards): it runs on another one."""


def _this_worker(engine_info: dict[str, Any]) -> WorkerRecord:
    """The Ray node, host, process and actor this code runs in, the engine it holds and the
    nightshift version of the code it runs."""
    import socket

    import ray

    from nightshift.engine.cluster import code_version

    context = ray.get_runtime_context()
    return WorkerRecord(
        node_id=context.get_node_id(),
        hostname=socket.gethostname(),
        pid=os.getpid(),
        actor=context.get_actor_name(),
        engine=engine_info.get("engine"),
        fallback_reason=engine_info.get("fallback_reason"),
        nightshift_version=code_version(),
    )


def get_engine(spec: EngineSpec, replica: int = 0, options: dict[str, Any] | None = None) -> Any:
    """Replica ``replica`` of the warm actors for ``spec``, created on first use (Ray must be initialized).

    ``options`` add to or override Ray's actor options (the autoscaler's resources and restarts).
    """
    import ray

    cfg = spec.config
    base: dict[str, Any] = {
        "name": spec.actor_name(replica),
        "namespace": NAMESPACE,
        "get_if_exists": True,
        # Replicas go to different nodes when there is room (best effort: on a one-node Ray, or
        # when only one node has room, they share it). An existing actor stays where it is.
        "scheduling_strategy": "SPREAD",
        "num_cpus": cfg.num_cpus,
        "num_gpus": cfg.num_gpus * cfg.tensor_parallel_size,
        # Shards of every batch on this engine are in the actor together (the engine ranks them);
        # the engine itself is stepped by one thread of its own.
        "max_concurrency": MAX_SHARDS_IN_ACTOR,
        "max_restarts": 1,  # a crashed engine is rebuilt once; shards already written survive
    }
    if cfg.keep_warm:
        base["lifetime"] = "detached"
    return ray.remote(_EngineActor).options(**(base | (options or {}))).remote(spec)


def get_engines(spec: EngineSpec) -> list[Any]:
    """All ``spec.config.replicas`` warm actors for ``spec``, created on first use."""
    return [get_engine(spec, i) for i in range(spec.config.replicas)]


def wait_for_an_engine(spec: EngineSpec) -> float:
    """Block until one of the spec's replicas is up (created if needed); the seconds it took."""
    import ray

    started = time.perf_counter()
    ray.wait([actor.__ray_ready__.remote() for actor in get_engines(spec)], num_returns=1)
    return time.perf_counter() - started


def release_all_engines() -> int:
    """Stop every warm engine actor on the cluster (frees their CPU/GPU reservations), and the
    autoscalers first, which would otherwise start their minimum again (counted with the engines)."""
    import ray

    names = sorted(
        (
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a["namespace"] == NAMESPACE and a["name"].startswith(("engine-", "autoscaler-"))
        ),
        key=lambda name: not name.startswith("autoscaler-"),
    )
    for name in names:
        with contextlib.suppress(ValueError):
            ray.kill(ray.get_actor(name, namespace=NAMESPACE))
    return len(names)


class ShardJob(BaseModel):
    """A shard to compute: where its requests are and where its results go."""

    name: str
    requests_path: str
    results_path: str
    num_requests: int


class ReplicaFleet:
    """The replicas a shard feed sends shards to: the spec's ``replicas`` fixed actors.

    The autoscaler's fleet (``nightshift.engine.autoscale.ElasticFleet``) answers the same calls with
    replicas that come and go while the feed runs, and hears how much work is left.
    """

    #: How often the feed asks for the current replicas (an elastic fleet changes; a fixed one only when one dies).
    refresh_seconds: float | None = None

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec

    def replicas(self) -> dict[str, Any]:
        """Replica name → actor handle, created on first use (a lost one is created again)."""
        return {self.spec.actor_name(i): get_engine(self.spec, i) for i in range(self.spec.config.replicas)}

    def report(self, remaining: int) -> None:
        """Requests of this feed not answered yet (a fixed fleet has no use for it)."""


#: Times a shard is sent again after the replica running it was lost (node gone, actor killed)
#: before the run fails: a shard that kills every engine it reaches must not loop forever.
MAX_SHARD_ATTEMPTS = 4


def run_shards(
    spec: EngineSpec,
    storage: StorageConfig,
    jobs: Sequence[ShardJob],
    *,
    on_done: Callable[[ShardOutcome], None] | None = None,
    in_flight: int = 2,
    priority: int = 0,
    fleet: ReplicaFleet | None = None,
) -> list[ShardOutcome]:
    """Run shards on the spec's warm replicas, ``in_flight`` at a time on each, in order of completion.

    Two in flight keep a replica's engine fed between shards: the next shard's requests are already
    in the engine's scheduler while the last ones of the current shard finish, so it never drains.
    ``priority`` ranks this batch's requests against other batches' on the same engines (lower
    first; see ``nightshift.core.sla.engine_priority``). Each new shard goes to the replica with
    the fewest in flight, so a replica that finishes early gets the next one. A replica takes
    shards only once it is up: one that Ray cannot place (no room on the cluster) holds none
    hostage, the others carry the batch.
    Replicas may come and go while the feed runs (``fleet``: an autoscaled one, or a node lost): a
    shard whose replica was lost or retired is sent again to another, so no request is lost; a
    shard is written whole or not at all, so a second run of it only rewrites the same file.
    If the driver fails (``on_done`` raised), the shards already running are still waited for, so
    their results land before the error propagates.
    """
    import ray

    fleet = fleet or ReplicaFleet(spec)
    actors: dict[str, Any] = {}
    starting: dict[Any, str] = {}
    ready: list[str] = []
    load: dict[str, int] = {}
    pending = list(jobs)
    attempts: dict[str, int] = {}
    refused: set[str] = set()  # retiring replicas: the fleet may list them a moment longer
    running: dict[Any, tuple[str, ShardJob]] = {}
    outcomes: list[ShardOutcome] = []

    def refresh() -> None:
        current = fleet.replicas()
        for name in [n for n in actors if n not in current]:
            lose(name)
        for name, actor in current.items():
            if name not in actors and name not in refused:
                actors[name] = actor
                load.setdefault(name, 0)  # shards still out on a lost predecessor of that name count until they fail
                starting[actor.__ray_ready__.remote()] = name

    def lose(name: str) -> None:
        actors.pop(name, None)
        if name in ready:
            ready.remove(name)

    def again(job: ShardJob, why: str) -> None:
        attempts[job.name] = attempts.get(job.name, 1) + 1
        if attempts[job.name] > MAX_SHARD_ATTEMPTS:
            raise EngineError(f"shard {job.name} lost its engine replica {MAX_SHARD_ATTEMPTS} times; last: {why}")
        log.warning("shard %s goes to another replica: %s", job.name, why)
        pending.insert(0, job)

    refresh()
    last_refresh = time.monotonic()
    remaining = sum(j.num_requests for j in jobs)
    fleet.report(remaining)
    try:
        while pending or running:
            while pending and ready:
                free = min(ready, key=load.__getitem__)
                if load[free] >= in_flight:
                    break
                job = pending.pop(0)
                ref = actors[free].run_shard.remote(storage, job.name, job.requests_path, job.results_path, priority)
                running[ref], load[free] = (free, job), load[free] + 1
            every = fleet.refresh_seconds
            if every is not None and time.monotonic() - last_refresh >= every:
                refresh()
                last_refresh = time.monotonic()
                fleet.report(remaining)
            # Replicas still starting matter only while there is work for them.
            waiting = list(running) + (list(starting) if pending else [])
            if not waiting:  # work, but no replica (scaled to zero, or all lost): ask again shortly
                time.sleep(every or 1.0)
                if every is None:
                    refresh()
                continue
            done, _ = ray.wait(waiting, num_returns=1, timeout=every)
            if not done:
                continue
            if done[0] in starting:
                name = starting.pop(done[0])
                try:
                    ray.get(done[0])
                except ray.exceptions.RayActorError as exc:
                    if exc.actor_init_failed:
                        raise  # the engine cannot load: an infrastructure error, not a replica to wait for
                    lose(name)  # retired or lost before it came up; the fleet names its successor
                    continue
                if name in actors:
                    ready.append(name)
                continue
            name, job = running.pop(done[0])
            load[name] = load.get(name, 1) - 1
            try:
                outcome: ShardOutcome = ray.get(done[0])
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                lose(name)
                again(job, f"replica {name} lost ({type(exc).__name__})")
                if fleet.refresh_seconds is None:
                    refresh()  # a fixed fleet creates the lost replica again
                continue
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, ReplicaRetired):
                    lose(name)
                    refused.add(name)
                    pending.insert(0, job)
                    continue
                if isinstance(exc.cause, NightshiftError):
                    raise exc.cause from None  # our own typed error (storage down, disk full), not Ray's traceback
                raise
            outcomes.append(outcome)
            remaining -= job.num_requests
            fleet.report(remaining)
            if on_done is not None:
                on_done(outcome)
    finally:
        if running:
            ray.wait(list(running), num_returns=len(running))
    if starting and jobs and fleet.refresh_seconds is None:
        log.warning(
            "%d of %d engine replicas took no shard (still starting, or no room on the cluster)", len(starting), len(actors)
        )
    return outcomes


def read_outcome(store: ArtifactStore, name: str, results_path: str) -> ShardOutcome:
    """Rebuild a ``ShardOutcome`` from a results file an earlier run left on disk."""
    data = store.read_bytes(results_path)
    return ShardOutcome.of(name, results_path, data, decode_results(data), 0.0)
