"""Drill: the Prefect server restarted while a batch runs.

The batch's driver is its own process (a flow run as a deployment's worker would start it) on the
session's Ray, reporting to a Prefect server of this test's own (SQLite in its home); mid-batch the
server is stopped and started again on the same port and database. The run finishes, publishes
every answer once, and the server it comes back to records it Completed.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.batchfiles import read_jsonl, write_batch
from tests.deployments.stacks import up_env
from tests.drills.faults import answers, undisturbed

N, SHARD = 20, 5  # four shards

#: The flow run as a worker's subprocess runs it, with the SLA drill's pause after each shard so
#: that the batch is still running when the server goes away.
DRIVER = """
import json, sys
from flows.batch import BatchRunParameters, build_task_runner, process_batch
from nightshift.core.runs import BatchRunContext, FaultInjection
from nightshift.settings import Settings

run = process_batch.with_options(task_runner=build_task_runner(Settings()))
drill = BatchRunContext(drill=FaultInjection(slow_shards_seconds=2))
result = run(BatchRunParameters(input_uri=sys.argv[1], shard_size=5), drill)  # SHARD
print("RESULT " + json.dumps({"flow_run_id": result.flow_run_id, "manifest_uri": result.manifest_uri}))
"""


class _Result:
    """The parts of a run's result ``answers`` reads, from its manifest."""

    def __init__(self, manifest: dict) -> None:
        self.output_uri = manifest["output_file"]["path"]
        self.error_uri = manifest["error_file"]["path"]
        self.request_counts = type("Counts", (), {"total": manifest["request_counts"]["total"]})


@pytest.mark.usefixtures("ray_session", "prefect_api")
def test_a_prefect_restart_mid_batch_loses_nothing(tmp_path, tiny_model, engine_env):
    import ray

    from nightshift.services import free_port, local_prefect_server

    src = tmp_path / "drill.jsonl"
    write_batch(src, N)
    expected = undisturbed(src, SHARD)

    port, home, store = free_port(), tmp_path / "prefect", tmp_path / "drill-store"  # not the undisturbed run's
    env = up_env(tmp_path / "home", store, tiny_model, ray.get_runtime_context().gcs_address)
    log = tmp_path / "driver.log"
    server = local_prefect_server(home, port=port, ui=False)
    api = server.__enter__()
    try:
        with open(log, "w") as out:
            args = [sys.executable, "-c", DRIVER, str(src)]
            driver = subprocess.Popen(args, env={**env, "PREFECT_API_URL": api}, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 240
        while not list(store.glob("batches/*/*/shards/*.results.jsonl")):
            assert driver.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
    finally:
        server.__exit__(None, None, None)  # the server goes away mid-batch...
    assert driver.poll() is None, "the batch was over before the server went away: nothing was drilled"
    stopped_with = len(list(store.glob("batches/*/*/shards/*.results.jsonl")))
    time.sleep(3)
    with local_prefect_server(home, port=port, ui=False):  # ...and comes back on the same database
        assert driver.wait(timeout=300) == 0, log.read_text()[-5000:]
        (line,) = [x for x in log.read_text().splitlines() if x.startswith("RESULT ")]
        result = json.loads(line.removeprefix("RESULT "))
        from prefect import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
            state = client.read_flow_run(result["flow_run_id"]).state
        assert state is not None and state.is_completed(), state

    assert stopped_with < N // SHARD  # shards were still to come when the server stopped
    manifest = json.loads(Path(result["manifest_uri"].removeprefix("file://")).read_text())
    assert not any(s["reused"] for s in manifest["shards"])  # one run, every shard computed once
    assert answers(_Result(manifest), read_jsonl) == expected
