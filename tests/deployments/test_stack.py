"""`nightshift up` against the session's Prefect server and Ray: pools, deployments, automations
and real process workers; then placement, preemption and capacity on real flow runs.

The flow runs join the session's Ray by address, so they share its warm engine actor (the same
engine settings as the other flow tests), and the adapter's request counter sees every run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.batchfiles import read_jsonl, write_batch
from tests.engines import engine_requests_served

ROOT = Path(__file__).resolve().parents[2]
POOLS = ("gpu-spot", "gpu-dedicated", "nightshift-ops")


def _prefect(*args: str, env: dict[str, str]) -> str:
    run = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", *args], env={**env, "COLUMNS": "250"}, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def _ids_once(run_output: str, run_errors: str, expected: set[str]) -> None:
    ids = [line["custom_id"] for line in read_jsonl(run_output) + read_jsonl(run_errors)]
    assert sorted(ids) == sorted(expected)  # every input custom_id exactly once across both files


def _published(store: Path, batch_id: str) -> dict:
    (manifest,) = store.glob(f"batches/{batch_id}/*/manifest.json")
    return json.loads(manifest.read_text())


def test_up_registers_pools_deployments_and_the_preemption_automation(stack):
    env = stack["env"]
    deployments = _prefect("deployment", "ls", env=env)
    names = ("submit-batch/submit", "process-batch/spot", "process-batch/dedicated", "cleanup-batches/daily")
    names += ("score-table/nightly",)
    assert all(name in deployments for name in names), deployments
    from prefect import get_client

    with get_client(sync_client=True) as client:
        nightly = client.read_deployment_by_name("score-table/nightly")
        assert [s.schedule.cron for s in nightly.schedules] == ["0 2 * * *"] and nightly.work_pool_name == "nightshift-ops"
    pools = _prefect("work-pool", "ls", env=env)
    assert all(p in pools for p in POOLS)
    assert "nightshift-preempted-spot-resumes-on-dedicated" in _prefect("automation", "ls", env=env)

    # pools apply is idempotent: it restores a limit changed by hand and creates nothing new
    _prefect("work-pool", "set-concurrency-limit", "gpu-spot", "7", env=env)
    run = subprocess.run([sys.executable, "-m", "nightshift.cli", "pools", "apply"], env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    from prefect import get_client

    run = subprocess.run(
        [sys.executable, "-m", "nightshift.cli", "automations", "apply"], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
    with get_client(sync_client=True) as client:
        assert client.read_work_pool("gpu-spot").concurrency_limit == 2
        for name in (
            "nightshift-preempted-spot-resumes-on-dedicated",
            "nightshift-sla-at-risk-escalates",
            "nightshift-sla-silent-free",
        ):
            assert len(client.read_automations_by_name(name)) == 1  # updated in place, not duplicated
        assert sorted(p.name for p in client.read_work_pools() if p.name in POOLS) == sorted(POOLS)


def test_loose_deadline_runs_on_spot_and_tight_on_dedicated(stack, settings, tmp_path):
    from nightshift.api import follow_batch, read_pool_states, submit_batch

    loose_file, tight_file = tmp_path / "loose.jsonl", tmp_path / "tight.jsonl"
    write_batch(loose_file, 12, ["bad_body"])
    write_batch(tight_file, 12, max_tokens=6)
    loose = submit_batch(str(loose_file), tier="free", settings=settings, use_cache=False)
    assert loose.placement.kind == "spot" and "slack covers" in loose.placement.reason

    # Tight: an enterprise batch submitted so long ago that half of spot's padded estimate is left.
    from nightshift.orchestration.estimate import measured_basis
    from nightshift.storage import ArtifactStore

    spot, _ = read_pool_states(settings)
    model = loose.estimate.cost.model  # placement uses this model's own measured throughput on spot
    rps = measured_basis(ArtifactStore(str(stack["store"])), spot, model, settings).requests_per_second
    padded = 12 / rps * settings.pools.safety_factor
    submitted = datetime.now(UTC) - timedelta(hours=6) + timedelta(seconds=padded / 2)
    tight = submit_batch(str(tight_file), tier="enterprise", settings=settings, submitted_at=submitted, use_cache=False)
    assert tight.placement.kind == "dedicated" and "too tight" in tight.placement.reason

    for sub, pool in ((loose, "gpu-spot"), (tight, "gpu-dedicated")):
        (run,) = follow_batch(sub.flow_run_id, timeout=300)
        assert run.state.is_completed(), run.state
        assert run.work_pool_name == pool  # the flow run itself says where it ran
        assert run.parameters["context"]["placement"]["pool"] == pool  # the product's part, not the user's
    manifest = _published(stack["store"], loose.batch_id)
    assert manifest["request_counts"] == {"total": 13, "completed": 12, "failed": 1}
    _ids_once(manifest["output_file"]["path"], manifest["error_file"]["path"], {f"req-{i:03d}" for i in range(12)} | {"bad-body"})
    # the spot run measured its model's throughput for the next placement, and priced its engine time on spot
    from nightshift.storage.pools import read_throughput

    # The workers serve the stack's model ("tiny", NIGHTSHIFT_ENGINE_SERVED_MODEL_NAME in their environment); this
    # test process submits with settings that know no such model, so its estimate priced the default one.
    assert manifest["cost"]["pool"] == "spot" and manifest["cost"]["model"] == "tiny"
    assert read_throughput(ArtifactStore(str(stack["store"])), "gpu-spot", "tiny").requests_per_second() > 0


def _infrastructure_pid(flow_run_id: str, timeout: float = 120) -> int:
    """The pid of the process a worker runs the flow run in ("host:pid" once it is running)."""
    from uuid import UUID

    from prefect import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(UUID(flow_run_id))
            if run.infrastructure_pid:
                return int(run.infrastructure_pid.rsplit(":", 1)[-1])
            time.sleep(0.2)
    raise AssertionError(f"flow run {flow_run_id} never reported its process")


def test_killed_spot_run_resumes_on_dedicated_without_recomputing_finished_shards(stack, settings, tmp_path):
    from nightshift.api import follow_batch, submit_batch
    from nightshift.storage import ArtifactStore
    from nightshift.storage.pools import read_throughput

    src = tmp_path / "preempted.jsonl"
    write_batch(src, 58, ["invalid_json", "unknown_url"], max_tokens=24)  # 12 shards of 5 valid requests
    served_before = engine_requests_served()
    sub = submit_batch(str(src), tier="free", settings=settings, use_cache=False)
    assert sub.placement.kind == "spot"

    # Preempt: SIGKILL the flow-run process as soon as its first shard is on disk.
    pid = _infrastructure_pid(sub.flow_run_id)
    deadline = time.monotonic() + 180
    while not (done := list(stack["store"].glob(f"batches/{sub.batch_id}/*/shards/*.results.jsonl"))):
        assert time.monotonic() < deadline, "no shard finished"
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    finished = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in done}
    assert len(finished) < 12  # killed mid-batch

    spot_run, resumed = follow_batch(sub.flow_run_id, timeout=300)
    assert spot_run.state.name == "Crashed" and spot_run.work_pool_name == "gpu-spot"
    assert resumed.state.is_completed(), resumed.state
    assert resumed.work_pool_name == "gpu-dedicated"
    assert resumed.parameters["resumed_from"] == sub.flow_run_id
    assert resumed.parameters["params"] == spot_run.parameters["params"]  # same batch
    assert resumed.parameters["context"] == spot_run.parameters["context"]  # same submitted_at: same deadline

    manifest = _published(stack["store"], sub.batch_id)
    assert manifest["request_counts"] == {"total": 60, "completed": 58, "failed": 2}
    expected = {f"req-{i:03d}" for i in range(58)} | {"bad-url", None}
    ids = [line["custom_id"] for line in read_jsonl(manifest["output_file"]["path"]) + read_jsonl(manifest["error_file"]["path"])]
    assert len(ids) == 60 and set(ids) == expected
    # Shards finished before the kill were reused as they were, not computed again:
    for path, (mtime, data) in finished.items():
        assert (path.stat().st_mtime_ns, path.read_bytes()) == (mtime, data)
    dedicated = read_throughput(ArtifactStore(str(stack["store"])), "gpu-dedicated", manifest["cost"]["model"]).samples[-1]
    assert dedicated.requests <= 58 - 5 * len(finished)  # counted by the dedicated run
    # At the adapter: every request ran once, plus at most the shards in flight at the kill
    # (up to two are queued at the actor and may be answered for the dead run as well).
    assert 58 <= engine_requests_served() - served_before <= 58 + 2 * 5


def test_pool_concurrency_limit_holds_a_third_run_and_placement_sees_it(stack, settings, tmp_path):
    from uuid import UUID

    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.states import Completed, Running

    from nightshift.api import follow_batch, read_pool_states, submit_batch

    with get_client(sync_client=True) as client:
        spot_dep = client.read_deployment_by_name("process-batch/spot")
        # Two batches occupy spot's two slots (held in Running, as long jobs would).
        holders = []
        for i in range(2):
            run = client.create_flow_run_from_deployment(spot_dep.id, parameters={"params": {"input_uri": f"held-{i}"}})
            client.set_flow_run_state(run.id, Running(), force=True)
            holders.append(run.id)
    try:
        spot, dedicated = read_pool_states(settings)
        assert (spot.concurrency_limit, spot.running, spot.free_slots, spot.available) == (2, 2, 0, False)
        assert dedicated.available

        src = tmp_path / "third.jsonl"
        write_batch(src, 10, max_tokens=4)
        placed = submit_batch(str(src), tier="free", settings=settings, use_cache=False)
        assert placed.placement.kind == "dedicated" and "no free slot" in placed.placement.reason

        # Sent to spot anyway, a third run waits: the worker does not start it while both slots are held.
        waiting = run_deployment(
            "process-batch/spot",
            parameters={"params": {"input_uri": str(src), "batch_id": "third-on-spot", "use_cache": False}},
            timeout=0,
            as_subflow=False,
        )
        time.sleep(8)  # four polls of the worker
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(waiting.id).state
        assert state.type.value == "SCHEDULED" and state.name in ("Scheduled", "Late"), state
        assert read_pool_states(settings)[0].queued == 1
    finally:
        with get_client(sync_client=True) as client:
            for run_id in holders:
                client.set_flow_run_state(UUID(str(run_id)), Completed(), force=True)
    (third,) = follow_batch(str(waiting.id), timeout=300)  # a slot freed: it runs now
    assert third.state.is_completed() and third.work_pool_name == "gpu-spot"
    (on_dedicated,) = follow_batch(placed.flow_run_id, timeout=300)
    assert on_dedicated.state.is_completed() and on_dedicated.work_pool_name == "gpu-dedicated"


def test_cli_submit_places_waits_and_prints_where_results_are(stack, tmp_path):
    src = tmp_path / "cli.jsonl"
    write_batch(src, 6, ["unknown_url"], max_tokens=5)
    run = subprocess.run(
        [sys.executable, "-m", "nightshift.cli", "submit", str(src), "--tier", "premium", "--wait"],
        env={**stack["env"], "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "→ gpu-spot (spot): slack covers spot" in run.stdout
    output = next(line.split(None, 1)[1] for line in run.stdout.splitlines() if line.startswith("output:"))
    errors = next(line.split(None, 1)[1] for line in run.stdout.splitlines() if line.startswith("errors:"))
    assert [o["custom_id"] for o in read_jsonl(output)] == [f"req-{i:03d}" for i in range(6)]
    assert [e["custom_id"] for e in read_jsonl(errors)] == ["bad-url"]
