"""``nightshift`` command line: builds the settings, then runs flows (heavy imports stay lazy)."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from nightshift.core.runs import EngineKind
from nightshift.core.sla import Tier
from nightshift.settings import Settings
from nightshift.telemetry.logs import configure_logging

app = typer.Typer(help="nightshift: SLA-aware offline batch inference on vLLM, Ray and Prefect.", no_args_is_help=True)
console = Console()


@app.callback()
def _setup() -> None:
    """Every command logs through nightshift's loggers in NIGHTSHIFT_LOG_FORMAT (text or json)."""
    configure_logging(Settings().log)


@contextlib.contextmanager
def _prefect_api(settings: Settings, out: Console | None = None, warm_up: Any = None) -> Any:
    """Use the configured Prefect API, else the one a running ``nightshift up`` on this machine
    serves (the run then shows in its UI, on its Ray), else a local server for this command.

    ``warm_up`` (no arguments) runs while a local server boots, so a cold command pays the two
    start-ups side by side rather than one after the other.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    if os.environ.get("PREFECT_API_URL"):
        yield os.environ["PREFECT_API_URL"]
        return
    running = _running_stack(settings)
    if running is not None:
        if running.get("ray_address") and settings.ray.address is None:
            # Runs on the stack's Ray: the caller builds its task runner from this tree, and flows
            # that start process-batch as a subflow (score, retry-failed) build theirs from the
            # environment at their own start, so it is set there too.
            settings.ray = settings.ray.model_copy(update={"address": running["ray_address"]})
            os.environ["NIGHTSHIFT_RAY_ADDRESS"] = running["ray_address"]
        with temporary_settings(updates={PREFECT_API_URL: running["api_url"]}):
            yield running["api_url"]
        return
    from nightshift.services import local_prefect_server

    with (out or console).status("starting a local Prefect server on 127.0.0.1 (set PREFECT_API_URL to use yours)"):
        server = local_prefect_server(settings.home / "prefect", while_starting=warm_up)
        url = server.__enter__()
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
            # Ship buffered run logs while the server is still up.
            from prefect.logging.handlers import APILogHandler

            APILogHandler().flush()
    finally:
        server.__exit__(None, None, None)


def _start_ray_and_engine(settings: Settings, file: str, model: str | None) -> None:
    """A local Ray, and the engine replicas the batch will use, started in this process.

    The flow then finds Ray connected (prefect-ray reuses it) and the warm replicas by name, so
    the engine loads while the Prefect server boots and the file is validated.
    """
    import ray

    from nightshift.engine.runner import ray_init_kwargs
    from tasks.infer import engine_for, start_engine
    from tasks.model import resolve_batch_model

    if not ray.is_initialized():
        ray.init(**ray_init_kwargs(settings.ray))
    cache = str((settings.home / "models").absolute())
    served = resolve_batch_model.fn(settings.catalogue(), file, settings.storage, settings.engine, cache, model)
    start_engine.fn(settings.storage, file, None, engine_for(served, None), safety_factor=settings.pools.safety_factor)


@contextlib.contextmanager
def _local_ray() -> Any:
    """Stop, at the end, a Ray this command started itself (``_start_ray_and_engine``)."""
    try:
        yield
    finally:
        import sys

        ray = sys.modules.get("ray")  # never imported: nothing to stop
        if ray is not None and ray.is_initialized():
            ray.shutdown()


def _running_stack(settings: Settings) -> dict[str, Any] | None:
    """What a ``nightshift up`` on this machine recorded (API URL, Ray address), if it is still up."""
    import json

    path = settings.home / "up.json"
    if not path.exists():
        return None
    info = json.loads(path.read_text())
    try:
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return None
    return info


@contextlib.contextmanager
def _stack_api(settings: Settings) -> Any:
    """The Prefect API of a running stack: PREFECT_API_URL, else the one ``nightshift up`` started."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = os.environ.get("PREFECT_API_URL") or (_running_stack(settings) or {}).get("api_url")
    if not url:
        console.print("[red]No Prefect server: start one with `nightshift up` (or set PREFECT_API_URL).[/red]")
        raise typer.Exit(2)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        yield url


