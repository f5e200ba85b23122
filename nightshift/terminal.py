"""What a person at a terminal sees of a run: one progress bar and a summary that fits 80 columns,
while the engine's, Ray's and Prefect's own output goes to a log file per run.

Quiet mode works at the file-descriptor level: stdout and stderr (fds 1 and 2) point at the log
file for the run, so everything lands there — Python loggers, tqdm bars, C extensions, and the
child processes (a private Prefect server, Ray's workers) that inherit the descriptors. The
terminal is kept on a duplicate of the original stdout, for the bar and the summary only.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from nightshift.settings import StorageConfig

SUMMARY_WIDTH = 80


def run_log_path(home: Path, batch_id: str) -> Path:
    """Where one run's full log goes: ``<home>/logs/<batch id>-<time>.log``."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return home / "logs" / f"{batch_id}-{stamp}.log"


@contextlib.contextmanager
def quiet(log_path: Path | None) -> Iterator[Console]:
    """Send fds 1 and 2 to ``log_path`` for the block and yield a console on the real terminal;
    with ``log_path`` None (``-v``), nothing moves and the console is the ordinary one."""
    if log_path is None:
        yield Console()
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
    log_fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    try:
        yield Console(file=terminal, width=min(SUMMARY_WIDTH, _terminal_width(saved[0])))
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        terminal.close()


def _terminal_width(fd: int) -> int:
    try:
        return os.get_terminal_size(fd).columns
    except OSError:
        return SUMMARY_WIDTH


def watch_progress(console: Console, storage: StorageConfig, batch_id: str, stop: threading.Event) -> None:
    """One bar from the run's ``progress.json`` (the SLA watch writes it per shard): requests done
    of total, req/s, ETA and the slack against the deadline."""
    from nightshift.core.progress import Progress as BatchProgress
    from nightshift.storage import ArtifactStore

    store = ArtifactStore.from_config(storage)
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(bar_width=24),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
    )
    started = datetime.now().timestamp()
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("starting", total=None, rate="")
        while not stop.wait(0.5):
            with contextlib.suppress(FileNotFoundError, OSError, ValueError):
                newest = store.newest(batch_id, "progress.json")
                if newest is None or store.fs.modified(newest.progress).timestamp() < started - 1:
                    continue
                p = BatchProgress.model_validate_json(store.read_bytes(newest.progress))
                rate = "" if p.requests_per_second is None else f"{p.requests_per_second:.1f} req/s"
                eta = "" if p.eta_seconds is None else f" · ETA {p.eta_seconds:.0f}s"
                slack = "" if p.slack_seconds is None else f" · slack {_hours(p.slack_seconds)}"
                bar.update(task, description="requests", total=p.total, completed=p.completed + p.failed, rate=rate + eta + slack)


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f}h" if abs(seconds) >= 3600 else f"{seconds / 60:.0f}m"


def summary_lines(result: Any) -> list[str]:
    """The end of a run in at most 80 columns: counts, tokens, speed, the SLA verdict, and where
    the files are (paths unwrapped so they copy whole from any terminal)."""
    counts, usage, sla = result.request_counts, result.usage, result.sla
    verdict = "met" if sla.met else "BREACHED"
    reused = " (reused)" if result.reused else ""
    return [
        f"batch {result.batch_id} · version {result.version[:12]}{reused}",
        f"  requests {counts.total:,} · completed {counts.completed:,} · failed {counts.failed:,}",
        f"  tokens   prompt {usage.prompt_tokens:,} · completion {usage.completion_tokens:,}",
        f"  speed    {sla.requests_per_second:.2f} req/s · SLA {sla.tier.value} {verdict} ({_hours(sla.slack_seconds)} slack)",
        f"output:   {result.output_uri}",
        f"errors:   {result.error_uri}",
        f"manifest: {result.manifest_uri}",
    ]
