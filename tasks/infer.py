"""run-inference: every shard without results goes through the warm engine (vLLM or transformers) on Ray."""

from __future__ import annotations

from prefect import get_run_logger, task
from pydantic import BaseModel, Field

from nightshift.core.errors import EngineError
from nightshift.core.sharding import ShardSpec
from nightshift.engine.runner import EngineSpec, ShardJob, ShardOutcome, read_outcome, run_shards
from nightshift.settings import StorageConfig
from nightshift.storage import ArtifactStore


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


@task(name="run-inference")
def run_inference(
    storage: StorageConfig,
    batch_id: str,
    version: str,
    shards: list[ShardSpec],
    engine: EngineSpec,
    fail_after_shards: int | None = None,
    slow_shards_seconds: float | None = None,
) -> InferenceReport:
    """Run the shards that have no results yet; a shard's results are written when it finishes."""
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
    if jobs and engine.config.backend == "ray-data-llm":
        from nightshift.engine.ray_data_llm import run_shards_ray_data

        fresh = run_shards_ray_data(engine, storage, jobs, on_done=on_done)
    elif jobs:
        fresh = run_shards(engine, storage, jobs, on_done=on_done)
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
