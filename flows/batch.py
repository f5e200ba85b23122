"""process-batch: validate → shard → infer → publish → check SLA, on Ray through prefect-ray.

The flow is wiring only: it builds the settings once, hands each task the sub-config it needs,
and passes small handles (paths, specs, manifests) between tasks, never the requests themselves.
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import PurePosixPath

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect_ray.context import remote_options
from prefect_ray.task_runners import RayTaskRunner
from pydantic import BaseModel, Field

from blocks.storage import resolve_storage
from nightshift.core.artifacts import Manifest, RequestCounts
from nightshift.core.lineage import Lineage
from nightshift.core.protocol import Endpoint, Usage
from nightshift.core.sla import SLAReport, Tier
from nightshift.engine.runner import EngineSpec, ray_init_kwargs
from nightshift.settings import Settings
from nightshift.storage import ArtifactStore
from tasks.infer import run_inference
from tasks.model import resolve_model_task
from tasks.publish import publish_results
from tasks.shard import plan_shards_task
from tasks.sla import check_sla
from tasks.validate import validate_input


class BatchRunParameters(BaseModel):
    """What to run. The Prefect UI renders this as the deployment's form."""

    input_uri: str = Field(description="The JSONL batch file: a local path or a URL (file://, s3://).")
    batch_id: str | None = Field(default=None, description="Name of the batch in the store; defaults to the input file's name.")
    tier: Tier = Field(default=Tier.BASIC, description="SLA tier: the deadline counts from submitted_at.")
    endpoint: Endpoint | None = Field(
        default=None, description="The batch's endpoint; defaults to the url of its first valid line."
    )
    model: str | None = Field(default=None, description="Model folder or embedded model name; defaults to settings.")
    shard_size: int | None = Field(default=None, ge=1, description="Requests per shard; defaults to settings.")
    submitted_at: datetime | None = Field(default=None, description="When the batch was submitted; defaults to now.")
    parent: Lineage | None = Field(default=None, description="Set by retry-failed: the batch version this one retries.")
    use_cache: bool = Field(default=True, description="Answer deterministic requests seen before from the request cache.")
    fail_after_shards: int | None = Field(
        default=None, ge=1, description="Fault injection for resume drills: fail the run after N new shards."
    )


class BatchRunResult(BaseModel):
    """Where the results are and how the run went."""

    batch_id: str
    version: str
    flow_run_id: str | None = Field(default=None, description="The Prefect flow run that produced this result.")
    reused: bool = Field(description="True when this version was already published and nothing ran.")
    output_uri: str
    error_uri: str
    manifest_uri: str
    request_counts: RequestCounts
    usage: Usage
    engine_requests: int = Field(description="Requests sent to the engine in this run.")
    cache_hits: int = Field(description="Requests of this version answered from the request cache.")
    reused_shards: int
    sla: SLAReport


def default_batch_id(input_uri: str) -> str:
    """A store-safe batch id from the input file's name (``data/My Batch.jsonl`` → ``My-Batch``)."""
    stem = PurePosixPath(input_uri.split("://", 1)[-1]).name.split(".", 1)[0]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.") or "batch"


def build_task_runner(settings: Settings) -> RayTaskRunner:
    """prefect-ray's runner on the configured Ray (a local one when no address is set)."""
    return RayTaskRunner(address=settings.ray.address, init_kwargs=ray_init_kwargs(settings.ray))


@flow(
    name="process-batch",
    description="Run one OpenAI-format batch file through vLLM on Ray and publish versioned results.",
    task_runner=build_task_runner(Settings()),
    persist_result=False,
)
def process_batch(params: BatchRunParameters) -> BatchRunResult:
    """validate → shard → infer → publish → check SLA for one batch file."""
    log = get_run_logger()
    settings = Settings()
    submitted_at = params.submitted_at or datetime.now(UTC)
    created_at = datetime.now(UTC)
    storage = resolve_storage(settings.storage)
    store = ArtifactStore.from_config(storage)
    batch_id = params.batch_id or default_batch_id(params.input_uri)
    engine_cfg = settings.engine
    timings: dict[str, float] = {}

    # Prefect tasks here are light (I/O, tokenizing); the engine actor holds the real CPU/GPU
    # reservation, so tasks ask Ray for a fraction of a CPU and never starve it.
    with remote_options(num_cpus=0.25):
        t = time.perf_counter()
        model = resolve_model_task.submit(
            params.model or engine_cfg.model, engine_cfg.served_model_name, str((settings.home / "models").absolute())
        ).result()
        timings["resolve_model_s"] = time.perf_counter() - t

        t = time.perf_counter()
        batch = validate_input.submit(
            params.input_uri, batch_id, params.endpoint, model.source, model.sha256, engine_cfg, settings.limits, storage
        ).result()
        timings["validate_s"] = time.perf_counter() - t
        paths = store.batch(batch_id, batch.version)

        engine_requests, engine_tokens, busy, reused_shards = 0, 0, 0.0, 0
        if batch.published:
            log.info("version %s of %s is already published; reusing it", batch.version, batch_id)
            manifest = Manifest.model_validate_json(store.read_bytes(paths.manifest))
        else:
            t = time.perf_counter()
            plan = plan_shards_task.submit(
                storage,
                batch_id,
                batch.version,
                batch.valid_path,
                params.shard_size or settings.storage.shard_size,
                model.sha256,
                engine_cfg.output_params(),
                params.use_cache,
            ).result()
            timings["shard_s"] = time.perf_counter() - t

            spec = EngineSpec(
                model_path=model.source,
                served_model_name=model.name,
                endpoint=batch.endpoint or Endpoint.CHAT_COMPLETIONS,
                config=engine_cfg,
            )
            t = time.perf_counter()
            inference = run_inference.submit(
                storage, batch_id, batch.version, plan.shards, spec, params.fail_after_shards
            ).result()
            timings["infer_s"] = busy = time.perf_counter() - t
            engine_requests = inference.engine_requests
            reused_shards = len(inference.reused_shards)
            fresh = [o for o in inference.outcomes if o.name not in inference.reused_shards]
            engine_tokens = sum(o.usage.total_tokens for o in fresh)

            manifest = publish_results.submit(
                storage,
                batch,
                plan,
                inference,
                model,
                engine_cfg.model_dump(mode="json"),
                engine_cfg.output_params(),
                created_at,
                timings,
                params.parent,
            ).result()

        sla = check_sla.submit(
            storage, manifest, params.tier, submitted_at, engine_requests, engine_tokens, busy, settings.sla
        ).result()

    return BatchRunResult(
        flow_run_id=flow_run.get_id(),
        batch_id=batch_id,
        version=batch.version,
        reused=batch.published,
        output_uri=manifest.output_file.path,
        error_uri=manifest.error_file.path,
        manifest_uri=store.uri(paths.manifest),
        request_counts=manifest.request_counts,
        usage=manifest.usage,
        engine_requests=engine_requests,
        cache_hits=manifest.cache.hits,
        reused_shards=reused_shards,
        sla=sla,
    )
