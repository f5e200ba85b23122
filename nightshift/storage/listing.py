"""Every batch in the store at a glance (``nightshift ls``): its newest version's state, read from
the manifest once published, else from the live progress the SLA watch writes."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from nightshift.core.artifacts import Manifest
from nightshift.core.progress import Progress
from nightshift.storage.store import ArtifactStore


class BatchSummary(BaseModel):
    """One line of ``nightshift ls``."""

    batch_id: str
    status: str  # completed, or the live risk's word while running
    tier: str | None
    pool: str | None
    done: int
    total: int
    eta_seconds: float | None
    risk: str | None
    usage: dict[str, int] | None
    cost_usd: float | None = None  # the manifest's cost (core.cost); None while running or when not recorded
    updated_at: datetime


def batch_summaries(store: ArtifactStore, limit: int = 20) -> list[BatchSummary]:
    """The ``limit`` most recently updated batches, newest first."""
    found: list[BatchSummary] = []
    try:
        folders = store.fs.ls(store.batches_root, detail=False)
    except FileNotFoundError:
        return []
    for folder in folders:
        batch_id = str(folder).rstrip("/").rsplit("/", 1)[-1]
        published = store.newest(batch_id, "manifest.json")
        if published is not None:
            m = Manifest.model_validate_json(store.read_bytes(published.manifest))
            p = m.progress
            found.append(
                BatchSummary(
                    batch_id=batch_id,
                    status="completed",
                    tier=p.tier if p else None,
                    pool=p.pool if p else None,
                    done=m.request_counts.completed + m.request_counts.failed,
                    total=m.request_counts.total,
                    eta_seconds=0.0,
                    risk=p.risk if p else None,
                    usage=m.usage.model_dump(),
                    cost_usd=m.cost.usd if m.cost else None,
                    updated_at=m.completed_at,
                )  # fmt: skip
            )
            continue
        running = store.newest(batch_id, "progress.json")
        if running is not None:
            p = Progress.model_validate_json(store.read_bytes(running.progress))
            found.append(
                BatchSummary(
                    batch_id=batch_id,
                    status="running",
                    tier=p.tier,
                    pool=p.pool,
                    done=p.completed + p.failed,
                    total=p.total,
                    eta_seconds=p.eta_seconds,
                    risk=p.risk,
                    usage=None,
                    updated_at=p.updated_at,
                )  # fmt: skip
            )
    return sorted(found, key=lambda s: s.updated_at, reverse=True)[:limit]


def answer_rows(store: ArtifactStore, batch_id: str) -> list[dict[str, object]]:
    """Every line of the newest published version of ``batch_id``, joined to its ``custom_id``:
    the answer text (or embedding size), finish reason and tokens for outputs, the code and
    message for errors; in input order (errors carry their line, outputs follow the output file).

    Raises:
        StorageError: the batch has no published version.
    """
    from nightshift.core.errors import StorageError
    from nightshift.core.protocol import BatchRequestOutput

    published = store.newest(batch_id, "manifest.json")
    if published is None:
        raise StorageError(f"batch {batch_id!r} has no published version yet")
    manifest = Manifest.model_validate_json(store.read_bytes(published.manifest))
    rows: list[dict[str, object]] = []
    for record in (manifest.output_file, manifest.error_file):
        data = store.read_bytes(record.path) if record.lines else b""
        for raw in data.splitlines():
            line = BatchRequestOutput.model_validate_json(raw)
            row: dict[str, object] = {"custom_id": line.custom_id, "status": "ok" if line.ok else "error"}
            body = line.response.body if line.response is not None else {}
            choices = body.get("choices") or [{}]
            first = choices[0]
            message = first.get("message") or {}
            row["answer"] = message.get("content") if "message" in first else first.get("text")
            if body.get("data"):
                row["answer"] = f"<embedding of {len(body['data'][0].get('embedding', []))} floats>"
            row["finish_reason"] = first.get("finish_reason")
            usage = body.get("usage") or {}
            row["prompt_tokens"], row["completion_tokens"] = usage.get("prompt_tokens"), usage.get("completion_tokens")
            row["error_code"] = line.error.code if line.error else None
            row["error_message"] = line.error.message if line.error else None
            rows.append(row)
    return rows
