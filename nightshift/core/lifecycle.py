"""A batch's lifecycle as OpenAI's Batch API defines it: the statuses, what moves a batch from one
to the next, and the completion windows a batch may ask for.

The transitions are a pure table: ``next_status(status, event)`` is the whole rule, and the
gateway applies it with compare-and-set (``UPDATE ... WHERE status = :old``), so two callers that
see the same event (the tracker loop and a ``GET``) cannot both act on it.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class BatchStatus(enum.StrEnum):
    """OpenAI's batch statuses."""

    VALIDATING = "validating"
    FAILED = "failed"
    IN_PROGRESS = "in_progress"
    FINALIZING = "finalizing"
    COMPLETED = "completed"
    EXPIRED = "expired"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        """True once nothing more happens to the batch."""
        return self in TERMINAL


class BatchEvent(enum.StrEnum):
    """What can happen to a batch, as the gateway learns it."""

    START_FAILED = "start_failed"  # the gateway could not hand it to a pool
    RUNNING = "running"  # its flow run started, or reported progress
    FINALIZING = "finalizing"  # every line answered; output files being written
    PUBLISHED = "published"  # output and error files are in the store (manifest written)
    RUN_FAILED = "run_failed"  # the flow run failed for good
    CANCEL_REQUESTED = "cancel_requested"  # the owner asked to cancel
    STOPPED = "stopped"  # the run of a cancelling batch is over (partial results published)
    WINDOW_ENDED = "window_ended"  # the completion window passed before it finished


TERMINAL: frozenset[BatchStatus] = frozenset(
    {BatchStatus.COMPLETED, BatchStatus.FAILED, BatchStatus.EXPIRED, BatchStatus.CANCELLED}
)
#: Statuses whose work may still be running: a restarted gateway keeps following these.
UNFINISHED: tuple[BatchStatus, ...] = tuple(s for s in BatchStatus if s not in TERMINAL)

_ACTIVE = (BatchStatus.VALIDATING, BatchStatus.IN_PROGRESS, BatchStatus.FINALIZING)

TRANSITIONS: Mapping[tuple[BatchStatus, BatchEvent], BatchStatus] = {
    (BatchStatus.VALIDATING, BatchEvent.START_FAILED): BatchStatus.FAILED,
    (BatchStatus.VALIDATING, BatchEvent.RUNNING): BatchStatus.IN_PROGRESS,
    (BatchStatus.VALIDATING, BatchEvent.FINALIZING): BatchStatus.FINALIZING,
    (BatchStatus.IN_PROGRESS, BatchEvent.FINALIZING): BatchStatus.FINALIZING,
    **{(s, BatchEvent.PUBLISHED): BatchStatus.COMPLETED for s in _ACTIVE},
    **{(s, BatchEvent.RUN_FAILED): BatchStatus.FAILED for s in _ACTIVE},
    **{(s, BatchEvent.CANCEL_REQUESTED): BatchStatus.CANCELLING for s in _ACTIVE},
    **{(s, BatchEvent.WINDOW_ENDED): BatchStatus.EXPIRED for s in _ACTIVE},
    # Published before the cancel took effect: the work is done (and paid for), so the owner gets
    # the complete files rather than a "cancelled" label on them.
    (BatchStatus.CANCELLING, BatchEvent.PUBLISHED): BatchStatus.COMPLETED,
    (BatchStatus.CANCELLING, BatchEvent.STOPPED): BatchStatus.CANCELLED,
    (BatchStatus.CANCELLING, BatchEvent.RUN_FAILED): BatchStatus.CANCELLED,
    (BatchStatus.CANCELLING, BatchEvent.WINDOW_ENDED): BatchStatus.CANCELLED,
}


def next_status(status: BatchStatus | str, event: BatchEvent) -> BatchStatus | None:
    """The status ``event`` moves a batch in ``status`` to, or None when the event does not apply
    (a terminal batch ignores everything; an in-progress batch ignores "running" again)."""
    return TRANSITIONS.get((BatchStatus(status), event))


#: The timestamp OpenAI sets when a batch enters a status (validating has ``created_at``).
STATUS_TIMESTAMPS: Mapping[BatchStatus, str] = {
    BatchStatus.IN_PROGRESS: "in_progress_at",
    BatchStatus.FINALIZING: "finalizing_at",
    BatchStatus.COMPLETED: "completed_at",
    BatchStatus.FAILED: "failed_at",
    BatchStatus.EXPIRED: "expired_at",
    BatchStatus.CANCELLING: "cancelling_at",
    BatchStatus.CANCELLED: "cancelled_at",
}


def completion_windows(tier_hours: Mapping[str, float]) -> dict[str, float]:
    """``completion_window`` values a batch may ask for → hours: OpenAI's ``24h`` plus one per
    tier deadline as configured (``NIGHTSHIFT_SLA_*_HOURS``), e.g. ``6h``, ``12h``, ``72h``."""
    windows = {f"{hours:g}h": float(hours) for hours in tier_hours.values()}
    windows.setdefault("24h", 24.0)
    return dict(sorted(windows.items(), key=lambda kv: kv[1]))


#: OpenAI's metadata limits: at most 16 pairs, keys up to 64 characters, values up to 512.
METADATA_MAX_PAIRS = 16
METADATA_MAX_KEY = 64
METADATA_MAX_VALUE = 512


def metadata_problem(metadata: Mapping[str, object] | None) -> str | None:
    """What is wrong with a batch's ``metadata`` under OpenAI's limits, or None when it fits."""
    if not metadata:
        return None
    if len(metadata) > METADATA_MAX_PAIRS:
        return f"at most {METADATA_MAX_PAIRS} key-value pairs (got {len(metadata)})"
    for key, value in metadata.items():
        if not isinstance(key, str) or not key or len(key) > METADATA_MAX_KEY:
            return f"keys are 1 to {METADATA_MAX_KEY} characters"
        if not isinstance(value, str):
            return f"value of {key!r} must be a string"
        if len(value) > METADATA_MAX_VALUE:
            return f"value of {key!r} is longer than {METADATA_MAX_VALUE} characters"
    return None
