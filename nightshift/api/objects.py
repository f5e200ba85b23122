"""OpenAI objects rendered from the gateway's rows, with the OpenAI names and shapes (the
official ``openai`` client parses them); nightshift's own fields go under ``nightshift``."""

from __future__ import annotations

from datetime import datetime
from typing import Any


def unix(ts: datetime | None) -> int | None:
    """OpenAI timestamps are integer Unix seconds."""
    return None if ts is None else int(ts.timestamp())


def file_object(f: Any) -> dict[str, Any]:
    """A ``file`` object."""
    return {
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": unix(f.created_at),
        "filename": f.filename,
        "purpose": f.purpose,
        "status": f.status,
    }


def batch_object(b: Any, live: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``batch`` object; ``live`` adds the SLA watch's view (ETA, risk) while it runs."""
    counts = b.request_counts or {"total": 0, "completed": 0, "failed": 0}
    usage = None
    if b.usage:
        usage = {
            "input_tokens": b.usage.get("prompt_tokens", 0),
            "output_tokens": b.usage.get("completion_tokens", 0),
            "total_tokens": b.usage.get("total_tokens", 0),
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        }
    obj: dict[str, Any] = {
        "id": b.id,
        "object": "batch",
        "endpoint": b.endpoint,
        "errors": {"object": "list", "data": b.errors} if b.errors else None,
        "input_file_id": b.input_file_id,
        "completion_window": b.completion_window,
        "status": b.status,
        "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id,
        "created_at": unix(b.created_at),
        "in_progress_at": unix(b.in_progress_at),
        "expires_at": unix(b.expires_at),
        "finalizing_at": unix(b.finalizing_at),
        "completed_at": unix(b.completed_at),
        "failed_at": unix(b.failed_at),
        "expired_at": unix(b.expired_at),
        "cancelling_at": unix(b.cancelling_at),
        "cancelled_at": unix(b.cancelled_at),
        "request_counts": {k: counts.get(k, 0) for k in ("total", "completed", "failed")},
        "metadata": b.metadata_ or None,
        "usage": usage,
        "nightshift": {
            "tier": b.tier,
            "pool": b.pool,
            "deadline": unix(b.deadline),
            "version": b.version,
            "flow_run_id": b.flow_run_id,
            "placement": b.placement,
            "eta_seconds": (live or {}).get("eta_seconds"),
            "slack_seconds": (live or {}).get("slack_seconds"),
            "risk": (live or {}).get("risk"),
        },
    }
    return obj


def error_body(message: str, *, type_: str = "invalid_request_error", code: str | None = None, param: str | None = None) -> dict:
    """OpenAI's error envelope (the client raises its typed errors from it)."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
