"""Prefect automations as code, applied idempotently by ``nightshift automations apply`` / ``up``.

SLA watch: the flow emits ``nightshift.batch.*`` events (see nightshift/orchestration/watch.py); automations turn
them into alerts through one webhook block and escalate at-risk spot batches to dedicated:

- ``nightshift-sla-at-risk``: alert (batch, tier, pool, ETA, slack);
- ``nightshift-sla-at-risk-escalates``: an at-risk batch on the spot pool moves to dedicated
  (the dedicated deployment runs with the same parameters; the spot run is cancelled);
- ``nightshift-sla-breached``: alert;
- ``nightshift-sla-silent-{tier}``: proactive: ``started`` with no ``completed``/``failed``
  within the tier's deadline (a run that died without a word) → breached alert anyway.

The flow raises each alert once per batch version; the automations add nothing per shard.

Preemption: when a flow run of the spot deployment crashes (its node was reclaimed, its worker
or process was killed), Prefect's own ``prefect.flow-run.Crashed`` event fires an automation
that runs the dedicated deployment with the crashed run's parameters. Same parameters mean the
same batch version, so the dedicated run reuses every shard the spot run finished. The
automation, its firing and the new run are all visible in the Prefect UI.
"""

from __future__ import annotations

from datetime import timedelta

from nightshift.core.errors import OrchestrationError
from nightshift.core.progress import escalating_risks
from nightshift.settings import PoolsConfig, SLAConfig

PREEMPTION = "nightshift-preempted-spot-resumes-on-dedicated"

#: The crashed run's parameters, re-rendered as JSON so the dict keeps its type (a plain Jinja
#: template would hand the deployment a string).
_SAME_PARAMS = {
    "__prefect_kind": "json",
    "value": {"__prefect_kind": "jinja", "template": "{{ flow_run.parameters['params'] | tojson }}"},
}
#: The product's part of them (placement, submitted_at, drills; see core.runs.BatchRunContext), so
#: the moved run keeps the deadline; null when the run had none.
_SAME_CONTEXT = {
    "__prefect_kind": "json",
    "value": {"__prefect_kind": "jinja", "template": "{{ flow_run.parameters.get('context') | tojson }}"},
}


#: An explicit Jinja kind: Prefect wraps a bare "{{ flow_run.id }}" in ``| tojson``, which fails
#: on a UUID ("InvalidJinja" in the action's failure event).
_CRASHED_RUN_ID = {"__prefect_kind": "jinja", "template": "{{ flow_run.id }}"}


def _take_over_on(deployment_id: str):  # -> prefect.events.actions.RunDeployment
    """Run ``deployment_id`` on the batch of the run that fired the trigger: same parameters (so the
    same batch version, whose finished shards are reused) and ``resumed_from`` naming that run,
    which is how ``orchestration.submit.find_successor`` follows a batch that moved."""
    from prefect.events.actions import RunDeployment

    return RunDeployment(
        source="selected",
        deployment_id=deployment_id,
        parameters={"params": _SAME_PARAMS, "context": _SAME_CONTEXT, "resumed_from": _CRASHED_RUN_ID},
    )


