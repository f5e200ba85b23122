"""The contract between whoever starts a batch run (CLI, Python API, gateway, automations) and the
``process-batch`` flow: its parameters, as a pydantic model the Prefect UI renders as a form.

It lives in core so the API can build parameters for ``run_deployment`` without importing the
flow (which pulls in Ray).
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import PurePosixPath

from pydantic import BaseModel, Field

from nightshift.core.lineage import Lineage
from nightshift.core.placement import Placement
from nightshift.core.protocol import Endpoint
from nightshift.core.sla import Tier


class BatchRunParameters(BaseModel):
    """What to run. The Prefect UI renders this as the deployment's form."""

    input_uri: str = Field(
        description="The JSONL batch file: a local path or a URL, e.g. examples/sample_batch.jsonl or s3://bucket/in/batch.jsonl."
    )
    batch_id: str | None = Field(default=None, description="Name of the batch in the store; defaults to the input file's name.")
    tier: Tier = Field(
        default=Tier.BASIC,
        description="SLA tier: done within enterprise 6 h, premium 12 h, basic 24 h, free 72 h of submitted_at "
        "(defaults; NIGHTSHIFT_SLA_<TIER>_HOURS change them).",
    )
    endpoint: Endpoint | None = Field(
        default=None, description="The batch's endpoint; defaults to the url of its first valid line."
    )
    model: str | None = Field(default=None, description="Model folder or embedded model name; defaults to settings.")
    shard_size: int | None = Field(default=None, ge=1, description="Requests per shard; defaults to settings.")
    submitted_at: datetime | None = Field(
        default=None,
        description="When the batch was submitted; defaults to now. A resumed run keeps the original, so the deadline holds.",
    )
    deadline: datetime | None = Field(
        default=None,
        description="Its own deadline (a contract date, an SLA drill); default: submitted_at + the tier hours.",
    )
    parent: Lineage | None = Field(default=None, description="Set by retry-failed: the batch version this one retries.")
    use_cache: bool = Field(default=True, description="Answer deterministic requests seen before from the request cache.")
    placement: Placement | None = Field(
        default=None, description="Set by `nightshift submit`/the API: the pool chosen for this batch and why."
    )
    slow_shards_seconds: float | None = Field(
        default=None,
        ge=0,
        le=3600,
        description="SLA drills: wait this long after each new shard, like a slow pool.",
    )
    fail_after_shards: int | None = Field(
        default=None, ge=1, description="Fault injection for resume drills: fail the run after N new shards."
    )


def default_batch_id(input_uri: str) -> str:
    """A store-safe batch id from the input file's name (``data/My Batch.jsonl`` → ``My-Batch``)."""
    stem = PurePosixPath(input_uri.split("://", 1)[-1]).name.split(".", 1)[0]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.") or "batch"
