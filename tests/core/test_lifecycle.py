"""The batch lifecycle table and the tracker's reading of a run: pure rules, no I/O."""

from __future__ import annotations

import pytest

from nightshift.core.lifecycle import (
    TERMINAL,
    TRANSITIONS,
    BatchEvent,
    BatchStatus,
    completion_windows,
    metadata_problem,
    next_status,
)

S, E = BatchStatus, BatchEvent


@pytest.mark.parametrize(
    ("status", "event", "after"),
    [
        (S.VALIDATING, E.START_FAILED, S.FAILED),
        (S.VALIDATING, E.RUNNING, S.IN_PROGRESS),
        (S.IN_PROGRESS, E.RUNNING, None),  # progress, not a transition
        (S.IN_PROGRESS, E.FINALIZING, S.FINALIZING),
        (S.FINALIZING, E.PUBLISHED, S.COMPLETED),
        (S.IN_PROGRESS, E.RUN_FAILED, S.FAILED),
        (S.IN_PROGRESS, E.CANCEL_REQUESTED, S.CANCELLING),
        (S.CANCELLING, E.CANCEL_REQUESTED, None),  # a second cancel changes nothing
        (S.CANCELLING, E.STOPPED, S.CANCELLED),
        (S.CANCELLING, E.PUBLISHED, S.COMPLETED),  # finished before the cancel took effect
        (S.IN_PROGRESS, E.WINDOW_ENDED, S.EXPIRED),
        (S.CANCELLING, E.WINDOW_ENDED, S.CANCELLED),
        (S.IN_PROGRESS, E.STOPPED, None),
        (S.VALIDATING, E.STOPPED, None),
    ],
)
def test_transitions(status, event, after):
    assert next_status(status, event) == after


def test_terminal_statuses_ignore_every_event():
    for status in TERMINAL:
        assert all(next_status(status, event) is None for event in BatchEvent)
    assert {target for target in TRANSITIONS.values()} <= set(BatchStatus)
    assert not any(source in TERMINAL for source, _ in TRANSITIONS)


def test_completion_windows_follow_the_tier_hours():
    assert completion_windows({"enterprise": 6, "premium": 12, "basic": 24, "free": 72}) == {
        "6h": 6.0,
        "12h": 12.0,
        "24h": 24.0,
        "72h": 72.0,
    }
    assert "8h" in completion_windows({"enterprise": 8, "premium": 12, "basic": 36, "free": 72})
    assert "24h" in completion_windows({"enterprise": 8, "premium": 12, "basic": 36, "free": 72})  # OpenAI's own


def test_metadata_limits():
    assert metadata_problem(None) is None and metadata_problem({"a": "b"}) is None
    assert "16" in metadata_problem({str(i): "v" for i in range(17)})
    assert "64" in metadata_problem({"k" * 65: "v"})
    assert "512" in metadata_problem({"k": "v" * 513})