@app.command()
def run(
    file: Annotated[str, typer.Argument(help="Batch JSONL file (path or URL).")],
    model: Annotated[str | None, typer.Option(help="Model folder or embedded model name.")] = None,
    tier: Annotated[Tier, typer.Option(help="SLA tier.")] = Tier.BASIC,
    out: Annotated[
        str | None,
        typer.Option(help="Store root for results: a folder or a URL like s3://bucket/prefix (default: .nightshift/store)."),
    ] = None,
    batch_id: Annotated[str | None, typer.Option(help="Batch name in the store (default: file name).")] = None,
    shard_size: Annotated[int | None, typer.Option(min=1, help="Requests per shard.")] = None,
    engine: Annotated[
        EngineKind | None,
        typer.Option(help="vllm, transformers (slower, runs wherever torch runs), or auto: vLLM, else transformers."),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Stream the engine's, Ray's and Prefect's logs here instead of a log file.")
    ] = False,
) -> None:
    """Run one batch file end to end and print where its results are.

    The terminal shows one progress bar and the summary; everything the engine, Ray and Prefect
    print goes to a log file for the run (its path is printed first; ``-v`` streams it instead).
    """
    from nightshift.core.runs import BatchRunContext, RunOverrides, default_batch_id
    from nightshift.terminal import quiet, run_log_path, summary_lines, watch_progress

    # The flow applies the same overrides to the settings it builds at its start, as a deployment's run does.
    store_root = None if out is None else out if "://" in out else str(Path(out).absolute())
    context = BatchRunContext(overrides=RunOverrides(engine=engine, store_root=store_root))
    settings = Settings(**context.settings_kwargs())
    name = batch_id or default_batch_id(file)
    log_path = None if verbose else run_log_path(settings.home.absolute(), name)
    if log_path is not None:
        console.print(f"log: {log_path}", soft_wrap=True)
    with quiet(log_path) as term:
        try:
            warm_up = None if settings.ray.address else (lambda: _start_ray_and_engine(settings, file, model))
            with _prefect_api(settings, term, warm_up) as api, _local_ray():
                term.print(f"Prefect API: {api}")
                from flows.batch import BatchRunParameters, build_task_runner, process_batch

                params = BatchRunParameters(input_uri=file, batch_id=batch_id, tier=tier, model=model, shard_size=shard_size)
                run_batch = process_batch.with_options(task_runner=build_task_runner(settings))
                stop = threading.Event()
                watcher = threading.Thread(target=watch_progress, args=(term, settings.storage, name, stop), daemon=True)
                watcher.start()
                try:
                    result = run_batch(params, context)
                finally:
                    stop.set()
                    watcher.join(2)
        except Exception as exc:
            if log_path is None:
                raise
            # The traceback goes to the log; the terminal gets what broke and where to read more.
            import traceback

            traceback.print_exc()
            term.print(f"[red]run failed: {type(exc).__name__}: {str(exc)[:300]}[/red]")
            term.print(f"full log: {log_path}", soft_wrap=True)
            raise typer.Exit(1) from None
        for line in summary_lines(result):
            term.print(line, soft_wrap=True, highlight=False)


def _pools_for_estimate(settings: Settings) -> tuple[Any, str]:
    """(spot, dedicated) as Prefect sees them when a server with the deployments is reachable; else
    both pools of ``deployments/pools.yaml`` assumed online with a free slot. Also says which."""
    from deployments.pools import load_pools
    from nightshift.core.errors import OrchestrationError
    from nightshift.core.placement import PoolState
    from nightshift.orchestration.submit import read_pool_states

    url = os.environ.get("PREFECT_API_URL") or (_running_stack(settings) or {}).get("api_url")
    if url:
        from prefect.settings import PREFECT_API_URL, temporary_settings

        # Not registered (OrchestrationError) or not answering: the estimate still stands on assumed pools.
        with contextlib.suppress(OrchestrationError, Exception), temporary_settings(updates={PREFECT_API_URL: url}):
            return read_pool_states(settings), "read from Prefect now"
    cfg = settings.pools
    declared: dict[str, str] = {p.kind: p.name for p in load_pools()}
    pools = (
        PoolState(
            name=declared.get("spot", "spot"), kind="spot", online_workers=1, requests_per_second=cfg.spot_requests_per_second
        ),
        PoolState(
            name=declared.get("dedicated", "dedicated"),
            kind="dedicated",
            online_workers=1,
            requests_per_second=cfg.dedicated_requests_per_second,
        ),
    )
    return pools, "assumed online with a free slot (no Prefect server with the deployments to ask)"


