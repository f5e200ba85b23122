"""process-batch: validate → shard → infer → publish → check SLA, on Ray through prefect-ray.

The flow is wiring only: it builds the settings once, hands each task the sub-config it needs,
and passes small handles (paths, specs, manifests) between tasks, never the requests themselves.
"""

from __future__ import annotations

import contextlib
import signal
import time
from datetime import UTC, datetime
from uuid import UUID

from prefect import flow, get_client, get_run_logger
from prefect.runtime import flow_run
from prefect_ray.context import remote_options
from prefect_ray.task_runners import RayTaskRunner
from pydantic import BaseModel, Field
from pydantic.json_schema import SkipJsonSchema

from blocks.storage import resolve_storage
from nightshift.core.artifacts import Manifest, RequestCounts
from nightshift.core.catalogue import PoolKind
from nightshift.core.cost import batch_cost, engine_seconds, priced_model
from nightshift.core.errors import BatchFileError
from nightshift.core.estimate import BatchEstimate
from nightshift.core.protocol import Usage
from nightshift.core.runs import BatchRunContext, BatchRunParameters, FaultInjection, default_batch_id
from nightshift.core.sla import SLAReport, deadline_for, engine_priority
from nightshift.engine.cluster import watch_driver_node
from nightshift.engine.runner import ray_init_kwargs
from nightshift.orchestration.estimate import estimate_input
from nightshift.orchestration.watch import BatchEvents, SLAWatch, alert_once
from nightshift.settings import Settings
from nightshift.storage import ArtifactStore
from nightshift.storage.pools import read_throughput
from nightshift.telemetry.logs import configure_logging, log_context
from nightshift.telemetry.metrics import BatchMetrics
from tasks.infer import engine_for, run_inference, start_engine
from tasks.model import resolve_batch_model, run_catalogue
from tasks.publish import PublishRequest, publish_results
from tasks.report import report_batch
from tasks.shard import plan_shards_task
from tasks.sla import check_sla
from tasks.validate import validate_input


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


def build_task_runner(settings: Settings) -> RayTaskRunner:
    """prefect-ray's runner on the configured Ray (a local one when no address is set).

    The address is NIGHTSHIFT_RAY_ADDRESS: 'auto', 'host:port' or 'ray://host:port'. A process
    that already has Ray initialised (a test session) keeps that Ray: prefect-ray reuses it.
    """
    init_kwargs = ray_init_kwargs(settings.ray)
    address = init_kwargs.pop("address", None)
    if address == "auto":
        # prefect-ray calls ray.init() without an address for 'auto', which starts a new local Ray
        # when none is found; passed through, a missing cluster is an error instead.
        init_kwargs["address"] = address
    return RayTaskRunner(address=address, init_kwargs=init_kwargs)


class _RayFromSettings(RayTaskRunner):
    """process-batch's default task runner, for runs nobody passed one to (a deployment's run, a
    subflow): prefect-ray's runner configured from the settings when the run starts (Prefect enters
    a ``duplicate()`` of the flow's runner for each run), not when this module is imported.
    Callers holding settings pass ``process_batch.with_options(task_runner=build_task_runner(s))``."""

    def duplicate(self) -> RayTaskRunner:
        """The runner this run enters, built from the environment as the run starts."""
        return build_task_runner(Settings())


def _work_pool() -> str | None:
    """The work pool this flow run was sent to (None when the flow is called directly)."""
    run_id = flow_run.get_id()
    if run_id is None:
        return None
    with get_client(sync_client=True) as client:
        return client.read_flow_run(UUID(run_id)).work_pool_name


def _capacity(settings: Settings) -> PoolKind | None:
    """spot or dedicated: the capacity of the deployment this run came from, as ``settings.pools``
    names them (None when the flow is called directly, or from another deployment)."""
    from prefect.runtime import deployment

    if deployment.name is None:
        return None
    pools = settings.pools
    kinds: dict[str, PoolKind] = {pools.spot_deployment: "spot", pools.dedicated_deployment: "dedicated"}
    return kinds.get(f"{flow_run.flow_name}/{deployment.name}")


def _estimate(
    context: BatchRunContext,
    params: BatchRunParameters,
    settings: Settings,
    deadline: datetime,
    pool: str | None,
    capacity: PoolKind | None,
) -> BatchEstimate | None:
    """The forecast the manifest keeps beside the actual cost: the one ``submit_batch`` placed the
    batch on, else (a run started directly) one made now on this run's pool by the same rule."""
    if context.estimate is not None:
        return context.estimate
    try:
        return estimate_input(params.input_uri, settings=settings, deadline=deadline, pools=None, pool=pool, capacity=capacity)
    except BatchFileError:
        return None  # validation reports the file's problem


