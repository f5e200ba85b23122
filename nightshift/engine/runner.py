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
from nightshift.core.errors import NightshiftError
from nightshift.core.hashing import sha256_bytes, sha256_json
from nightshift.core.protocol import Endpoint, Usage
from nightshift.core.sharding import decode_shard
from nightshift.runtime import RAY_ENV, apply_defaults
from nightshift.settings import EngineConfig, RayConfig, StorageConfig
from nightshift.storage import ArtifactStore

log = logging.getLogger(__name__)

NAMESPACE = "nightshift"

#: Shards one engine actor holds at once, over all batches sharing it (each batch keeps a few in flight).
MAX_SHARDS_IN_ACTOR = 64


class EngineSpec(BaseModel):
    """What an engine actor serves; equal specs share one warm actor."""

    model_path: str
    served_model_name: str
    endpoint: Endpoint
    config: EngineConfig

    def actor_name(self, replica: int = 0) -> str:
        """Stable name of replica ``replica`` of the actors serving this spec.

        The replica count is left out of the hash: scaling a spec from one replica to three keeps
        replica 0 (and its warm engine) and adds two beside it.
        """
        digest = sha256_json(self.model_dump(mode="json", exclude={"config": {"replicas"}}))[:16]
        return f"engine-{digest}-{replica}"


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
        self.engine = build_engine(spec.model_path, spec.served_model_name, spec.endpoint, spec.config)
        self._one_at_a_time = contextlib.nullcontext() if getattr(self.engine, "concurrent", False) else threading.Lock()

    def info(self) -> dict[str, Any]:
        return self.engine.info()

    def run_shard(
        self, storage: StorageConfig, name: str, requests_path: str, results_path: str, priority: int = 0
    ) -> ShardOutcome:
        store = ArtifactStore.from_config(storage)
        requests = decode_shard(store.read_bytes(requests_path))
        with self._one_at_a_time:
            started = time.perf_counter()
            rows: list[ResultRow] = self.engine.run(requests, priority=priority)
            seconds = time.perf_counter() - started
        data = encode_rows(rows)
        store.write_bytes(results_path, data)
        worker = _this_worker(self.engine.info())
        return ShardOutcome.of(name, results_path, data, rows, seconds).model_copy(update={"worker": worker})


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


def get_engine(spec: EngineSpec, replica: int = 0) -> Any:
    """Replica ``replica`` of the warm actors for ``spec``, created on first use (Ray must be initialized)."""
    import ray

    cfg = spec.config
    options: dict[str, Any] = {
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
        options["lifetime"] = "detached"
    return ray.remote(_EngineActor).options(**options).remote(spec)


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
    """Stop every warm engine actor on the cluster (frees their CPU/GPU reservations)."""
    import ray

    names = [
        a["name"]
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["namespace"] == NAMESPACE and a["name"].startswith("engine-")
    ]
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


def run_shards(
    spec: EngineSpec,
    storage: StorageConfig,
    jobs: Sequence[ShardJob],
    *,
    on_done: Callable[[ShardOutcome], None] | None = None,
    in_flight: int = 2,
    priority: int = 0,
) -> list[ShardOutcome]:
    """Run shards on the spec's warm replicas, ``in_flight`` at a time on each, in order of completion.

    Two in flight keep a replica's engine fed between shards: the next shard's requests are already
    in the engine's scheduler while the last ones of the current shard finish, so it never drains.
    ``priority`` ranks this batch's requests against other batches' on the same engines (lower
    first; see ``nightshift.core.sla.engine_priority``). Each new shard goes to the replica with
    the fewest in flight, so a replica that finishes early gets the next one. A replica takes
    shards only once it is up: one that Ray cannot place (no room on the cluster) holds none
    hostage, the others carry the batch.
    If the driver fails (``on_done`` raised), the shards already running are still waited for, so
    their results land before the error propagates.
    """
    import ray

    actors = get_engines(spec)
    starting = {actor.__ray_ready__.remote(): i for i, actor in enumerate(actors)}
    ready: list[int] = []
    load = [0] * len(actors)
    pending = list(jobs)
    running: dict[Any, int] = {}
    outcomes: list[ShardOutcome] = []
    try:
        while pending or running:
            while pending and ready:
                free = min(ready, key=load.__getitem__)
                if load[free] >= in_flight:
                    break
                job = pending.pop(0)
                running[actors[free].run_shard.remote(storage, job.name, job.requests_path, job.results_path, priority)] = free
                load[free] += 1
            # Replicas still starting matter only while there is work for them.
            done, _ = ray.wait(list(running) + (list(starting) if pending else []), num_returns=1)
            if done[0] in starting:
                ray.get(done[0])  # a replica that failed to start is an infrastructure error
                ready.append(starting.pop(done[0]))
                continue
            load[running.pop(done[0])] -= 1
            try:
                outcome: ShardOutcome = ray.get(done[0])
            except ray.exceptions.RayTaskError as exc:
                if isinstance(exc.cause, NightshiftError):
                    raise exc.cause from None  # our own typed error (storage down, disk full), not Ray's traceback
                raise
            outcomes.append(outcome)
            if on_done is not None:
                on_done(outcome)
    finally:
        if running:
            ray.wait(list(running), num_returns=len(running))
    if starting and jobs:
        log.warning(
            "%d of %d engine replicas took no shard (still starting, or no room on the cluster)", len(starting), len(actors)
        )
    return outcomes


def read_outcome(store: ArtifactStore, name: str, results_path: str) -> ShardOutcome:
    """Rebuild a ``ShardOutcome`` from a results file an earlier run left on disk."""
    data = store.read_bytes(results_path)
    return ShardOutcome.of(name, results_path, data, decode_results(data), 0.0)
