"""score-table: a recurring scoring job. Validate the table, score only new or changed rows
through process-batch (the same inference path, placement and SLA tier as any batch), carry the
rest over from the previous version, publish a versioned Parquet table.

Run as a deployment (the nightly one), the rows to score go through ``submit_batch`` like any
batch: placed on spot or dedicated by the tier's deadline, run there as this run's subflow. Called
directly (``nightshift score``, tests), they run in-process, as ``nightshift run`` does.
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.runtime import deployment
from pydantic import BaseModel, Field

from blocks.storage import resolve_storage
from flows.batch import build_task_runner, process_batch
from nightshift.core.errors import OrchestrationError
from nightshift.core.protocol import Endpoint
from nightshift.core.runs import BatchRunParameters
from nightshift.core.scoring import ScoringJob
from nightshift.core.sla import Tier
from nightshift.orchestration.submit import follow_batch, submit_batch
from nightshift.settings import Settings, StorageConfig
from nightshift.storage import ArtifactStore
from nightshift.storage.io import read_uri
from tasks.model import resolve_model_task
from tasks.score import ScoringManifest, prepare_scoring, publish_scores


class ScoreParameters(BaseModel):
    """Which job to run."""

    job: str = Field(description="The job's YAML config (path or URL); see examples/scoring/.")
    tier: Tier | None = Field(default=None, description="SLA tier of this run; defaults to the job's.")


def load_job(uri: str, settings: Settings) -> ScoringJob:
    """Read and check a job config; a relative table path is relative to the config's folder."""
    import os
    import posixpath

    import yaml

    raw = yaml.safe_load(read_uri(uri, **settings.storage.storage_options(uri)))
    table = raw.get("table", "")
    if table and "://" not in table and not posixpath.isabs(table):
        base = posixpath.dirname(uri) if "://" in uri else os.path.dirname(os.path.abspath(uri))
        raw["table"] = posixpath.join(base, table)
    return ScoringJob.model_validate(raw)


@flow(
    name="score-table", description="Score new or changed rows of a table with an LLM; carry the rest over.", persist_result=False
)
def score_table(params: ScoreParameters) -> ScoringManifest:
    """prepare → process-batch (only the rows to score) → publish the scored table.

    Args:
        params: The scoring job to run (its YAML config) and its SLA tier.
    """
    log = get_run_logger()
    settings = Settings()
    storage = resolve_storage(settings.storage)
    job = load_job(params.job, settings)
    engine = settings.engine
    model = resolve_model_task(job.model or engine.model, engine.served_model_name, str((settings.home / "models").absolute()))
    prep = prepare_scoring(storage, job, model.sha256)
    if prep.published:
        log.info("%s version %s is already published; nothing changed", job.name, prep.version)
        store = ArtifactStore.from_config(storage)
        return ScoringManifest.model_validate_json(store.read_bytes(f"{store.scoring(job.name)}/{prep.version}/manifest.json"))
    output = errors = batch_manifest = None
    if prep.requests_uri:
        batch = BatchRunParameters(
            input_uri=prep.requests_uri,
            batch_id=f"score-{job.name}",
            tier=params.tier or job.tier,
            endpoint=Endpoint.CHAT_COMPLETIONS,
            model=job.model,
        )
        if deployment.id is not None:  # a deployment run (the nightly one), not a direct call
            output, errors, batch_manifest = _placed(batch, settings, storage)
        else:
            result = process_batch.with_options(task_runner=build_task_runner(settings))(batch)
            output, errors, batch_manifest = result.output_uri, result.error_uri, result.manifest_uri
    return publish_scores(storage, job, prep, model.name, output, errors, batch_manifest)


def _placed(batch: BatchRunParameters, settings: Settings, storage: StorageConfig) -> tuple[str, str, str]:
    """Send the rows to score through placement (the path every batch takes); wait for them,
    across a move from spot to dedicated; return the output, error and manifest URIs."""
    log = get_run_logger()
    fields = batch.model_dump(exclude={"input_uri", "tier"}, exclude_none=True)
    sub = submit_batch(batch.input_uri, tier=batch.tier, settings=settings, as_subflow=True, **fields)
    log.info("scoring batch %s → %s (%s): %s", sub.batch_id, sub.placement.pool, sub.placement.kind, sub.placement.reason)
    final = follow_batch(sub.flow_run_id, timeout=24 * 3600)[-1]
    if final.state is None or not final.state.is_completed():
        raise OrchestrationError(f"the scoring batch {sub.batch_id} ended {final.state.name if final.state else 'unknown'}")
    store = ArtifactStore.from_config(storage)
    manifest = store.published(sub.batch_id)[-1]
    paths = store.batch(manifest.batch_id, manifest.version)
    return manifest.output_file.path, manifest.error_file.path, store.uri(paths.manifest)
