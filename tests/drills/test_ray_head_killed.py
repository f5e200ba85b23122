"""Drill: the Ray head killed while a batch runs.

First, the driver alone: a driver whose head is SIGKILLed and replaced at the same address by a new
head reconnects to the new GCS and, left alone, waits forever on tasks that node no longer has;
``watch_driver_node`` ends it within seconds, as Ray ends a driver whose GCS is gone.

Then the whole path on the spot pool: a `nightshift up` of this test's own (Prefect server, pools,
workers, automations) on a Ray head of its own. Mid-batch the head is SIGKILLed and a new one
started at the same address. The run's driver sees its node gone and exits, its worker reports the
run Crashed, and the preemption automation runs the batch on the
dedicated pool, which joins the new head and computes only the shards the first run had not
finished. Nobody resumes anything by hand.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.batchfiles import read_jsonl, write_batch
from tests.deployments.conftest import nightshift_up
from tests.deployments.stacks import up_env
from tests.drills.faults import answers, undisturbed

N, SHARD = 20, 5  # four shards


def _ray_head(folder: Path, port: int):
    """``ray start --head --block`` on 127.0.0.1:``port`` in its own process group (as
    ``nightshift.services.local_ray_head`` starts it), returned so that the test can SIGKILL it."""
    from nightshift.engine.runner import RAY_ENV
    from nightshift.services import free_port, start_process, wait_port

    folder.mkdir(parents=True, exist_ok=True)
    ray_cli = str(Path(sys.executable).with_name("ray"))
    args = [ray_cli, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2"]
    args += ["--include-dashboard=false", f"--temp-dir={folder}", "--disable-usage-stats"]
    args.append(f"--ray-client-server-port={free_port()}")
    proc = start_process(args, {**os.environ, **RAY_ENV}, folder / "head.log")
    wait_port(port, proc, 90, "Ray head", folder / "head.log")
    return proc


class _Result:
    """The parts of a run's result ``answers`` reads, from its manifest."""

    def __init__(self, manifest: dict) -> None:
        self.output_uri = manifest["output_file"]["path"]
        self.error_uri = manifest["error_file"]["path"]
        self.request_counts = type("Counts", (), {"total": manifest["request_counts"]["total"]})


#: A driver on the cluster at argv[1], blocked on a task of its node, with the node watch on.
DRIVER = """
import sys, time, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
from nightshift.engine.cluster import watch_driver_node
watch_driver_node(interval=1)
print("ready", flush=True)

@ray.remote(num_cpus=0.1)
def forever():
    time.sleep(3600)

ray.get(forever.remote())
"""


def test_a_driver_whose_head_is_replaced_exits_instead_of_hanging():
    import subprocess

    from nightshift.engine.runner import RAY_ENV
    from nightshift.services import free_port, stop_process_group

    root = Path(tempfile.mkdtemp(prefix="ns-hw-", dir="/tmp"))  # Ray's socket paths must stay short
    port = free_port()
    heads = [_ray_head(root / "head-1", port)]
    driver = None
    try:
        args = [sys.executable, "-c", DRIVER, f"127.0.0.1:{port}"]
        driver = subprocess.Popen(args, env={**os.environ, **RAY_ENV}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert driver.stdout is not None and driver.stdout.readline().strip() == "ready"
        os.killpg(heads[0].pid, signal.SIGKILL)  # the head dies...
        heads[0].wait(30)
        heads.append(_ray_head(root / "head-2", port))  # ...and a new one takes its address at once
        started = time.monotonic()
        assert driver.wait(timeout=60) == 1  # Ray alone would wait for the new GCS's tasks forever
        assert time.monotonic() - started < 30
        assert "this driver's Ray node left the cluster" in driver.stderr.read()
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
        for head in heads:
            stop_process_group(head, grace=15)
        import shutil

        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.usefixtures("ray_session", "prefect_api")
def test_a_killed_ray_head_is_replaced_and_the_batch_resumes_on_its_own(tmp_path, tiny_model, engine_env):
    from prefect import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from nightshift.services import free_port, stop_process_group

    src = tmp_path / "drill.jsonl"
    write_batch(src, N)
    expected = undisturbed(src, SHARD)

    root = Path(tempfile.mkdtemp(prefix="ns-hk-", dir="/tmp"))  # Ray's socket paths must stay short
    ray_port, api_port = free_port(), free_port()
    api_url = f"http://127.0.0.1:{api_port}/api"
    home, store = tmp_path / "home", tmp_path / "drill-store"
    env = {**up_env(home, store, tiny_model, f"127.0.0.1:{ray_port}"), "RAY_gcs_rpc_server_reconnect_timeout_s": "10"}
    heads = [_ray_head(root / "head-1", ray_port)]
    try:
        up = nightshift_up(env, home / "up.log", "--port", str(api_port), api_url=api_url)
        with up, temporary_settings({PREFECT_API_URL: api_url}):
            params = {"input_uri": str(src), "shard_size": SHARD}
            parameters = {"params": params, "context": {"drill": {"slow_shards_seconds": 2}}}
            spot = run_deployment("process-batch/spot", parameters=parameters, timeout=0)
            deadline = time.monotonic() + 300
            while not list(store.glob("batches/*/*/shards/*.results.jsonl")):
                assert time.monotonic() < deadline, (home / "up.log").read_text()[-3000:]
                time.sleep(0.2)
            os.killpg(heads[0].pid, signal.SIGKILL)  # the head dies mid-batch...
            heads[0].wait(30)
            killed_with = len(list(store.glob("batches/*/*/shards/*.results.jsonl")))
            heads.append(_ray_head(root / "head-2", ray_port))  # ...and a new one comes up at its address

            while not list(store.glob("batches/*/*/manifest.json")):
                assert time.monotonic() < deadline, "the batch was never resumed"
                time.sleep(1)
            with get_client(sync_client=True) as client:
                assert client.read_flow_run(spot.id).state.name == "Crashed"
    finally:
        for head in heads:
            stop_process_group(head, grace=15)
        import shutil

        shutil.rmtree(root, ignore_errors=True)

    assert killed_with < N // SHARD  # shards were still to come when the head died
    (manifest_file,) = store.glob("batches/*/*/manifest.json")
    manifest = json.loads(manifest_file.read_text())
    reused = [s for s in manifest["shards"] if s["reused"]]
    assert len(reused) >= 1  # the shards finished before the kill were kept...
    assert all(s["worker"] is not None for s in manifest["shards"] if not s["reused"])  # ...the rest computed on the new head
    assert answers(_Result(manifest), read_jsonl) == expected
