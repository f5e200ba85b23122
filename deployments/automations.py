"""Prefect automations as code, applied idempotently by ``nightshift automations apply`` / ``up``.

Preemption: when a flow run of the spot deployment crashes (its node was reclaimed, its worker
or process was killed), Prefect's own ``prefect.flow-run.Crashed`` event fires an automation
that runs the dedicated deployment with the crashed run's parameters. Same parameters mean the
same batch version, so the dedicated run reuses every shard the spot run finished. The
automation, its firing and the new run are all visible in the Prefect UI.
"""

from __future__ import annotations

from datetime import timedelta

from nightshift.core.errors import OrchestrationError
from nightshift.settings import PoolsConfig

PREEMPTION = "nightshift-preempted-spot-resumes-on-dedicated"

#: The crashed run's parameters, re-rendered as JSON so the dict keeps its type (a plain Jinja
#: template would hand the deployment a string).
_SAME_PARAMS = {
    "__prefect_kind": "json",
    "value": {"__prefect_kind": "jinja", "template": "{{ flow_run.parameters['params'] | tojson }}"},
}


#: An explicit Jinja kind: Prefect wraps a bare "{{ flow_run.id }}" in ``| tojson``, which fails
#: on a UUID ("InvalidJinja" in the action's failure event).
_CRASHED_RUN_ID = {"__prefect_kind": "jinja", "template": "{{ flow_run.id }}"}


def preemption_automation(spot_deployment_id: str, dedicated_deployment_id: str):  # -> prefect.automations.Automation
    """Crashed spot run → run the dedicated deployment on the same batch, naming the crashed run."""
    from prefect.automations import Automation
    from prefect.events.actions import RunDeployment
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
        actions=[
            RunDeployment(
                source="selected",
                deployment_id=dedicated_deployment_id,
                parameters={"params": _SAME_PARAMS, "resumed_from": _CRASHED_RUN_ID},
            )
        ],
    )


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
    client.update_automation(keep.id, core)
    return str(keep.id)


def apply_automations(pools: PoolsConfig) -> dict[str, str]:
    """Create or update nightshift's automations; returns name → automation id.

    The deployments must be registered first (``prefect deploy --all``): the automations point at
    them by id.
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
        automation = preemption_automation(str(spot.id), str(dedicated.id))
        return {automation.name: _upsert(client, automation)}
