"""submit-batch: the Prefect UI's way in. A user fills in what they decide (the file, tier, model,
priority, deadline, webhook); the flow places the batch with the same code as ``nightshift submit``
and the gateway (``nightshift.orchestration.submit.submit_batch``), starts process-batch on the chosen pool as
its subflow, and waits for it.

Why wait: a Prefect user reads a run's state as the outcome of what they started. The submit-batch
run therefore ends in the batch's final state (following it when it moves from spot to dedicated),
and its ``batch-<id>-placement`` artifact says where the batch went, why, which run carries it and
how it ended. It runs on the light ``nightshift-ops`` pool, where waiting costs a sleeping process.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.states import Cancelled, Completed, Failed, State
from pydantic import BaseModel, ConfigDict, Field

from nightshift.api.egress import EgressPolicy, check_url
from nightshift.core.errors import EgressFailed
from nightshift.core.jobs import Priority
from nightshift.core.report import artifact_key, placement_markdown
from nightshift.core.sla import Tier
from nightshift.orchestration.submit import Submission, follow_batch, submit_batch
from nightshift.settings import Settings

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

#: How long past the batch's deadline this run keeps waiting before it gives up (the batch goes on).
WAIT_PAST_DEADLINE_SECONDS = 3600.0


class SubmitParameters(BaseModel):
    """A batch to submit, as a user decides it. The Prefect UI renders this as the form."""

    model_config = ConfigDict(extra="forbid")

    input_uri: str = Field(
        title="Batch file",
        description="The JSONL batch file: a path the workers can read (e.g. examples/sample_batch.jsonl) or a URL (s3://bucket/in/batch.jsonl).",
    )
    tier: Tier = Field(
        default=Tier.BASIC,
        description="SLA tier: done within enterprise 6 h, premium 12 h, basic 24 h, free 72 h (defaults). "
        "A deadline too tight for spot runs on dedicated capacity.",
    )
    model: str | None = Field(default=None, description="Model folder or embedded model name; defaults to the served model.")
    priority: Priority = Field(default=Priority.NORMAL, description="Order among waiting runs of the chosen pool.")
    deadline: datetime | None = Field(
        default=None, description="Its own deadline, if earlier or later than the tier's (a contract date)."
    )
    webhook: str | None = Field(
        default=None,
        title="Webhook URL",
        max_length=2048,
        description="URL that gets an OpenAI-style batch event (batch.completed, batch.failed, ...) when the batch ends.",
    )


def _ui_url(flow_run_id: str) -> str:
    """The Prefect UI page of a flow run (a path when the UI's address is unknown)."""
    from prefect.settings import PREFECT_UI_URL

    base = PREFECT_UI_URL.value() or ""
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run_id}"


def _outcome(run: FlowRun) -> str:
    """The webhook's batch status for a final flow run: completed, cancelled or failed."""
    state = run.state
    if state is not None and state.is_completed():
        return "completed"
    if state is not None and state.name == "Cancelled":
        return "cancelled"
    return "failed"


@task(name="notify-webhook", retries=2, retry_delay_seconds=5)
def notify_webhook(url: str, batch_id: str, status: str, policy: EgressPolicy) -> int:
    """POST the batch's terminal event to ``url`` through the gateway's egress policy; return the HTTP status.

    Raises:
        EgressRefused: the URL or its address is not allowed (nothing was sent).
        EgressFailed: no connection, a timeout or a non-2xx answer (retried).
    """
    from nightshift.api import egress
    from nightshift.api.webhooks import batch_event, encode_event

    body = encode_event(batch_event(batch_id, status))
    reply = asyncio.run(egress.post_json(url, body, policy, param="webhook"))
    if not 200 <= reply.status_code < 300:
        code = reply.status_code
        raise EgressFailed(f"HTTP {code}", param="webhook", retryable=code == 429 or code >= 500, status_code=code)
    return reply.status_code


def _report(sub: Submission, tier: Tier, final: FlowRun | None) -> None:
    """The placement artifact: a new version of the same key when the batch ends."""
    state = (final.state.name if final.state else "unknown") if final else None
    create_markdown_artifact(
        key=artifact_key(sub.batch_id, "placement"),
        description=f"{sub.placement.pool} ({sub.placement.kind}) · {state or 'running'}",
        markdown=placement_markdown(
            batch_id=sub.batch_id,
            requests=sub.requests,
            tier=tier.value,
            deadline=sub.deadline,
            placement=sub.placement,
            run_name=sub.flow_run_name,
            run_url=_ui_url(sub.flow_run_id),
            final_state=state,
            final_pool=final.work_pool_name if final else None,
        ),
    )


@flow(
    name="submit-batch",
    description="Place a batch file on spot or dedicated capacity by its deadline, run it there, and end in its state.",
    persist_result=False,
)
def submit_batch_flow(params: SubmitParameters) -> State:
    """count → place → start process-batch on the chosen pool → wait → end in the batch's state.

    Args:
        params: The batch file and what the user decides about it.
    """
    log = get_run_logger()
    settings = Settings()
    policy = EgressPolicy.from_settings(settings.api)
    if params.webhook:
        # Refused before anything runs: a bad URL is the user's to fix now, not after the batch.
        check_url(params.webhook, policy, param="webhook")
    extra = {k: v for k, v in {"model": params.model, "deadline": params.deadline}.items() if v is not None}
    sub = submit_batch(
        params.input_uri, tier=params.tier, priority=params.priority.value, settings=settings, as_subflow=True, **extra
    )
    p = sub.placement
    log.info("batch %s (%d requests, due %s) → %s (%s): %s", sub.batch_id, sub.requests, sub.deadline, p.pool, p.kind, p.reason)
    _report(sub, params.tier, None)

    wait = max((sub.deadline - datetime.now(UTC)).total_seconds(), 0.0) + WAIT_PAST_DEADLINE_SECONDS
    runs = follow_batch(sub.flow_run_id, timeout=wait)
    final = runs[-1]
    _report(sub, params.tier, final)
    status = _outcome(final)
    if params.webhook:
        try:
            notify_webhook(params.webhook, sub.batch_id, status, policy)
        except Exception:  # noqa: BLE001 - the batch's outcome stands; a receiver that is down does not change it
            log.exception("could not notify the webhook")
    where = " → ".join(f"{r.name} on {r.work_pool_name}" for r in runs)
    message = f"batch {sub.batch_id} {status}: {where}"
    if status == "completed":
        return Completed(message=message)
    if status == "cancelled":
        return Cancelled(message=message)
    return Failed(message=message)