@app.command()
def estimate(
    file: Annotated[str, typer.Argument(help="Batch JSONL file (path or URL).")],
    tier: Annotated[Tier, typer.Option(help="SLA tier: the deadline placement plans for.")] = Tier.BASIC,
    as_json: Annotated[bool, typer.Option("--json", help="Print the estimate as JSON.")] = False,
) -> None:
    """What a batch would take and cost, without running it: requests, tokens, model, pool, ETA,
    engine-hours, cost and how sure that is (nothing is submitted, no engine starts)."""
    from datetime import UTC, datetime

    from nightshift.core.errors import BatchFileError
    from nightshift.core.report import format_duration
    from nightshift.core.sla import deadline_for
    from nightshift.orchestration.estimate import estimate_input

    settings = Settings()
    now = datetime.now(UTC)
    pools, pools_seen = _pools_for_estimate(settings)
    try:
        found = estimate_input(
            file, settings=settings, deadline=deadline_for(now, tier, settings.sla.hours()), pools=pools, now=now
        )
    except BatchFileError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(found.model_dump_json(indent=2))
        return
    cost, placement = found.cost, found.placement
    saving = f" (spot saves ${cost.spot_saving_usd:.4f} against dedicated)" if cost.pool == "spot" else ""
    rows = [
        ("requests", str(found.requests)),
        ("prompt tokens", f"~{found.prompt_tokens} (characters / 4)"),
        ("completion tokens", f"≤{found.completion_tokens} (upper bound: the lines' max_tokens)"),
        ("model", found.model),
        ("pool", f"{placement.pool} ({placement.kind}): {placement.reason}"),
        ("pools", pools_seen),
        ("ETA", f"{format_duration(found.eta_seconds)} at {found.requests_per_second:.3g} req/s"),
        ("engine-hours", f"{found.engine_hours:.4f}"),
        ("cost", f"${cost.usd:.4f} at ${cost.price_per_engine_hour:g}/engine-hour{saving}"),
        ("confidence", f"{found.confidence}: {found.basis}"),
    ]
    table = Table(box=None, pad_edge=False, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


@app.command()
def score(
    job: Annotated[str, typer.Argument(help="Scoring job YAML (see examples/scoring/candidates.yaml).")],
    tier: Annotated[Tier | None, typer.Option(help="SLA tier of this run (default: the job's).")] = None,
) -> None:
    """Run a scoring job once: score new or changed rows, carry the rest over, print the table."""
    settings = Settings()
    with _prefect_api(settings):
        from flows.score_table import ScoreParameters, score_table

        m = score_table(ScoreParameters(job=job, tier=tier))
    console.print(
        f"{m.job} version {m.version}: {m.rows} rows ({m.scored} scored, {m.carried} carried over), {m.errors} errors",
        soft_wrap=True,
    )
    console.print(f"results:  {m.results}", soft_wrap=True)
    console.print(f"errors:   {m.errors_file}", soft_wrap=True)


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


pools_app = typer.Typer(help="Work pools (deployments/pools.yaml).", no_args_is_help=True)
automations_app = typer.Typer(help="Prefect automations (deployments/automations.py).", no_args_is_help=True)
app.add_typer(pools_app, name="pools")
app.add_typer(automations_app, name="automations")


@pools_app.command("apply")
def pools_apply(
    pool_type: Annotated[str, typer.Option("--type", help="'process' here; 'kubernetes' on a cluster.")] = "process",
) -> None:
    """Create or update the declared work pools and their concurrency limits (idempotent)."""
    from deployments.pools import apply_pools, load_pools

    with _stack_api(Settings()):
        for name in apply_pools(load_pools(), pool_type):
            console.print(f"work pool {name}: applied ({pool_type})")


@automations_app.command("apply")
def automations_apply() -> None:
    """Create or update nightshift's automations (needs the deployments registered)."""
    from deployments.automations import apply_automations

    settings = Settings()
    with _stack_api(settings):
        url = settings.alerts.webhook_url.get_secret_value() if settings.alerts.webhook_url else None
        for name, automation_id in apply_automations(settings.pools, settings.sla, url, settings.alerts.block).items():
            console.print(f"automation {name}: {automation_id}")


@app.command()
def status(
    batch_id: Annotated[str, typer.Argument(help="The batch's name in the store.")],
    watch: Annotated[bool, typer.Option("--watch", "-w", help="Keep the view live until the batch is published.")] = False,
) -> None:
    """Show a batch's latest progress: done/total, rate, ETA, slack against its deadline, risk."""
    from rich.live import Live

    from nightshift.storage import ArtifactStore

    store = ArtifactStore.from_config(Settings().storage)
    if store.newest(batch_id, "progress.json") is None:
        console.print(f"[red]no progress recorded for batch {batch_id!r} in {store.url}[/red]")
        raise typer.Exit(1)
    if not watch:
        console.print(_status_view(store, batch_id))
        return
    with Live(_status_view(store, batch_id), console=console, refresh_per_second=1) as live:
        while store.newest(batch_id, "manifest.json") is None:
            time.sleep(2)
            live.update(_status_view(store, batch_id))
        live.update(_status_view(store, batch_id))


def _status_view(store: Any, batch_id: str) -> Any:
    """The status table of the batch's newest progress, with its warnings and time."""
    from rich.console import Group

    from nightshift.core.progress import Progress

    running = store.newest(batch_id, "progress.json")
    p = Progress.model_validate_json(store.read_bytes(running.progress))
    published = store.newest(batch_id, "manifest.json") is not None

    def _s(x: float | None) -> str:
        return "?" if x is None else f"{x:.0f} s"

    rate = "?" if p.requests_per_second is None else f"{p.requests_per_second:.2f} req/s"
    table = Table(title=f"batch {p.batch_id} · version {p.version} · {p.tier} on {p.pool or '-'}")
    for col in ("done", "failed", "rate", "ETA", "deadline", "slack", "risk"):
        table.add_column(col)
    table.add_row(
        f"{p.completed + p.failed}/{p.total} ({p.percent:.0f}%)",
        str(p.failed),
        rate,
        _s(p.eta_seconds),
        f"{p.deadline:%Y-%m-%d %H:%M:%S} UTC",
        _s(p.slack_seconds),
        p.risk.value,
    )
    notes = [f"[yellow]warning[/yellow] {w.code}: {w.message}" for w in p.warnings]
    notes.append(f"as of {p.updated_at:%Y-%m-%d %H:%M:%S} UTC" + (" · published" if published else ""))
    return Group(table, *notes)


@app.command()
def simulate(
    scenario: Annotated[Path, typer.Argument(help="Fleet scenario YAML (see examples/fleet/week.yaml).")],
    out: Annotated[Path, typer.Option(help="Folder for report.json and the PNG plots.")] = Path("fleet-report"),
    sweep: Annotated[
        str | None,
        typer.Option(help="KNOB=v1,v2,... re-runs the policy per value: safety_factor, at_risk_margin, dedicated_gpus, ..."),
    ] = None,
    plots: Annotated[bool, typer.Option(help="Write the PNG plots.")] = True,
) -> None:
    """Simulate a GPU fleet for a scenario with the product's own placement, SLA watch, escalation,
    shard resume and queue order; compare with all-dedicated and all-spot; write JSON and plots."""
    from deployments.pools import load_pools
    from nightshift.core.jobs import Priority
    from nightshift.fleet import ScenarioError, load_scenario, run_scenario

    settings = Settings()
    # Waiting runs start by their work queue's declared priority (pools.yaml), then FIFO.
    queue_priorities: dict[str, dict[str, int]] = {
        str(pool.kind): {p.value: pool.queues.get(settings.pools.priority_queues.get(p.value, ""), 0) for p in Priority}
        for pool in load_pools()
    }
    try:
        sc = load_scenario(scenario)
        knob = None
        if sweep:
            name, _, values = sweep.partition("=")
            try:
                knob = (name.strip(), [float(v) for v in values.split(",") if v.strip()])
            except ValueError:
                raise ScenarioError("values must be numbers: KNOB=v1,v2,...", source="--sweep") from None
            if not knob[1]:
                raise ScenarioError("give values: KNOB=v1,v2,...", source="--sweep")
        with console.status(f"simulating {sc.name}..."):
            report, runs = run_scenario(sc, base_settings=settings, queue_priorities=queue_priorities, sweep=knob)
    except ScenarioError as exc:
        console.print(f"[red]{exc}[/red]", soft_wrap=True)
        raise typer.Exit(2) from None
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(report.model_dump_json(indent=2) + "\n")
    if plots:
        from nightshift.fleet.plots import write_plots

        write_plots(report, runs, out)

    table = Table(title=f"{report.scenario} · seed {report.seed} · {report.wall_seconds:.1f} s")
    for col in ("run", "met", "worst tier", "breaches", "cost USD", "GPU util spot/ded", "escalated", "preempted"):
        table.add_column(col)
    for name, r in [("policy", report.policy), *report.baselines.items()]:
        worst = min(r.tiers.items(), key=lambda kv: kv[1].attainment) if r.tiers else None
        table.add_row(
            name,
            f"{r.attainment:.3%}",
            f"{worst[0]} {worst[1].attainment:.3%}" if worst else "-",
            str(sum(t.breaches for t in r.tiers.values())),
            f"{r.cost:,.0f}",
            f"{r.pools['spot'].utilisation:.0%} / {r.pools['dedicated'].utilisation:.0%}",
            str(r.escalations),
            str(r.preempted_runs),
        )
    console.print(table)
    if report.cost_vs_all_dedicated is not None:
        console.print(f"cost vs all-dedicated: {report.cost_vs_all_dedicated:.2f}", soft_wrap=True)
    for p in report.sweep:
        console.print(
            f"sweep {p['knob']}={p['value']:g}: worst tier {p['min_tier_attainment']:.3%}, cost {p['cost']:,.0f}", soft_wrap=True
        )
    console.print(f"report:   {out / 'report.json'}", soft_wrap=True)


keys_app = typer.Typer(help="Gateway API keys and tokens.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@app.command("ls")
def list_batches(limit: Annotated[int, typer.Option(min=1, help="How many batches, newest first.")] = 20) -> None:
    """All batches at a glance: id, tier, pool, status, done/total, ETA, risk and cost."""
    from nightshift.storage import ArtifactStore
    from nightshift.storage.listing import batch_summaries

    settings = Settings()
    rows = batch_summaries(ArtifactStore.from_config(settings.storage), limit=limit)
    if not rows:
        console.print(f"no batches in {settings.storage.root}")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("batch", "tier", "pool", "status", "done", "ETA", "risk", "cost $"):
        table.add_column(column, no_wrap=True, overflow="ellipsis", max_width=22 if column == "batch" else None)
    for r in rows:
        cost = "" if r.cost_usd is None else f"{r.cost_usd:.4f}"
        eta = "" if r.eta_seconds is None else f"{r.eta_seconds:.0f}s"
        table.add_row(r.batch_id, r.tier or "", r.pool or "", r.status, f"{r.done}/{r.total}", eta, r.risk or "", cost)
    console.print(table)


@app.command()
def results(
    batch_id: Annotated[str, typer.Argument(help="The batch's name in the store.")],
    out: Annotated[Path | None, typer.Option(help="Export to this file: .csv or .parquet (default: print rows).")] = None,
    rows: Annotated[int, typer.Option(min=1, help="Rows to print when not exporting.")] = 20,
) -> None:
    """A published batch's answers joined to their custom_id, printed or exported (CSV, Parquet)."""
    import pandas as pd

    from nightshift.core.errors import StorageError
    from nightshift.storage import ArtifactStore
    from nightshift.storage.listing import answer_rows

    try:
        found = answer_rows(ArtifactStore.from_config(Settings().storage), batch_id)
    except StorageError as exc:
        console.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    frame = pd.DataFrame(found)
    if out is not None:
        if out.suffix == ".parquet":
            frame.to_parquet(out, index=False)
        elif out.suffix == ".csv":
            frame.to_csv(out, index=False)
        else:
            console.print("[red]--out must end in .csv or .parquet[/red]")
            raise typer.Exit(2)
        console.print(f"wrote {len(frame)} rows to {out}")
        return
    table = Table(box=None, pad_edge=False)
    for column in ("custom_id", "status", "answer"):
        table.add_column(column, no_wrap=True, overflow="ellipsis", max_width=60 if column == "answer" else 24)
    for r in found[:rows]:
        answer = r["answer"] if r["status"] == "ok" else f"{r['error_code']}: {r['error_message']}"
        table.add_row(str(r["custom_id"]), str(r["status"]), str(answer or "").replace("\n", " "))
    console.print(table)
    if len(found) > rows:
        console.print(f"… {len(found) - rows} more (export them all with --out results.csv)")


@app.command("config-docs")
def config_docs(
    out: Annotated[Path, typer.Option(help="Where to write the page.")] = Path("docs/configuration.md"),
) -> None:
    """Write the configuration page (every setting, its variable, default and meaning) from the settings tree."""
    from nightshift.settings import settings_reference

    out.write_text(settings_reference())
    console.print(f"wrote {out}")


@app.command("api-docs")
def api_docs(
    out: Annotated[Path, typer.Option(help="Where to write the page.")] = Path("docs/http-api.md"),
) -> None:
    """Write the HTTP API reference (every route, its parameters, bodies and errors) from the gateway's OpenAPI."""
    from nightshift.api.reference import http_api_reference

    out.write_text(http_api_reference())
    console.print(f"wrote {out}")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Listen address (default NIGHTSHIFT_API_HOST, 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default NIGHTSHIFT_API_PORT, 8080).")] = None,
) -> None:
    """Run the OpenAI-compatible Files/Batches gateway (needs a Prefect API with the deployments)."""
    import uvicorn

    from nightshift.api.app import GatewayConfigError, create_app

    settings = Settings()
    # One record per request from the app's access logger (uvicorn's own access log is off);
    # NIGHTSHIFT_LOG_FORMAT=json makes each a JSON object.
    configure_logging(settings.log)
    try:
        app = create_app(settings)
    except GatewayConfigError as exc:
        console.print(f"[red]not starting the gateway: {exc}[/red]")
        raise typer.Exit(2) from None
    with _stack_api(settings):
        uvicorn.run(
            app,
            host=host or settings.api.host,
            port=port or settings.api.port,
            log_level="info",
            access_log=False,
        )


def _run_db(fn: Any) -> Any:
    """Run ``fn(session)`` against the gateway database (migrated first) and commit."""
    import asyncio

    from nightshift.api.db import Database

    async def main() -> Any:
        database = Database(Settings().api.database_url)
        await database.migrate()
        try:
            async with database.session() as session:
                result = await fn(session)
                await session.commit()
                return result
        finally:
            await database.dispose()

    return asyncio.run(main())


@keys_app.command("create")
def keys_create(
    org: Annotated[str, typer.Option(help="Organisation the key acts for (created if new).")],
    tier: Annotated[Tier, typer.Option(help="SLA tier and rate limit of the key.")] = Tier.BASIC,
    name: Annotated[str, typer.Option(help="A label for the key.")] = "default",
    webhook_url: Annotated[str | None, typer.Option(help="Default webhook for this key's batches.")] = None,
) -> None:
    """Create an API key; the secret is printed once and stored only as a hash."""
    from nightshift.api import db
    from nightshift.api.auth import create_api_key

    async def make(session: Any) -> tuple[Any, str]:
        found = await db.get_org_by_name(session, org)
        found = found or await db.create_org(session, org, tier.value)
        return await create_api_key(session, found, name, tier=tier.value, default_webhook_url=webhook_url)

    key, secret = _run_db(make)
    console.print(f"key {key.id} for org {org} ({tier.value}); the secret is shown once:", soft_wrap=True)
    print(secret)


@keys_app.command("revoke")
def keys_revoke(key: Annotated[str, typer.Argument(help="Key id or the key's prefix.")]) -> None:
    """Revoke an API key: it is refused from the next request on."""
    from nightshift.api.auth import revoke_api_key

    _run_db(lambda session: revoke_api_key(session, key))
    console.print(f"revoked {key}")


@keys_app.command("token")
def keys_token(
    org: Annotated[str, typer.Option(help="Organisation the token acts for.")],
    sub: Annotated[str, typer.Option(help="Subject (who the token is for).")],
    tier: Annotated[Tier | None, typer.Option(help="Tier claim (default: the org's).")] = None,
    ttl: Annotated[int, typer.Option(help="Seconds until it expires.")] = 3600,
) -> None:
    """Issue an HS256 bearer JWT signed with NIGHTSHIFT_API_JWT_SECRET (prints it)."""
    from nightshift.api.auth import issue_jwt

    print(issue_jwt(Settings().api, org=org, sub=sub, tier=tier.value if tier else None, ttl_seconds=ttl))


@keys_app.command("revoke-token")
def keys_revoke_token(jti: Annotated[str, typer.Argument(help="The token's jti claim.")]) -> None:
    """Revoke a bearer JWT by its jti: refused from the next request on."""
    from nightshift.api.auth import revoke_token

    _run_db(lambda session: revoke_token(session, jti))
    console.print(f"revoked token {jti}")


@keys_app.command("webhook-secret")
def keys_webhook_secret(org: Annotated[str, typer.Option(help="Organisation.")]) -> None:
    """Print the org's webhook signing secret (``whsec_...``): receivers verify the Standard Webhooks
    headers (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``) with it, e.g. with the
    ``openai`` client's ``webhooks.unwrap``."""
    from nightshift.api import db
    from nightshift.api.webhooks import signing_secret

    async def read(session: Any) -> str | None:
        found = await db.get_org_by_name(session, org)
        return found.webhook_secret if found else None

    secret = _run_db(read)
    if secret is None:
        console.print(f"[red]no org {org!r}[/red]")
        raise typer.Exit(1)
    print(signing_secret(secret))


alerts_app = typer.Typer(help="SLA alerts received on this machine.", no_args_is_help=True)
app.add_typer(alerts_app, name="alerts")


@alerts_app.command("tail")
def alerts_tail(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing new alerts.")] = False,
) -> None:
    """Print the SLA alerts `nightshift up`'s local sink received (when no webhook is configured)."""
    import json

    path = Settings().home / "alerts.jsonl"
    seen = 0
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        for line in lines[seen:]:
            alert = json.loads(line)
            try:
                body = json.loads(alert.get("body", "{}"))
            except ValueError:
                body = {"text": alert.get("body")}
            when = time.strftime("%H:%M:%S", time.localtime(alert.get("received_at", 0)))
            console.print(f"{when} [bold]{body.get('alert', '?')}[/bold] {alert.get('subject', '')}", soft_wrap=True)
            console.print(f"         {json.dumps({k: v for k, v in body.items() if k != 'progress'})}", soft_wrap=True)
        seen = len(lines)
        if not follow:
            return
        time.sleep(1)


@app.command()
def up(
    port: Annotated[int, typer.Option(help="Port of the Prefect server started here (UI and API).")] = 4200,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--db",
            "--database-url",
            help="Prefect's database (default: SQLite under .nightshift/prefect), e.g. postgresql+asyncpg://user@host/db.",
        ),
    ] = None,
    pool_type: Annotated[str, typer.Option("--type", help="Pool type: 'process' runs workers here.")] = "process",
) -> None:
    """Start Prefect and Ray on 127.0.0.1 (or join PREFECT_API_URL / NIGHTSHIFT_RAY_ADDRESS), apply
    pools, deployments and automations, and run one worker per pool until Ctrl-C."""
    import json
    import signal
    from contextlib import ExitStack

    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deployments.automations import apply_automations
    from deployments.pools import ROOT, apply_pools, deploy_all, load_pools
    from nightshift.services import (
        AlertSink,
        local_prefect_server,
        local_pushgateway,
        local_ray_head,
        start_worker,
        stop_process_groups,
    )

    settings = Settings()
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    state_file = settings.home / "up.json"
    with ExitStack() as stack:
        url = os.environ.get("PREFECT_API_URL")
        if url and database_url:
            console.print(f"[yellow]--db ignored: PREFECT_API_URL is set, so the Prefect server at {url} is used[/yellow]")
        if not url:
            if database_url:
                from nightshift.api.db import async_url

                database_url = async_url(database_url)  # the gateway's rule: postgresql:// means asyncpg
            with console.status(f"starting Prefect on http://127.0.0.1:{port}"):
                url = stack.enter_context(local_prefect_server(settings.home / "prefect", port=port, database_url=database_url))
        ray_address = settings.ray.address
        if not ray_address:
            with console.status("starting a Ray head on 127.0.0.1"):
                temp = settings.ray.temp_dir or Path(f"/tmp/nightshift-ray-{os.getuid()}")  # socket paths must stay short
                ray_address = stack.enter_context(local_ray_head(temp, num_cpus=settings.ray.num_cpus))
        stack.enter_context(temporary_settings(updates={PREFECT_API_URL: url}))
        pushgateway = settings.metrics.pushgateway_url
        if not pushgateway and shutil.which("prometheus-pushgateway"):
            # Batch runs are jobs: they push their metrics (nightshift.telemetry.metrics).
            pushgateway = stack.enter_context(local_pushgateway(settings.home))
        env = {
            **os.environ,
            "PREFECT_API_URL": url,
            # nightshift's own loggers also go to the run's logs in the Prefect UI.
            "PREFECT_LOGGING_EXTRA_LOGGERS": "nightshift,flows,tasks",
            **({"NIGHTSHIFT_METRICS_PUSHGATEWAY_URL": pushgateway} if pushgateway else {}),
            "NIGHTSHIFT_REPO_DIR": str(ROOT),
            "NIGHTSHIFT_RAY_ADDRESS": ray_address,
            # Each pool's deployments may name their own cluster; by default both use this one.
            "NIGHTSHIFT_SPOT_RAY_ADDRESS": os.environ.get("NIGHTSHIFT_SPOT_RAY_ADDRESS") or ray_address,
            "NIGHTSHIFT_DEDICATED_RAY_ADDRESS": os.environ.get("NIGHTSHIFT_DEDICATED_RAY_ADDRESS") or ray_address,
        }
        pools = load_pools()
        apply_pools(pools, pool_type)
        deploy_all(env)
        alerts_url = settings.alerts.webhook_url.get_secret_value() if settings.alerts.webhook_url else None
        if alerts_url is None:
            # No webhook configured: alerts land in a file on this machine (`nightshift alerts tail`).
            alerts_url = stack.enter_context(AlertSink(settings.home / "alerts.jsonl")).url
        automations = apply_automations(settings.pools, settings.sla, alerts_url, settings.alerts.block)

        workers: dict[str, Any] = {}
        logs = settings.home / "workers"
        if pool_type == "process":
            for pool in pools:
                workers[pool.name] = start_worker(pool.name, env, logs / f"{pool.name}.log")
        stack.callback(lambda: stop_process_groups(list(workers.values())))
        state_file.parent.mkdir(parents=True, exist_ok=True)
        state_file.write_text(json.dumps({"pid": os.getpid(), "api_url": url, "ray_address": ray_address}))
        stack.callback(state_file.unlink, missing_ok=True)

        table = Table(title="nightshift is up")
        table.add_column("what")
        table.add_column("where")
        table.add_row("Prefect UI/API", url.removesuffix("/api"))
        table.add_row("Ray", ray_address)
        table.add_row("Pushgateway (batch metrics)", pushgateway or "none (set NIGHTSHIFT_METRICS_PUSHGATEWAY_URL)")
        for pool in pools:
            table.add_row(f"pool {pool.name}", f"{pool.kind}, limit {pool.concurrency_limit}, worker log {logs / pool.name}.log")
        for name in automations:
            table.add_row("automation", name)
        table.add_row(
            "alerts", alerts_url if settings.alerts.webhook_url else f"{settings.home / 'alerts.jsonl'} (nightshift alerts tail)"
        )
        console.print(table)
        console.print(f"export PREFECT_API_URL={url}   # then: nightshift submit FILE --tier premium", soft_wrap=True)
        console.print("ready", soft_wrap=True)
        try:
            while not stopping:
                for name, proc in list(workers.items()):
                    if proc.poll() is not None:  # a worker died: say so and start a new one
                        console.print(f"[yellow]worker for {name} exited ({proc.returncode}); restarting[/yellow]")
                        workers[name] = start_worker(name, env, logs / f"{name}.log")
                time.sleep(1)
        except KeyboardInterrupt:
            pass
        console.print("stopping workers, Ray and Prefect started here")


