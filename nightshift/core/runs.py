"""The contract between whoever starts a batch run (CLI, Python API, gateway, automations) and the
``process-batch`` flow: its parameters, as pydantic models.

They are split by who decides them. ``BatchRunParameters`` is what a user decides (the file, its
tier, model, deadline): the Prefect UI renders it as the deployment's form. ``BatchRunContext`` is
what the product decides (the placement, the submission time the deadline counts from, lineage,
operator drills): the code that starts the run fills it in, and the flow takes it as a parameter
hidden from the form (see ``flows/batch.py``).

It lives in core so the API can build parameters for ``run_deployment`` without importing the
flow (which pulls in Ray).
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from nightshift.core.estimate import BatchEstimate
from nightshift.core.lineage import Lineage
from nightshift.core.placement import Placement
from nightshift.core.protocol import Endpoint
from nightshift.core.sla import Tier


class BatchRunParameters(BaseModel):
    """What to run, as a user decides it. The Prefect UI renders this as the deployment's form."""

    # A field the form does not offer (a typo, or a product field in the wrong place) is refused,
    # not dropped: the schema says additionalProperties false, so Prefect rejects the run up front.
    model_config = ConfigDict(extra="forbid")

    input_uri: str = Field(
        description="The JSONL batch file: a local path or a URL, e.g. examples/sample_batch.jsonl or s3://bucket/in/batch.jsonl."
    )
    batch_id: str | None = Field(default=None, description="Name of the batch in the store; defaults to the input file's name.")
    tier: Tier = Field(
        default=Tier.BASIC,
        description="SLA tier: done within enterprise 6 h, premium 12 h, basic 24 h, free 72 h of submission "
        "(defaults; NIGHTSHIFT_SLA_<TIER>_HOURS change them).",
    )
    endpoint: Endpoint | None = Field(
        default=None, description="The batch's endpoint; defaults to the url of its first valid line."
    )
    model: str | None = Field(default=None, description="Model folder or embedded model name; defaults to settings.")
    shard_size: int | None = Field(default=None, ge=1, description="Requests per shard; defaults to settings.")
    deadline: datetime | None = Field(
        default=None,
        description="Its own deadline (a contract date, an SLA drill); default: submission time + the tier hours.",
    )
    use_cache: bool = Field(default=True, description="Answer deterministic requests seen before from the request cache.")


class FaultInjection(BaseModel):
    """Operator drills: make a run slow or fail on purpose. Never on a form; the gateway lets only
    the orgs in ``settings.api.drill_orgs`` ask for them."""

    model_config = ConfigDict(extra="forbid")

    slow_shards_seconds: float | None = Field(
        default=None, ge=0, le=3600, description="SLA drills: wait this long after each new shard, like a slow pool."
    )
    fail_after_shards: int | None = Field(default=None, ge=1, description="Resume drills: fail the run after N new shards.")


#: The engines a run can ask for: vLLM, transformers, or auto (vLLM, else transformers).
EngineKind = Literal["auto", "vllm", "transformers"]


class RunOverrides(BaseModel):
    """Settings one run changes for itself (``nightshift run --out/--engine``). The flow applies
    them to the settings tree it builds at its start, so no caller writes the process environment,
    and a run that takes the batch over (in ``context``) keeps them."""

    model_config = ConfigDict(extra="forbid")

    engine: EngineKind | None = Field(default=None, description="Engine kind; defaults to settings (NIGHTSHIFT_ENGINE_KIND).")
    store_root: str | None = Field(
        default=None, description="Root of the artifact store for this run; defaults to settings (NIGHTSHIFT_STORAGE_ROOT)."
    )

    def settings_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``Settings(...)``: merged over the environment, validated like it."""
        kwargs: dict[str, Any] = {}
        if self.engine is not None:
            kwargs["engine"] = {"kind": self.engine}
        if self.store_root is not None:
            kwargs["storage"] = {"root": self.store_root}
        return kwargs


class BatchRunContext(BaseModel):
    """What the product decides about a run: filled in by the code that starts it (``submit_batch``,
    retry-failed, the automations that move a batch), never offered as a field on the form."""

    model_config = ConfigDict(extra="forbid")

    submitted_at: datetime | None = Field(
        default=None,
        description="When the batch was submitted; defaults to now. A resumed run keeps the original, so the deadline holds.",
    )
    placement: Placement | None = Field(default=None, description="The pool `submit_batch` chose for this batch and why.")
    estimate: BatchEstimate | None = Field(
        default=None, description="The forecast `submit_batch` placed it on; the manifest keeps it beside the actual cost."
    )
    parent: Lineage | None = Field(default=None, description="Set by retry-failed: the batch version this one retries.")
    drill: FaultInjection | None = Field(default=None, description="Operator-only fault injection.")
    overrides: RunOverrides | None = Field(default=None, description="Settings this run changes for itself (the CLI's options).")

    def settings_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for the run's ``Settings(...)`` (its overrides; none by default)."""
        return self.overrides.settings_kwargs() if self.overrides else {}


def default_batch_id(input_uri: str) -> str:
    """A store-safe batch id from the input file's name (``data/My Batch.jsonl`` → ``My-Batch``)."""
    stem = PurePosixPath(input_uri.split("://", 1)[-1]).name.split(".", 1)[0]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.") or "batch"