def preemption_automation(spot_deployment_id: str, dedicated_deployment_id: str):  # -> prefect.automations.Automation
    """Crashed spot run → run the dedicated deployment on the same batch, naming the crashed run."""
    from prefect.automations import Automation
    from prefect.events.schemas.automations import EventTrigger, Posture

    return Automation(
        name=PREEMPTION,
        description=(
            "A process-batch run on the spot pool crashed (preempted): resume the batch on the dedicated "
            "pool with the same parameters. Finished shards are reused; no request runs twice to completion."
        ),
        trigger=EventTrigger(
            expect={"prefect.flow-run.Crashed"},
            match_related={"prefect.resource.id": f"prefect.deployment.{spot_deployment_id}"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[_take_over_on(dedicated_deployment_id)],
    )


ALERT_FIELDS = (
    '"batch_id": {{ event.payload.batch_id | tojson }}, "tier": {{ event.payload.tier | tojson }}, '
    '"pool": {{ event.payload.pool | tojson }}, "deadline": {{ event.payload.deadline | tojson }}, '
    '"eta_seconds": {{ event.payload.eta_seconds | tojson }}, "slack_seconds": {{ event.payload.slack_seconds | tojson }}, '
    '"flow_run": "{{ event.resource.id }}", "progress": {{ event.payload | tojson }}'
)


def _alert_body(alert: str) -> str:
    """The notification text: a JSON document a receiver can act on (and a human can read)."""
    return '{"alert": "' + alert + '", "source": "flow", ' + ALERT_FIELDS + "}"


def sla_automations(
    *, block_id: str, spot_pool: str, dedicated_deployment_id: str, tier_hours: dict[str, float]
) -> list:  # list[prefect.automations.Automation]
    """Alerts and escalation on the batch's SLA events (see the module docstring)."""
    from prefect.automations import Automation
    from prefect.events.actions import CancelFlowRun, SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture

    def alert(name: str, subject: str) -> SendNotification:
        return SendNotification(block_document_id=block_id, subject=subject, body=_alert_body(name))

    per_batch = {"nightshift.batch.id"}
    automations = [
        Automation(
            name="nightshift-sla-at-risk",
            description="A batch's ETA runs past its deadline: alert with its ETA and slack.",
            trigger=EventTrigger(
                expect={"nightshift.batch.sla.at-risk"}, for_each=per_batch, posture=Posture.Reactive, threshold=1
            ),
            actions=[alert("sla.at-risk", "nightshift: batch {{ event.payload.batch_id }} at risk of missing its deadline")],
        ),
        Automation(
            name="nightshift-sla-at-risk-escalates",
            description="An at-risk spot batch moves to dedicated: finished shards are reused, the spot run is cancelled.",
            trigger=EventTrigger(
                # The rule is core's (progress.ESCALATIONS): the verdicts that move a batch off spot.
                expect={f"nightshift.batch.sla.{risk.value}" for risk in escalating_risks("spot")},
                match={"nightshift.pool": spot_pool},
                for_each=per_batch,
                posture=Posture.Reactive,
                threshold=1,
            ),
            actions=[_take_over_on(dedicated_deployment_id), CancelFlowRun()],
        ),
        Automation(
            name="nightshift-sla-breached",
            description="A batch passed its deadline with work left (or finished late): alert.",
            trigger=EventTrigger(
                expect={"nightshift.batch.sla.breached"}, for_each=per_batch, posture=Posture.Reactive, threshold=1
            ),
            actions=[alert("sla.breached", "nightshift: batch {{ event.payload.batch_id }} breached its deadline")],
        ),
    ]
    for tier, hours in tier_hours.items():
        automations.append(
            Automation(
                name=f"nightshift-sla-silent-{tier}",
                description=f"A {tier} batch started and reported neither completion nor failure within {hours} h: breached.",
                trigger=EventTrigger(
                    after={"nightshift.batch.started"},
                    expect={"nightshift.batch.completed", "nightshift.batch.failed"},
                    match={"nightshift.tier": tier},
                    for_each=per_batch,
                    posture=Posture.Proactive,
                    threshold=1,
                    within=timedelta(hours=hours),
                ),
                actions=[
                    SendNotification(
                        block_document_id=block_id,
                        subject="nightshift: batch {{ labels.nightshift.batch.id }} breached its deadline without reporting",
                        body=(
                            '{"alert": "sla.breached", "source": "proactive", "batch_id": "{{ labels.nightshift.batch.id }}", '
                            f'"tier": "{tier}", "within_hours": {hours}, '
                            '"reason": "started, then no completed or failed event within the tier deadline"}'
                        ),
                    )
                ],
            )
        )
    return automations


def apply_alert_block(name: str, url: str) -> str:
    """Create or update the webhook block alerts go through; returns its id.

    The JSON carries ``text`` (what Slack-compatible webhooks show) and the alert document in
    ``body`` for receivers that act on it.
    """
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block = CustomWebhookNotificationBlock(
        name="nightshift",
        url=url,
        json_data={"text": "{{subject}}", "subject": "{{subject}}", "body": "{{body}}"},
        timeout=10,
    )
    return str(block.save(name, overwrite=True))


def _upsert(client, automation) -> str:  # noqa: ANN001 - prefect client and Automation, imported lazily
    """Create the automation, or update the one with its name (removing extra copies)."""
    from prefect.events.schemas.automations import AutomationCore

    existing = client.read_automations_by_name(automation.name)
    core = AutomationCore(**automation.model_dump(exclude={"id"}))
    if not existing:
        return str(client.create_automation(core))
    keep, *extra = existing
    for dup in extra:
        client.delete_automation(dup.id)
    # The update endpoint refuses owner_resource (as prefect's own Automation.update knows).
    client.update_automation(keep.id, AutomationCore(**automation.model_dump(exclude={"id", "owner_resource"})))
    return str(keep.id)


def apply_automations(
    pools: PoolsConfig, sla: SLAConfig | None = None, alerts_url: str | None = None, block: str = "nightshift-alerts"
) -> dict[str, str]:
    """Create or update nightshift's automations; returns name → automation id.

    The deployments must be registered first (``prefect deploy --all``): the automations point at
    them by id. SLA alerts need a webhook: ``alerts_url``, or an existing block named ``block``;
    without either, only the preemption automation is applied.
    """
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            spot = client.read_deployment_by_name(pools.spot_deployment)
            dedicated = client.read_deployment_by_name(pools.dedicated_deployment)
        except ObjectNotFound as exc:
            raise OrchestrationError(
                f"deployments {pools.spot_deployment!r}/{pools.dedicated_deployment!r} are not registered; "
                "run `prefect --no-prompt deploy --all` (or `nightshift up`) first"
            ) from exc
        automations = [preemption_automation(str(spot.id), str(dedicated.id))]
        block_id = apply_alert_block(block, alerts_url) if alerts_url else _block_id(client, block)
        if block_id is not None and spot.work_pool_name:
            automations += sla_automations(
                block_id=block_id,
                spot_pool=spot.work_pool_name,
                dedicated_deployment_id=str(dedicated.id),
                tier_hours=(sla or SLAConfig()).hours(),
            )
        return {a.name: _upsert(client, a) for a in automations}


def _block_id(client, name: str) -> str | None:  # noqa: ANN001 - prefect client, imported lazily
    from prefect.exceptions import ObjectNotFound

    try:
        return str(client.read_block_document_by_name(name, block_type_slug="custom-webhook").id)
    except ObjectNotFound:
        return None