def _terminate_on_sigterm() -> None:
    """Let SIGTERM end this process as it normally would.

    The Ray driver (started by the task runner) turns SIGTERM into ``SystemExit``, which Prefect
    records as a *crash*; a worker cancelling the run (the at-risk escalation does) would then
    look like a preemption and be resumed twice. With the default action the run ends Cancelled
    when it was cancelled, and Crashed when something else killed it.
    """
    with contextlib.suppress(ValueError):  # not the main thread (a flow called from a thread)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@flow(
    name="process-batch",
    description="Run one OpenAI-format batch file through vLLM on Ray and publish versioned results.",
    task_runner=_RayFromSettings(),
    persist_result=False,
)
def process_batch(
    params: BatchRunParameters,
    context: SkipJsonSchema[BatchRunContext | None] = None,
    resumed_from: SkipJsonSchema[str | None] = None,
) -> BatchRunResult:
    """validate → shard → infer → publish → check SLA → report, for one batch file.

    Only ``params`` is on the deployment's form: what a user decides. The other two are the
    product's and are left out of the form's schema (``SkipJsonSchema``); the code that starts the
    run fills them in.

    Args:
        params: What to run: the batch file, its tier and deadline, and optional overrides.
        context: Set by ``submit_batch``, retry-failed and the automations: placement, the time the
            deadline counts from, lineage and operator drills.
        resumed_from: Set by the automations that move a batch to the dedicated pool (a spot run
            crashed, or was cancelled as at risk): the id of the flow run this one takes over. Its
            finished shards are reused, since the batch version is the same.
    """
    log = get_run_logger()
    _terminate_on_sigterm()
    context = context or BatchRunContext()
    settings = Settings(**context.settings_kwargs())
    if settings.ray.address:
        # On a cluster, a head restarted under this run would leave the driver waiting forever:
        # the watch ends the process instead, and the run (Crashed) is resumed from its shards.
        watch_driver_node()
    configure_logging(settings.log)
    pool = _work_pool()
    submitted_at = context.submitted_at or datetime.now(UTC)
    deadline = params.deadline or deadline_for(submitted_at, params.tier, settings.sla.hours())
    batch_id = params.batch_id or default_batch_id(params.input_uri)
    events = BatchEvents(flow_run_id=flow_run.get_id(), batch_id=batch_id, tier=params.tier.value, pool=pool, deadline=deadline)
    events.start({"input_uri": params.input_uri, "submitted_at": submitted_at.isoformat(), "resumed_from": resumed_from})
    if context.placement is not None:
        log.info("placed on %s (%s): %s", context.placement.pool, context.placement.kind, context.placement.reason)
    if resumed_from:
        log.info("taking over the batch of flow run %s on pool %s", resumed_from, pool)
    metrics = BatchMetrics(batch_id=batch_id, pool=pool, tier=params.tier.value, config=settings.metrics)
    try:
        with log_context(batch_id=batch_id, flow_run_id=flow_run.get_id()):
            result = _process(params, context, settings, batch_id, submitted_at, deadline, pool, events, metrics)
    except BaseException as exc:
        metrics.failed()
        metrics.push()
        if isinstance(exc, Exception):  # not a cancelled or killed run: that one is moved, not failed
            events.finish("failed", {"error": f"{type(exc).__name__}: {exc}"[:1000]})
        raise
    counts = result.request_counts
    events.finish(
        "completed",
        {
            "version": result.version,
            "total": counts.total,
            "completed": counts.completed,
            "failed": counts.failed,
            "sla_met": result.sla.met,
            "slack_seconds": result.sla.slack_seconds,
        },
    )
    return result


