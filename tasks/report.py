"""report-batch: the run's Prefect artifacts — summary, first outputs, error counts.

Runs after check-sla, so the summary can say whether the deadline was met, and on every run,
including one that reuses an already published version (publish-results does not run then).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import islice

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact

from nightshift.core.artifacts import Manifest
from nightshift.core.protocol import BatchRequestOutput
from nightshift.core.report import artifact_key, error_rows, output_rows, summary_markdown
from nightshift.core.sla import SLAReport
from nightshift.settings import StorageConfig
from nightshift.storage import ArtifactStore

#: Output lines shown in the table: enough to eyeball answers, few enough to read only the file's head.
FIRST_OUTPUTS = 10


@task(name="report-batch", retries=1, retry_delay_seconds=2)
def report_batch(
    storage: StorageConfig,
    manifest: Manifest,
    sla: SLAReport,
    pool: str | None,
    reused: bool,
    engine_requests: int,
    link_seconds: int = 3600,
) -> list[str]:
    """Publish the batch's summary, first-outputs and error-count artifacts; return their keys.

    The summary links the output and error files (presigned for ``link_seconds`` on an object
    store) and shows the estimate made before the run beside its actual engine time and cost.
    The output file is read only up to its first rows; the error file is streamed line by line,
    since a bad input can make it as long as the batch.
    """
    store = ArtifactStore.from_config(storage)
    paths = store.batch(manifest.batch_id, manifest.version)
    counts = manifest.request_counts
    # Descriptions are what the run's Artifacts tab shows on each card: the news first.
    verdict = "SLA met" if sla.met else "SLA BREACHED"

    links = {
        "output": store.sign(manifest.output_file.path, link_seconds),
        "errors": store.sign(manifest.error_file.path, link_seconds),
    }
    # A local store has no presigning: its links are plain file URLs that do not expire.
    presigned = not all(link.startswith("file://") for link in links.values())
    expires = datetime.now(UTC) + timedelta(seconds=link_seconds) if presigned else None
    summary = artifact_key(manifest.batch_id, "summary")
    create_markdown_artifact(
        key=summary,
        description=f"{counts.completed}/{counts.total} completed, {counts.failed} failed · {verdict}",
        markdown=summary_markdown(
            manifest,
            sla,
            manifest_uri=store.uri(paths.manifest),
            pool=pool,
            reused=reused,
            engine_requests=engine_requests,
            downloads=links,
            downloads_expire_at=expires,
        ),
    )
    with store.fs.open(paths.output, "rb") as f:
        first = [BatchRequestOutput.model_validate_json(line) for line in islice((x for x in f if x.strip()), FIRST_OUTPUTS)]
    outputs = artifact_key(manifest.batch_id, "outputs")
    create_table_artifact(
        key=outputs,
        table=output_rows(first, limit=FIRST_OUTPUTS),
        description=f"First {len(first)} of {counts.completed} outputs: custom_id, answer, tokens",
    )
    with store.fs.open(paths.errors, "rb") as f:
        errors_by_code = error_rows(BatchRequestOutput.model_validate_json(line) for line in f if line.strip())
    errors = artifact_key(manifest.batch_id, "errors")
    create_table_artifact(
        key=errors,
        table=errors_by_code,
        description=f"{counts.failed} failed lines, counted by error code",
    )
    keys = [summary, outputs, errors]
    if reused:
        # No shard ran, so the SLA watch published no progress: say "done" under the same key.
        create_progress_artifact(
            100.0,
            key=artifact_key(manifest.batch_id, "progress"),
            description=f"{counts.total}/{counts.total} requests · reused published version {manifest.version}",
        )
        keys.append(artifact_key(manifest.batch_id, "progress"))
    return keys
