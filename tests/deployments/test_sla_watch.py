"""SLA watch end to end: progress, events, alerts at a loopback webhook, escalation, the proactive
breach of a run that died silently, and silence for a batch that meets its deadline.

Alerts arrive at the sink `nightshift up` runs on 127.0.0.1 (no webhook configured), through the
real automations and Prefect's webhook block.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from tests.batchfiles import read_jsonl, write_batch
from tests.deployments.test_stack import _infrastructure_pid, _published


def _alerts(stack, batch_id: str) -> list[dict]:
    """Alerts about ``batch_id`` received so far, with their JSON body parsed."""
    path = Path(stack["home"]) / "alerts.jsonl"
    found = []
    for line in path.read_text().splitlines() if path.exists() else []:
        alert = json.loads(line)
        body = json.loads(alert["body"])
        if body.get("batch_id") == batch_id:
            found.append(body)
    return found


def _wait_alerts(stack, batch_id: str, n: int, timeout: float) -> list[dict]:
    deadline = time.monotonic() + timeout
    while len(found := _alerts(stack, batch_id)) < n and time.monotonic() < deadline:
        time.sleep(0.5)
    return found


def _events(api: str, batch_id: str, names: list[str] | None = None) -> list[dict]:
    """nightshift.batch.* events about ``batch_id`` on the server (only ``names`` if given), oldest first."""
    kind = {"name": names} if names else {"prefix": ["nightshift.batch."]}
    body = {
        "filter": {"event": kind, "resource": {"labels": {"nightshift.batch.id": [batch_id]}}, "order": "ASC"},
        "limit": 50,  # the API's page size
    }
    return httpx.post(f"{api}/events/filter", json=body, timeout=10).json()["events"]


LIFECYCLE = [f"nightshift.batch.{n}" for n in ("started", "completed", "failed", "sla.at-risk", "sla.breached")]


def test_batch_meeting_its_deadline_reports_progress_and_sends_no_alert(stack, settings, tmp_path):
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from nightshift.api import follow_batch, submit_batch

    src = tmp_path / "on-time.jsonl"
    write_batch(src, 12, ["bad_body"], max_tokens=7)
    batch_id = f"on-time-{uuid.uuid4().hex[:6]}"
    sub = submit_batch(str(src), tier="premium", settings=settings, batch_id=batch_id, use_cache=False)
    (run,) = follow_batch(sub.flow_run_id, timeout=300)
    assert run.state.is_completed()

    manifest = _published(stack["store"], batch_id)
    progress = manifest["progress"]
    assert (progress["total"], progress["completed"], progress["failed"], progress["pending"]) == (13, 12, 1, 0)
    assert progress["percent"] == 100.0 and progress["risk"] == "on-track" and progress["pool"] == "gpu-spot"
    live = json.loads((stack["store"] / "batches" / batch_id / manifest["version"] / "progress.json").read_text())
    assert live["pending"] == 0 and live["deadline"] == progress["deadline"]

    shown = subprocess.run(
        [sys.executable, "-m", "nightshift.cli", "status", batch_id],
        env={**stack["env"], "COLUMNS": "200"},
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0 and "13/13 (100%)" in shown.stdout and "on-track" in shown.stdout, shown.stdout + shown.stderr

    time.sleep(3)  # give a wrong alert the time to arrive
    api = stack["env"]["PREFECT_API_URL"]
    deadline = time.monotonic() + 30  # the server persists events in batches, a few seconds apart
    while len(events := _events(api, batch_id, LIFECYCLE)) < 2 and time.monotonic() < deadline:
        time.sleep(1)
    assert [e["event"] for e in events] == ["nightshift.batch.started", "nightshift.batch.completed"]
    assert events[1]["payload"]["sla_met"] and events[1]["payload"]["total"] == 13
    assert {r["prefect.resource.id"] for r in events[1]["related"]} >= {f"nightshift.batch.{batch_id}"}
    progress_events = _events(api, batch_id, ["nightshift.batch.progress"])
    assert progress_events and progress_events[-1]["payload"]["percent"] == 100.0
    assert progress_events[0]["resource"]["nightshift.pool"] == "gpu-spot"
    assert _alerts(stack, batch_id) == []
    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])))
    assert any(a.type == "progress" and a.data == 100.0 for a in arts)


def test_tight_deadline_alerts_once_escalates_to_dedicated_and_breaches_once(stack, tmp_path):
    from prefect.deployments import run_deployment

    from nightshift.api import follow_batch

    src = tmp_path / "drill.jsonl"
    write_batch(src, 58, ["invalid_json", "unknown_url"])  # 12 shards of 5
    batch_id = f"drill-{uuid.uuid4().hex[:6]}"
    deadline = datetime.now(UTC) + timedelta(seconds=30)
    # An SLA drill on spot: each shard held back 4 s (about 1.25 req/s), against a 30 s deadline.
    params = {"input_uri": str(src), "batch_id": batch_id, "tier": "free", "deadline": deadline.isoformat()}
    params |= {"use_cache": False}
    drill = {"drill": {"slow_shards_seconds": 4}}  # the product's side of the form: operators only
    first = run_deployment("process-batch/spot", parameters={"params": params, "context": drill}, timeout=0, as_subflow=False)

    runs = follow_batch(str(first.id), timeout=300)
    assert [(r.work_pool_name, r.state.name) for r in runs] == [("gpu-spot", "Cancelled"), ("gpu-dedicated", "Completed")]
    assert runs[1].parameters["resumed_from"] == str(first.id)

    alerts = _wait_alerts(stack, batch_id, 2, timeout=30)
    time.sleep(3)  # and no more after that
    alerts = _alerts(stack, batch_id)
    assert sorted(a["alert"] for a in alerts) == ["sla.at-risk", "sla.breached"], alerts
    at_risk = next(a for a in alerts if a["alert"] == "sla.at-risk")
    assert at_risk["pool"] == "gpu-spot" and at_risk["tier"] == "free" and at_risk["eta_seconds"] > 0, at_risk
    assert at_risk["slack_seconds"] < 0 and at_risk["progress"]["risk"] == "at-risk"

    manifest = _published(stack["store"], batch_id)
    ids = [o["custom_id"] for o in read_jsonl(manifest["output_file"]["path"]) + read_jsonl(manifest["error_file"]["path"])]
    assert len(ids) == 60 and set(ids) == {f"req-{i:03d}" for i in range(58)} | {"bad-url", None}
    assert manifest["progress"]["pool"] == "gpu-dedicated"


def test_run_killed_before_reporting_still_breaches_by_the_proactive_automation(stack, tmp_path):
    from prefect.deployments import run_deployment

    env = stack["env"]

    def apply(extra: dict[str, str]) -> None:
        run = subprocess.run(
            [sys.executable, "-m", "nightshift.cli", "automations", "apply"], env={**env, **extra}, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stdout + run.stderr

    # The basic tier's silence window shrinks to 15 s for this test (the automation's own setting).
    apply({"NIGHTSHIFT_SLA_BASIC_HOURS": str(15 / 3600)})
    try:
        src = tmp_path / "silent.jsonl"
        write_batch(src, 20, max_tokens=6)
        batch_id = f"silent-{uuid.uuid4().hex[:6]}"
        params = {"input_uri": str(src), "batch_id": batch_id, "tier": "basic", "use_cache": False}
        # On dedicated: no automation resumes it, so nothing will ever report on this batch.
        context = {"drill": {"slow_shards_seconds": 5}}
        run = run_deployment(
            "process-batch/dedicated", parameters={"params": params, "context": context}, timeout=0, as_subflow=False
        )
        pid = _infrastructure_pid(str(run.id))
        deadline = time.monotonic() + 120
        while not list(stack["store"].glob(f"batches/{batch_id}/*/shards/*.results.jsonl")):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)

        alerts = _wait_alerts(stack, batch_id, 1, timeout=60)
        assert [(a["alert"], a["source"], a["tier"]) for a in alerts] == [("sla.breached", "proactive", "basic")]
        names = [e["event"] for e in _events(env["PREFECT_API_URL"], batch_id, LIFECYCLE)]
        assert "nightshift.batch.started" in names and "nightshift.batch.completed" not in names
    finally:
        apply({})
