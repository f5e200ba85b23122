"""``nightshift`` command line: builds the settings, then runs flows (heavy imports stay lazy)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from nightshift.core.sla import Tier
from nightshift.settings import Settings, StorageConfig

app = typer.Typer(help="nightshift: SLA-aware offline batch inference on vLLM, Ray and Prefect.", no_args_is_help=True)
console = Console()


@contextlib.contextmanager
def _prefect_api(settings: Settings) -> Any:
    """Use the configured Prefect API, or run a local server for the duration of the command."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    from nightshift.services import local_prefect_server

    with console.status("starting a local Prefect server on 127.0.0.1 (set PREFECT_API_URL to use yours)"):
        server = local_prefect_server(settings.home / "prefect")
        url = server.__enter__()
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
            # Ship buffered run logs while the server is still up.
            from prefect.logging.handlers import APILogHandler

            APILogHandler().flush()
    finally:
        server.__exit__(None, None, None)


def _watch_shards(storage: StorageConfig, batch_id: str, stop: threading.Event) -> None:
    """Show shard progress by watching the store (the flow writes each shard when done)."""
    from nightshift.storage import ArtifactStore

    store = ArtifactStore.from_config(storage)
    base = f"{store.root}/batches/{batch_id}"
    columns = (SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("validating", total=None)
        started = time.time()
        while not stop.wait(0.5):
            with contextlib.suppress(FileNotFoundError, OSError):
                files = (
                    [f for f in store.fs.glob(f"{base}/*/shards/*.jsonl") if store.fs.modified(f).timestamp() >= started - 1]
                    if store.fs.exists(base)
                    else []
                )
                requests = sum(f.endswith(".requests.jsonl") for f in files)
                results = sum(f.endswith(".results.jsonl") for f in files)
                if requests:
                    progress.update(task, description="shards", total=requests, completed=results)


@app.command()
def run(
    file: Annotated[str, typer.Argument(help="Batch JSONL file (path or URL).")],
    model: Annotated[str | None, typer.Option(help="Model folder or embedded model name.")] = None,
    tier: Annotated[Tier, typer.Option(help="SLA tier.")] = Tier.BASIC,
    out: Annotated[Path | None, typer.Option(help="Store root for results (default: .nightshift/store).")] = None,
    batch_id: Annotated[str | None, typer.Option(help="Batch name in the store (default: file name).")] = None,
    shard_size: Annotated[int | None, typer.Option(min=1, help="Requests per shard.")] = None,
) -> None:
    """Run one batch file end to end and print where its results are."""
    if out is not None:
        os.environ["NIGHTSHIFT_STORAGE_ROOT"] = str(out.absolute())
    settings = Settings()
    with _prefect_api(settings) as api:
        console.print(f"Prefect API: {api}")
        from flows.batch import BatchRunParameters, default_batch_id, process_batch

        params = BatchRunParameters(input_uri=file, batch_id=batch_id, tier=tier, model=model, shard_size=shard_size)
        stop = threading.Event()
        watcher = threading.Thread(
            target=_watch_shards, args=(settings.storage, batch_id or default_batch_id(file), stop), daemon=True
        )
        watcher.start()
        try:
            result = process_batch(params)
        finally:
            stop.set()
            watcher.join(2)
    _print_summary(result)


@app.command("retry-failed")
def retry_failed_cmd(
    batch_id: Annotated[str, typer.Argument(help="A published batch (its name in the store).")],
    version: Annotated[str | None, typer.Option(help="Its version (default: the latest published).")] = None,
    tier: Annotated[Tier, typer.Option(help="SLA tier of the retry.")] = Tier.BASIC,
) -> None:
    """Run a batch's failed lines again as BATCH_ID-retry, linked to it in the manifest."""
    settings = Settings()
    with _prefect_api(settings):
        from flows.retry import RetryParameters, retry_failed

        result = retry_failed(RetryParameters(batch_id=batch_id, version=version, tier=tier))
    _print_summary(result)


@app.command()
def cleanup(
    older_than_hours: Annotated[
        float | None, typer.Option(min=0, help="Age limit in hours (default: NIGHTSHIFT_STORAGE_RETENTION_DAYS).")
    ] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be deleted.")] = False,
) -> None:
    """Delete batch versions and cache entries past their retention."""
    settings = Settings()
    with _prefect_api(settings):
        from flows.cleanup import CleanupParameters
        from flows.cleanup import cleanup as cleanup_flow

        report = cleanup_flow(CleanupParameters(max_age_hours=older_than_hours, dry_run=dry_run))
    verb = "would delete" if report.dry_run else "deleted"
    for uri in report.deleted:
        console.print(f"{verb}: {uri}", soft_wrap=True)
    console.print(f"{verb} {len(report.deleted)} versions and {report.cache_entries_deleted} cache entries; kept {report.kept}")


def _print_summary(result: Any) -> None:
    counts, usage, sla = result.request_counts, result.usage, result.sla
    table = Table(title=f"batch {result.batch_id} · version {result.version}" + (" (reused)" if result.reused else ""))
    for col in ("requests", "completed", "failed", "prompt tok", "completion tok", "engine req/s", "SLA"):
        table.add_column(col)
    table.add_row(
        str(counts.total),
        str(counts.completed),
        str(counts.failed),
        str(usage.prompt_tokens),
        str(usage.completion_tokens),
        f"{sla.requests_per_second:.2f}",
        f"{sla.tier.value}: {'met' if sla.met else 'BREACHED'} ({sla.slack_seconds / 3600:.1f} h slack)",
    )
    console.print(table)
    # Paths are printed unwrapped so they can be copied from any terminal width.
    console.print(f"output:   {result.output_uri}", soft_wrap=True)
    console.print(f"errors:   {result.error_uri}", soft_wrap=True)
    console.print(f"manifest: {result.manifest_uri}", soft_wrap=True)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
