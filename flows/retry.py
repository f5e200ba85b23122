"""retry-failed: a new batch of a published batch's error lines, linked to it as its parent."""

from __future__ import annotations

from prefect import flow, get_run_logger
from pydantic import BaseModel, Field

from blocks.storage import resolve_storage
from flows.batch import BatchRunResult, process_batch
from nightshift.core.errors import BatchFileError
from nightshift.core.lineage import Lineage, failed_lines, select_lines
from nightshift.core.runs import BatchRunContext, BatchRunParameters
from nightshift.core.sla import Tier
from nightshift.settings import Settings
from nightshift.storage import ArtifactStore


class RetryParameters(BaseModel):
    """Which batch version to retry."""

    batch_id: str = Field(description="The published batch whose failed lines to run again.")
    version: str | None = Field(default=None, description="Its version; defaults to the latest published one.")
    tier: Tier = Field(default=Tier.BASIC, description="SLA tier of the retry batch.")


@flow(name="retry-failed", description="Run the error lines of a published batch again as a new, linked batch.")
def retry_failed(params: RetryParameters) -> BatchRunResult:
    """Build ``{batch_id}-retry`` from the parent's error lines and run it with process-batch."""
    store = ArtifactStore.from_config(resolve_storage(Settings().storage))
    published = store.published(params.batch_id)
    chosen = [m for m in published if params.version in (None, m.version)]
    if not chosen:
        raise BatchFileError(f"no published version {params.version or ''} of batch {params.batch_id!r}".replace("  ", " "))
    parent = chosen[-1]
    numbers = failed_lines(store.read_bytes(parent.error_file.path))
    if not numbers:
        raise BatchFileError(f"batch {params.batch_id!r} version {parent.version} has no failed lines to retry")
    paths = store.batch(parent.batch_id, parent.version)
    retry_input = f"{paths.root}/retry-failed.jsonl"  # beside its parent: retention removes both together
    store.write_bytes(retry_input, select_lines(store.read_bytes(parent.input.path), numbers))
    get_run_logger().info("retrying %d failed lines of %s/%s", len(numbers), parent.batch_id, parent.version)
    return process_batch(
        BatchRunParameters(
            input_uri=store.uri(retry_input),
            batch_id=f"{parent.batch_id}-retry",
            tier=params.tier,
            endpoint=parent.endpoint,
        ),
        BatchRunContext(parent=Lineage(parent_batch_id=parent.batch_id, parent_version=parent.version, relation="retry-failed")),
    )
