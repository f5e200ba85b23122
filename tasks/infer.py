"""run-inference: every shard without results goes through the warm engine (vLLM or transformers) on Ray."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prefect import get_run_logger, task
from pydantic import BaseModel, Field

from nightshift.core.artifacts import PrefixCacheStats
from nightshift.core.errors import EngineError
from nightshift.core.protocol import Endpoint
from nightshift.core.sharding import ShardSpec
from nightshift.engine.autoscale import ElasticFleet, hint_engine
from nightshift.engine.runner import EngineSpec, ShardJob, ShardOutcome, get_engines, read_outcome, run_shards, wait_for_an_engine
from nightshift.settings import StorageConfig
from nightshift.storage import ArtifactStore
from tasks.model import BatchModel


class InferenceReport(BaseModel):
    """Per-shard outcomes of this run, and which shards an earlier run had already finished."""

    outcomes: list[ShardOutcome]
    reused_shards: list[str]
    engine_requests: int
    seconds: float
    engine: str | None = Field(
        default=None,
        description=(
            "Engine that answered this run's shards: 'vllm' or 'transformers' ('transformers+vllm' if replicas "
            "differed); None when nothing ran, or when the engine actors could not be asked."
        ),
    )
    fallback_reason: str | None = Field(default=None, description="Why kind 'auto' fell back to transformers, if it did.")
    engine_wait_seconds: float = Field(
        default=0.0, description="How long the run waited for an engine replica to be up (0 when one was warm)."
    )

    def prefix_cache(self) -> PrefixCacheStats | None:
        """Prefix-cache hits over the shards this run computed (None when it computed none)."""
        fresh = [o for o in self.outcomes if o.name not in self.reused_shards]
        if not fresh:
            return None
        return PrefixCacheStats(
            prompt_tokens=sum(o.usage.prompt_tokens for o in fresh), cached_tokens=sum(o.prefix_cached_tokens for o in fresh)
        )


def engine_for(model: BatchModel, endpoint: Endpoint | None) -> EngineSpec:
    """The engine that serves ``model`` on ``endpoint`` (chat when not known yet): the same for every
    batch on the model or on one of its adapters, so they share one warm engine."""
    return EngineSpec(
        model_path=model.model_path,
        served_model_name=model.model,
        endpoint=endpoint or Endpoint.CHAT_COMPLETIONS,
        config=model.engine,
        adapters=model.adapters,
        max_lora_rank=model.max_lora_rank,
    )


@task(name="start-engine")
def start_engine(
    storage: StorageConfig, input_uri: str, endpoint: Endpoint | None, engine: EngineSpec, *, safety_factor: float
) -> str | None:
    """Start the engine replicas a batch will need while its file is still being validated.

    The endpoint is the run's own, or else the first line's ``url`` (a guess: validation decides;
    a wrong guess only starts an engine early that this batch does not use). Only warm, named
    replicas are started here (they outlive this task); returns the endpoint started, if any.
    """
    if not engine.config.keep_warm or engine.config.backend != "actor":
        return None
    endpoint = endpoint or _first_endpoint(input_uri, storage)
    if endpoint is None:
        return None
    spec = engine.model_copy(update={"endpoint": endpoint})
    if engine.config.autoscale:
        hint_engine(spec, input_uri, safety_factor)  # its controller starts a replica (from zero: a node too)
    else:
        get_engines(spec)  # Ray starts them in the background
    return endpoint.value


def _first_endpoint(input_uri: str, storage: StorageConfig) -> Endpoint | None:
    """The ``url`` of the batch file's first line, when it names an endpoint."""
    import json

    import fsspec

    try:
        with fsspec.open(input_uri, "rb", **storage.storage_options(input_uri)) as f:
            return Endpoint(json.loads(f.readline(1 << 20))["url"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@task(name="run-inference")
def run_inference(
    storage: StorageConfig,
    batch_id: str,
    version: str,
    shards: list[ShardSpec],
    engine: EngineSpec,
    fail_after_shards: int | None = None,
    slow_shards_seconds: float | None = None,
    priority: int = 0,
    *,
    deadline: datetime | None = None,
    safety_factor: float,
) -> InferenceReport:
    """Run the shards that have no results yet; a shard's results are written when it finishes.

    ``priority`` ranks this batch's requests against other batches' on the same engines
    (``nightshift.core.sla.engine_priority``: earliest deadline first). With ``engine.autoscale``
    the batch's remaining requests and ``deadline`` (None: a day from now) drive the engine's
    replica count, with placement's ``safety_factor`` (``pools.safety_factor``).
    """
    import time

    log = get_run_logger()
    store = ArtifactStore.from_config(storage)
    paths = store.batch(batch_id, version)
    reused, jobs, outcomes = [], [], []
    for spec in shards:
        results = paths.shard_results(spec.name)
        if store.exists(results):
            outcomes.append(read_outcome(store, spec.name, results))
            reused.append(spec.name)
        else:
            jobs.append(
                ShardJob(
                    name=spec.name,
                    requests_path=paths.shard_requests(spec.name),
                    results_path=results,
                    num_requests=spec.num_requests,
                )
            )
    if reused:
        log.info("resuming: %d of %d shards already finished", len(reused), len(shards))

    done = 0

    def on_done(outcome: ShardOutcome) -> None:
        nonlocal done
        done += 1
        log.info("%s: %d requests (%d errors) in %.1fs", outcome.name, outcome.num_requests, outcome.num_errors, outcome.seconds)
        if slow_shards_seconds:
            time.sleep(slow_shards_seconds)  # SLA drill: hold back the next shard like a slow pool
        if fail_after_shards is not None and done >= fail_after_shards:
            raise EngineError(f"fault injected after {done} shard(s) (fail_after_shards={fail_after_shards})")

    started = time.perf_counter()
    fresh: list[ShardOutcome] = []
    fleet: ElasticFleet | None = None
    if jobs and engine.config.backend == "actor" and engine.config.autoscale:
        fleet = ElasticFleet(
            engine, batch=f"{batch_id}/{version}", deadline=deadline or datetime.now(UTC) + timedelta(days=1),
            safety_factor=safety_factor,
        )  # fmt: skip
        # From zero replicas this is the engine's whole start: the manifest's timings keep it (engine_wait_s).
        waited = fleet.wait_for_one(sum(j.num_requests for j in jobs))
    else:
        waited = wait_for_an_engine(engine) if jobs and engine.config.backend == "actor" else 0.0
    if jobs and engine.config.backend == "ray-data-llm":
        from nightshift.engine.ray_data_llm import run_shards_ray_data

        fresh = run_shards_ray_data(engine, storage, jobs, on_done=on_done)
    elif jobs:
        try:
            fresh = run_shards(engine, storage, jobs, on_done=on_done, priority=priority, fleet=fleet)
        finally:
            if fleet is not None:
                fleet.close()
    seconds = time.perf_counter() - started
    used, fallback_reason = _engine_used(engine, fresh)
    if fallback_reason:
        log.warning("the engine fell back to transformers: %s", fallback_reason)
    return InferenceReport(
        outcomes=outcomes + fresh,
        reused_shards=reused,
        engine_requests=sum(o.num_requests for o in fresh),
        seconds=seconds,
        engine=used,
        fallback_reason=fallback_reason,
        engine_wait_seconds=waited,
    )


def _engine_used(spec: EngineSpec, fresh: list[ShardOutcome]) -> tuple[str | None, str | None]:
    """Which engine answered ``fresh`` (and why "auto" fell back, if it did), from the worker
    record each replica puts on its outcomes."""
    if not fresh:
        return None, None
    if spec.config.backend == "ray-data-llm":
        return "vllm", None  # ray.data.llm builds vLLM itself; there is no fallback there
    workers = [o.worker for o in fresh if o.worker is not None]
    kinds = sorted({w.engine for w in workers if w.engine})
    reasons = sorted({w.fallback_reason for w in workers if w.fallback_reason})
    return "+".join(kinds) or (spec.config.kind if spec.config.kind != "auto" else None), "; ".join(reasons) or None
