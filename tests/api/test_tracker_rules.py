"""How the tracker reads a batch's run into one lifecycle event (pure: no store, no Prefect)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from nightshift.api.tracker import BatchState, RunState, observe
from nightshift.core.lifecycle import BatchEvent as E
from nightshift.core.progress import Progress, assess_progress

NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)


def _batch(status="validating", **kw):
    fields = dict(
        id="batch_1", status=status, flow_run_id="run-1", pool="gpu-spot", expires_at=NOW + timedelta(hours=1),
        in_progress_at=None, finalizing_at=None,
    )  # fmt: skip
    return SimpleNamespace(**{**fields, **kw})


def _progress(completed: int) -> Progress:
    return assess_progress(
        batch_id="batch_1", version="v1", tier="basic", pool="gpu-spot", total=4, completed=completed, failed=1,
        now=NOW, deadline=NOW + timedelta(hours=1), requests_per_second=1.0,
    )  # fmt: skip


def test_observe_progress_and_finalizing():
    state = BatchState(progress=_progress(2), run=RunState("run-1", "Running"))
    seen = observe(_batch(), state, NOW)
    assert seen.event is E.RUNNING and seen.progress["request_counts"] == {"total": 4, "completed": 2, "failed": 1}
    assert seen.progress["version"] == "v1"
    state.progress = _progress(3)
    assert observe(_batch("in_progress"), state, NOW).event is E.FINALIZING


def test_observe_failure_hides_the_runs_own_message():
    state = BatchState(run=RunState("run-2", "Failed", message="Traceback ... /srv/app/secret.py line 3"))
    seen = observe(_batch("in_progress"), state, NOW)
    assert seen.event is E.RUN_FAILED and seen.progress["flow_run_id"] == "run-2"
    assert "/srv" not in seen.fields["errors"][0]["message"] and "run-2" in seen.fields["errors"][0]["message"]


def test_observe_cancel_and_expiry_publish_partial_results():
    cancelling = _batch("cancelling")
    running = observe(cancelling, BatchState(run=RunState("run-1", "Running")), NOW)
    assert running.event is None  # still stopping
    stopped = observe(cancelling, BatchState(run=RunState("run-1", "Cancelled")), NOW)
    assert stopped.event is E.STOPPED and stopped.partial[0] == "batch_cancelled" and not stopped.cancel_run
    queued = observe(cancelling, BatchState(run=RunState("run-1", "Scheduled")), NOW)
    assert queued.event is E.STOPPED and queued.cancel_run  # never started: cancelled at once
    late = observe(_batch("in_progress", expires_at=NOW - timedelta(seconds=1)), BatchState(), NOW)
    assert late.event is E.WINDOW_ENDED and late.partial[0] == "batch_expired" and late.cancel_run
    assert observe(_batch("completed"), BatchState(run=RunState("run-1", "Failed")), NOW).event is None
