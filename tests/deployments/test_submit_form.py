"""The Prefect UI as a way in, on the stack `nightshift up` starts: the registered forms offer only
what a user decides, a user submits a batch through the `submit-batch` form in headless Chromium,
and the batch runs on the pool the placement rule picks, as that run's subflow; the nightly scoring
job goes through the same placement.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import UUID

import pytest
import yaml

from tests.batchfiles import write_batch
from tests.browsers import browser_test, chromium, new_page, screenshot, shots_dir

#: What a user decides, and so all the run forms offer (the product's part is hidden).
PROCESS_BATCH_FORM = ["input_uri", "batch_id", "tier", "endpoint", "model", "shard_size", "deadline", "use_cache"]
SUBMIT_BATCH_FORM = ["input_uri", "tier", "model", "priority", "deadline", "webhook"]


def _form(deployment) -> dict[str, list[str]]:  # noqa: ANN001 - a Prefect deployment
    """Parameter → fields of its model, as the UI renders them from the registered schema."""
    schema = deployment.parameter_openapi_schema
    form = {}
    for name, prop in schema["properties"].items():
        ref = prop.get("$ref", "").rsplit("/", 1)[-1]
        form[name] = list(schema["definitions"][ref]["properties"]) if ref else []
    return form


def _wait_final(flow_run_id: UUID, timeout: float = 300):  # noqa: ANN202 - a Prefect FlowRun
    from prefect import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return run
            time.sleep(1)
    raise AssertionError(f"flow run {flow_run_id} not finished after {timeout:.0f}s")


def _subflows(parent_id: UUID) -> list:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    children = FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id]))
    with get_client(sync_client=True) as client:
        return client.read_flow_runs(flow_run_filter=children)


def test_registered_forms_offer_only_what_a_user_decides(stack):
    from prefect import get_client

    with get_client(sync_client=True) as client:
        forms = {name: _form(client.read_deployment_by_name(name)) for name in ("process-batch/spot", "process-batch/dedicated")}
        submit = client.read_deployment_by_name("submit-batch/submit")
    assert forms == {name: {"params": PROCESS_BATCH_FORM} for name in forms}
    assert _form(submit) == {"params": SUBMIT_BATCH_FORM} and submit.work_pool_name == "nightshift-ops"


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Debian's Chromium, one per module."""
    with chromium() as b:
        yield b


@browser_test
def test_a_user_submits_a_batch_from_the_form_and_sees_it_complete_where_placement_puts_it(
    stack, settings, prefect_api, browser, tmp_path
):
    from playwright.sync_api import expect
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, DeploymentFilter, DeploymentFilterId

    from nightshift.api import read_pool_states
    from nightshift.core.placement import choose_pool
    from nightshift.core.report import artifact_key
    from nightshift.core.sla import Tier, deadline_for

    src = tmp_path / "from-the-form.jsonl"
    write_batch(src, 6, ["bad_body"], max_tokens=6)
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("submit-batch/submit")

    ui = prefect_api.removesuffix("/api")
    page = new_page(browser, height=1150)
    page.goto(f"{ui}/deployments/deployment/{deployment.id}/run")
    expect(page.get_by_text("Batch file", exact=True)).to_be_visible()
    for absent in ("Placement", "Resumed From", "Submitted At", "Slow Shards Seconds", "Fail After Shards", "Parent"):
        expect(page.get_by_text(absent, exact=True)).to_have_count(0)
    page.locator("textarea.p-textarea__control").first.fill(str(src))
    tier = page.locator("button.p-select-button__control").first  # the first select of the form: Tier
    tier.focus()
    tier.press("ArrowDown")  # opens the options (a click toggles them open and shut again here)
    page.get_by_role("option", name="free", exact=True).click()
    expect(tier).to_have_text("free")
    screenshot(page, shots_dir(tmp_path) / "prefect-submit-form.png")

    # What the placement rule says for this batch now (7 lines, free tier); the flow decides the same.
    spot, dedicated = read_pool_states(settings)
    now = datetime.now(UTC)
    expected = choose_pool(
        requests=7,
        now=now,
        deadline=deadline_for(now, Tier.FREE, settings.sla.hours()),
        spot=spot,
        dedicated=dedicated,
        safety_factor=settings.pools.safety_factor,
    )
    page.get_by_role("button", name="Submit").click()
    page.wait_for_url(f"**/deployments/deployment/{deployment.id}?tab=Runs")  # the UI goes back to the deployment
    with get_client(sync_client=True) as client:
        (run,) = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
    assert run.parameters["params"]["input_uri"] == str(src) and run.parameters["params"]["tier"] == "free"

    run = _wait_final(run.id)
    (child,) = _subflows(run.id)  # process-batch, linked as the submit-batch run's subflow
    assert run.state.is_completed() and child.state.is_completed(), (run.state, child.state)
    assert child.work_pool_name == expected.pool and child.parameters["context"]["placement"]["pool"] == expected.pool
    assert child.name in run.state.message and "completed" in run.state.message
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    # Two versions of one key: "running" when placed, then the final state.
    first, placement = sorted((a for a in arts if a.key == artifact_key("from-the-form", "placement")), key=lambda a: a.created)
    assert "**State** running" in first.data
    assert expected.reason.split(":")[0] in placement.data and "**State** Completed" in placement.data
    assert f"/runs/flow-run/{child.id}" in placement.data

    # The submit-batch run's page: its state, and the decision with a link to the run that did the work.
    page.goto(f"{ui}/runs/flow-run/{run.id}")
    expect(page.get_by_text("Completed", exact=True).first).to_be_visible()
    page.get_by_text("Artifacts", exact=True).first.click()
    page.get_by_text(artifact_key("from-the-form", "placement"), exact=True).first.click()
    expect(page.get_by_role("link", name=child.name)).to_be_visible()
    expect(page.locator("body")).to_contain_text(f"{expected.pool} ({expected.kind})")
    page.close()


def test_nightly_scoring_with_a_tight_tier_is_placed_on_dedicated(stack, tmp_path):
    from prefect.deployments import run_deployment

    (tmp_path / "people.csv").write_text("id,name\n" + "".join(f"p{i},Person {i}\n" for i in range(4)))
    job = tmp_path / "job.yaml"
    spec = {
        "name": "tight",
        "table": "people.csv",
        "id_column": "id",
        "columns": {"id": {}, "name": {}},
        "prompt": "Rate {{ name }} from 0 to 3.",
        "response_schema": {"type": "object", "properties": {"score": {"type": "integer", "enum": [0, 1, 2, 3]}}},
        "max_tokens": 8,
    }
    job.write_text(yaml.safe_dump(spec))
    # An enterprise deadline of 36 ms: no spot estimate fits, so placement sends the rows to dedicated.
    run = run_deployment(
        "score-table/nightly",
        parameters={"params": {"job": str(job), "tier": "enterprise"}},
        job_variables={"env": {"NIGHTSHIFT_SLA_ENTERPRISE_HOURS": "0.00001"}},
        timeout=0,
        _sync=True,  # Playwright's sync API keeps an event loop in this thread, which would make it a coroutine
    )
    run = _wait_final(run.id)
    assert run.state.is_completed(), run.state
    (child,) = _subflows(run.id)
    assert child.work_pool_name == "gpu-dedicated" and child.state.is_completed()
    assert "too tight" in child.parameters["context"]["placement"]["reason"]
    assert run.work_pool_name == "nightshift-ops"
    scored = list(Path(stack["store"]).glob("scoring/tight/*/manifest.json"))
    assert len(scored) == 1