def _process(
    params: BatchRunParameters,
    context: BatchRunContext,
    settings: Settings,
    batch_id: str,
    submitted_at: datetime,
    deadline: datetime,
    pool: str | None,
    events: BatchEvents,
    metrics: BatchMetrics,
) -> BatchRunResult:
    log = get_run_logger()
    started = time.perf_counter()
    created_at = datetime.now(UTC)
    storage = resolve_storage(settings.storage)
    store = ArtifactStore.from_config(storage)
    timings: dict[str, float] = {}
    # The models this run may serve (a --model folder outside the catalogue serves alone).
    catalogue = run_catalogue(settings.catalogue(), params.model, settings.engine)
    capacity = _capacity(settings) or (context.placement.kind if context.placement else None)

    # Prefect tasks here are light (I/O, tokenizing); the engine actor holds the real CPU/GPU
    # reservation, so tasks ask Ray for a fraction of a CPU and never starve it.
    with remote_options(num_cpus=0.25):
        t = time.perf_counter()
        # The catalogue model (or adapter) the batch names, and that model's engine settings.
        served = resolve_batch_model.submit(
            catalogue, params.input_uri, storage, settings.engine, str((settings.home / "models").absolute()), params.model
        ).result()
        model, engine_cfg = served.record, served.engine
        timings["resolve_model_s"] = time.perf_counter() - t
        metrics.bind_model(model.name)
        throughput_model = priced_model(catalogue, model.name)  # throughput is kept per catalogue model and pool
        # The engine starts in the background while the file is validated and planned.
        warming = start_engine.submit(
            storage,
            params.input_uri,
            params.endpoint,
            engine_for(served, params.endpoint),
            safety_factor=settings.pools.safety_factor,
        )

        t = time.perf_counter()
        batch = validate_input.submit(
            params.input_uri,
            batch_id,
            params.endpoint,
            model.source,
            model.sha256,
            engine_cfg,
            settings.limits,
            storage,
            served_model=model.name,  # a line naming another model is an error line, never answered by this one
            catalogue=catalogue,
        ).result()
        timings["validate_s"] = time.perf_counter() - t
        paths = store.batch(batch_id, batch.version)

        engine_requests, engine_tokens, busy, reused_shards = 0, 0, 0.0, 0
        if batch.published:
            log.info("version %s of %s is already published; reusing it", batch.version, batch_id)
            manifest = Manifest.model_validate_json(store.read_bytes(paths.manifest))
        else:
            # What this pool's engines answered per second lately (None: nothing measured yet).
            measured_rps = read_throughput(store, pool, throughput_model).requests_per_second() if pool else None
            # The estimate reads the input and the throughput logs where this run does (the resolved store).
            run_settings = settings.model_copy(update={"storage": storage})
            estimate = _estimate(context, params, run_settings, deadline, pool, capacity)
            t = time.perf_counter()
            plan = plan_shards_task.submit(
                storage,
                batch_id,
                batch.version,
                batch.valid_path,
                params.shard_size or settings.storage.shard_size_for(measured_rps and measured_rps / engine_cfg.replicas),
                model.sha256,
                engine_cfg.output_params(),
                params.use_cache,
            ).result()
            timings["shard_s"] = time.perf_counter() - t
            warming.wait()

            spec = engine_for(served, batch.endpoint)
            watch = SLAWatch(
                store=store,
                paths=paths,
                events=events,
                version=batch.version,
                total=batch.total_lines,
                completed=plan.cache_hits,
                failed=batch.invalid_lines,
                shard_names={s.name for s in plan.shards},
                sla=settings.sla,
                fallback_requests_per_second=measured_rps,
                metrics=metrics,
            )
            t = time.perf_counter()
            with watch:
                drill = context.drill or FaultInjection()
                inference = run_inference.submit(
                    storage,
                    batch_id,
                    batch.version,
                    plan.shards,
                    spec,
                    drill.fail_after_shards,
                    drill.slow_shards_seconds,
                    engine_priority(deadline, params.tier),
                    deadline=deadline,
                    safety_factor=settings.pools.safety_factor,
                ).result()
            timings["infer_s"] = time.perf_counter() - t
            timings["engine_wait_s"] = inference.engine_wait_seconds
            busy = timings["infer_s"] - inference.engine_wait_seconds  # engine time: what throughput is measured on
            engine_requests = inference.engine_requests
            reused_shards = len(inference.reused_shards)
            fresh = [o for o in inference.outcomes if o.name not in inference.reused_shards]
            cost = batch_cost(
                catalogue, model_id=model.name, pool=capacity, engine_seconds=engine_seconds(busy, spec.config.replicas)
            )
            engine_tokens = sum(o.usage.total_tokens for o in fresh)
            metrics.observe_shards(o.seconds for o in fresh)

            manifest = publish_results.submit(
                PublishRequest(
                    storage=storage,
                    batch=batch,
                    plan=plan,
                    inference=inference,
                    model=model,
                    # The settings, and the engine that actually ran (kind "auto" may have fallen back).
                    engine=engine_cfg.model_dump(mode="json")
                    | {"used": inference.engine, "fallback_reason": inference.fallback_reason},
                    engine_params_in_version=engine_cfg.output_params(),
                    created_at=created_at,
                    timings=timings,
                    lineage=context.parent,
                    progress=watch.latest,
                    estimate=estimate,
                    cost=cost,
                )
            ).result()

        sla = check_sla.submit(
            storage,
            manifest,
            params.tier,
            submitted_at,
            engine_requests,
            engine_tokens,
            busy,
            settings.sla,
            pool,
            deadline,
            throughput_model,
        ).result()
        if not sla.met:
            # Finished, but late: the watch saw no pending work past the deadline, so say it here.
            alert_once(store, paths, events, "sla.breached", {"version": batch.version, "slack_seconds": sla.slack_seconds})
        try:
            report_batch.submit(
                storage, manifest, sla, pool, batch.published, engine_requests, settings.api.results_url_seconds
            ).result()
        except Exception:  # noqa: BLE001 - the results are published; a missing UI view must not fail the batch
            log.exception("could not publish the run's artifacts")
        metrics.finish(manifest, duration_seconds=time.perf_counter() - started, slack_seconds=sla.slack_seconds)
        metrics.push()

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