@app.command()
def submit(
    file: Annotated[str, typer.Argument(help="Batch JSONL file (path or URL) the workers can read.")],
    tier: Annotated[Tier, typer.Option(help="SLA tier.")] = Tier.BASIC,
    batch_id: Annotated[str | None, typer.Option(help="Batch name in the store (default: file name).")] = None,
    model: Annotated[str | None, typer.Option(help="Model folder or embedded model name.")] = None,
    shard_size: Annotated[int | None, typer.Option(min=1, help="Requests per shard.")] = None,
    wait: Annotated[bool, typer.Option(help="Wait for the batch (across preemption) and print where results are.")] = False,
) -> None:
    """Place a batch on the spot or dedicated pool by its deadline and start it there."""
    from nightshift.api import follow_batch, submit_batch

    settings = Settings()
    with _stack_api(settings) as api:
        extra: dict[str, Any] = {
            k: v for k, v in {"batch_id": batch_id, "model": model, "shard_size": shard_size}.items() if v is not None
        }
        sub = submit_batch(file, tier=tier, settings=settings, **extra)
        p = sub.placement
        console.print(
            f"batch {sub.batch_id} ({sub.requests} requests, {tier.value}, due {sub.deadline:%Y-%m-%d %H:%M} UTC) → "
            f"[bold]{p.pool}[/bold] ({p.kind}): {p.reason}",
            soft_wrap=True,
        )
        console.print(f"flow run {sub.flow_run_name}: {api.removesuffix('/api')}/runs/flow-run/{sub.flow_run_id}", soft_wrap=True)
        if not wait:
            return
        runs = follow_batch(sub.flow_run_id)
    for run in runs:
        console.print(f"  {run.name} on {run.work_pool_name}: {run.state.name if run.state else '?'}")
    from nightshift.storage import ArtifactStore

    published = ArtifactStore.from_config(settings.storage).published(sub.batch_id)
    if runs[-1].state is None or not runs[-1].state.is_completed() or not published:
        console.print("[red]the batch did not complete[/red]")
        raise typer.Exit(1)
    manifest = published[-1]
    console.print(f"output:   {manifest.output_file.path}", soft_wrap=True)
    console.print(f"errors:   {manifest.error_file.path}", soft_wrap=True)


def _print_summary(result: Any) -> None:
    from nightshift.terminal import summary_lines

    for line in summary_lines(result):
        console.print(line, soft_wrap=True, highlight=False)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
