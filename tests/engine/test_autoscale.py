"""Elastic engines on Ray's own autoscaler: a burst of batches grows the replicas and the nodes, a
spot node lost mid-batch loses no request and the replicas move to dedicated nodes, and idle
engines shrink back to zero replicas and zero worker nodes.

The cluster is Ray's autoscaling test cluster: ``ray start --head --autoscaling-config=...`` with
the ``fake_multinode`` provider (what ``ray.cluster_utils.AutoscalingCluster`` starts, minus its
``ray stop --force``, which would kill every Ray on the machine). Ray's autoscaler (the monitor)
launches a fake node, a real raylet on 127.0.0.1, when an engine replica asks for resources no
node has, and terminates it once idle: the same loop KubeRay's in-tree autoscaler runs with pods.
The provider's ``gcs_address`` keeps the nodes on this head (its default is port 6379 on the host
address). Worker node types advertise a ``spot`` or ``dedicated`` custom resource, as the KubeRay
worker groups do (infra/k8s/manifests/20-raycluster.yaml).

The batches run in a driver process of their own (this test process may hold the session's Ray).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

#: The engine the replicas run. transformers starts in a few seconds; the controller and the feed do
#: not depend on which engine answers, and vLLM on the tiny model is the other tests' business.
ENGINE_KIND = "transformers"

#: Node types of the fake cluster: a head with no CPU (no engine there, as on KubeRay), spot and
#: dedicated workers of one CPU each, so each engine replica needs a node of its own.
NODE_TYPES = {
    "ray.head.default": {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0},
    "spot": {"resources": {"CPU": 1, "spot": 1000}, "node_config": {}, "min_workers": 0, "max_workers": 2},
    "dedicated": {"resources": {"CPU": 1, "dedicated": 1000}, "node_config": {}, "min_workers": 0, "max_workers": 2},
}

#: The driver: three batches at once on an autoscaled engine, a spot node killed once a shard is done.
DRIVER = r"""
import json, os, signal, sys, threading, time
from datetime import UTC, datetime, timedelta

import urllib.request

import psutil, ray
from prometheus_client.parser import text_string_to_metric_families

from nightshift.core.protocol import Endpoint, ValidRequest
from nightshift.core.sharding import encode_shard
from nightshift.engine.autoscale import ElasticFleet, fleet_status
from nightshift.engine.runner import EngineSpec, ShardJob, run_shards
from nightshift.settings import EngineConfig, StorageConfig
from nightshift.storage import ArtifactStore

address, model, root, head_pgid = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ray.init(address=address, namespace="nightshift", logging_level="ERROR", log_to_driver=False)
config = EngineConfig(
    autoscale=True, min_replicas=0, max_replicas=2, idle_seconds=2, replica_requests_per_second=0.5,
    spot_resource="spot", dedicated_resource="dedicated", spot_wait_seconds=300,
    max_model_len=512, max_num_seqs=16, default_max_tokens=4, kind=sys.argv[5],
)
spec = EngineSpec(model_path=model, served_model_name="tiny", endpoint=Endpoint.CHAT_COMPLETIONS, config=config)
storage = StorageConfig(root=root)
store = ArtifactStore.from_config(storage)
SHARDS, PER_SHARD, TOKENS = 8, 4, 16

def jobs_of(batch):
    jobs = []
    for s in range(SHARDS):
        requests = [
            ValidRequest(line=s * PER_SHARD + i + 1, custom_id=f"{batch}-{s}-{i}", url=Endpoint.CHAT_COMPLETIONS,
                         body={"model": "tiny", "messages": [{"role": "user", "content": f"Say {batch} {s} {i}."}],
                               "max_tokens": TOKENS, "temperature": 0})
            for i in range(PER_SHARD)
        ]
        path = f"{root}/{batch}/shard-{s}.jsonl"
        store.write_bytes(path, encode_shard(requests))
        jobs.append(ShardJob(name=f"shard-{s}", requests_path=path, results_path=f"{root}/{batch}/results-{s}.jsonl",
                             num_requests=PER_SHARD))
    return jobs

nodes_seen, stop = [], threading.Event()
def watch_nodes():
    while not stop.is_set():
        alive = [n for n in ray.nodes() if n["Alive"] and "node:__internal_head__" not in n["Resources"]]
        nodes_seen.append(len(alive))
        time.sleep(0.5)
threading.Thread(target=watch_nodes, daemon=True).start()

killed = {}
all_done = threading.Event()
def kill_a_spot_node():
    # Spot capacity disappears: SIGKILL the raylet of a spot node that holds a replica with shards in it.
    while len(fleet_status(spec).replicas) < 2:
        time.sleep(0.2)
    replicas = {}
    for name in fleet_status(spec).replicas:  # each waits here until it is up
        actor = ray.get_actor(name, namespace="nightshift")
        node = ray.get(actor.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()))
        if "spot" in next(n for n in ray.nodes() if n["NodeID"] == node)["Resources"]:
            replicas[name] = (actor, node)
    while not all_done.is_set():
        for name, (actor, node) in replicas.items():
            load = ray.get(actor.load.remote())
            if load["in_flight"] == 0:
                continue
            for p in psutil.process_iter(["cmdline"]):
                if f"--node_id={node}" in (p.info["cmdline"] or []) and os.getpgid(p.pid) == head_pgid:
                    p.send_signal(signal.SIGKILL)
                    killed.update(node=node, replica=name, in_flight=load["in_flight"], at=time.time())
                    # Then a batch already late, which needs every replica: the one lost comes back on dedicated.
                    batch("urgent", -1, until_replaced=True)
                    return

outcomes, waits, errors = {}, {}, []
def batch(name, deadline_s, until_replaced=False):
    try:
        jobs = jobs_of(name)
        fleet = ElasticFleet(spec, batch=name, deadline=datetime.now(UTC) + timedelta(seconds=deadline_s), safety_factor=1.5)
        fleet.report(sum(j.num_requests for j in jobs))
        while until_replaced and time.time() < started + 300:  # its demand stands until the controller reacts
            events = fleet_status(spec).events
            if any(e.action == "up" and e.at > killed["at"] for e in events):
                break
            time.sleep(0.5)
        waits[name] = fleet.wait_for_one(sum(j.num_requests for j in jobs))
        if not until_replaced:
            # The burst's demand asks for both replicas; its shards start once both are up, so the
            # kill below finds a spot replica with work in it however fast this machine answers.
            while len(fleet_status(spec).replicas) < 2 and time.time() < started + 300:
                time.sleep(0.2)
            for replica in fleet_status(spec).replicas:
                ray.get(ray.get_actor(replica, namespace="nightshift").load.remote())
        done = run_shards(spec, storage, jobs, fleet=fleet, in_flight=1)
        fleet.close()
        outcomes[name] = [o.results_path for o in done]
    except Exception as exc:
        errors.append(f"{name}: {type(exc).__name__}: {exc}")

started = time.time()
killer = threading.Thread(target=kill_a_spot_node)
killer.start()
threads = [threading.Thread(target=batch, args=(f"b{i}", 200)) for i in range(3)]
for t in threads:
    t.start()
for t in threads:
    t.join()
all_done.set()
killer.join(timeout=120)
burst_s = time.time() - started
answered = {}
for name, paths in outcomes.items():
    ids = [json.loads(line)["custom_id"] for p in paths for line in store.read_bytes(p).decode().splitlines()]
    answered[name] = sorted(ids)
peak = fleet_status(spec)
# Idle: the replicas are retired after idle_seconds, the autoscaler removes the empty nodes.
deadline = time.time() + 60
while time.time() < deadline:
    status = fleet_status(spec)
    if not status.replicas and nodes_seen[-1] == 0:
        break
    time.sleep(0.5)
stop.set()
status = fleet_status(spec)
# The controller (no CPU: on the head) exports its metrics on the head's metrics port.
metrics = {}
for _ in range(60):
    text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[6]}/metrics", timeout=10).read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("ray_nightshift_engine"):
                labels = ",".join(f"{k}={sample.labels[k]}" for k in ("pool", "action") if k in sample.labels)
                metrics[f"{sample.name}{{{labels}}}"] = sample.value
    if any(name.startswith("ray_nightshift_engine_scale_events_total") for name in metrics):
        break
    time.sleep(1)
print("RESULT " + json.dumps({
    "errors": errors, "answered": answered, "waits": waits, "burst_s": burst_s, "killed": killed,
    "batches": sorted(outcomes), "max_nodes": max(nodes_seen), "nodes_at_end": nodes_seen[-1], "replicas_at_end": status.replicas,
    "target_at_end": status.target, "metrics": metrics,
    "events": [e.model_dump() for e in status.events], "started": started,
}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster_config(gcs_address: str) -> dict:
    return {
        "cluster_name": "nightshift-elastic",
        "max_workers": 4,
        "provider": {
            "type": "fake_multinode",
            "gcs_address": gcs_address,
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "available_node_types": NODE_TYPES,
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 10.0,
        "idle_timeout_minutes": 0.05,  # 3 s: the test waits for the shrink, not a production timeout
        "docker": {},
        **dict.fromkeys(["initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands"], []),
        **dict.fromkeys(["head_start_ray_commands", "worker_start_ray_commands", "cluster_synced_files"], []),
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
    }


@pytest.fixture(scope="module")
def autoscaling_cluster() -> Iterator[tuple[str, int, int]]:
    """Ray's autoscaling test cluster on 127.0.0.1 in its own process group; yields (address, pgid,
    the head's metrics export port)."""
    folder = Path(tempfile.mkdtemp(prefix="ns-as-", dir="/tmp"))  # Ray's socket paths must stay short
    port, metrics_port = _free_port(), _free_port()
    address = f"127.0.0.1:{port}"
    config = folder / "cluster.yaml"
    config.write_text(yaml.safe_dump(_cluster_config(address)))
    env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1"}
    command = [
        sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block", "--node-ip-address=127.0.0.1",
        f"--port={port}", "--num-cpus=0", f"--autoscaling-config={config}", f"--temp-dir={folder / 't'}",
        "--include-dashboard=false", "--object-store-memory=100000000", f"--ray-client-server-port={_free_port()}",
        f"--metrics-export-port={metrics_port}",
        # A killed node is declared dead within seconds, not the default ~30.
        '--system-config={"health_check_period_ms":1000,"health_check_failure_threshold":3}',
    ]  # fmt: skip
    with open(folder / "head.log", "ab") as log:
        head = subprocess.Popen(
            command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
    try:
        deadline = time.time() + 60
        while not (folder / "t" / "session_latest" / "logs" / "monitor.log").exists():
            assert head.poll() is None and time.time() < deadline, (folder / "head.log").read_text()[-3000:]
            time.sleep(0.5)
        yield address, head.pid, metrics_port
    finally:
        # Our own process group: the head, its GCS and monitor, and the fake nodes the monitor started
        # (SIGKILL: gcs_server and raylets may outlive a SIGTERM).
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)
        head.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def burst(autoscaling_cluster, tiny_model, tmp_path_factory) -> dict:
    address, pgid, metrics_port = autoscaling_cluster
    root = tmp_path_factory.mktemp("elastic-store")
    run = subprocess.run(
        [sys.executable, "-c", DRIVER, address, str(tiny_model), str(root), str(pgid), ENGINE_KIND, str(metrics_port)],
        cwd=ROOT, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    line = next(x for x in run.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def _events(burst: dict, action: str, pool: str | None = None) -> list[dict]:
    return [e for e in burst["events"] if e["action"] == action and (pool is None or e["pool"] == pool)]


def test_a_burst_grows_the_replicas_and_the_nodes(burst):
    assert not burst["errors"], burst["errors"]
    assert len(_events(burst, "up", "spot")) >= 2, burst["events"]  # from zero to the maximum, on spot
    assert burst["max_nodes"] >= 2  # the autoscaler launched a node per replica


def test_a_spot_node_lost_mid_batch_loses_no_request_and_the_target_moves_to_dedicated(burst):
    assert burst["killed"], "no spot node had a shard in flight to kill"
    batches = ("b0", "b1", "b2", "urgent")
    assert burst["answered"] == {b: sorted(f"{b}-{s}-{i}" for s in range(8) for i in range(4)) for b in batches}
    lost = _events(burst, "lost")
    assert [e["replica"] for e in lost] == [burst["killed"]["replica"]], burst["events"]
    after = [e for e in _events(burst, "up") if e["at"] > lost[0]["at"]]
    assert after and all(e["pool"] == "dedicated" for e in after), burst["events"]


def test_idle_engines_shrink_to_zero_replicas_and_nodes(burst):
    assert burst["replicas_at_end"] == [] and burst["target_at_end"] == 0
    assert burst["nodes_at_end"] == 0
    assert len(_events(burst, "down")) >= 1


def test_the_controller_exports_its_target_replicas_and_scale_events(burst):
    from nightshift.engine.autoscale import exported_metric_names

    metrics = burst["metrics"]
    assert {name.split("{")[0] for name in metrics} == exported_metric_names(), metrics
    assert metrics["ray_nightshift_engine_scale_events_total{pool=spot,action=up}"] >= 2
    assert metrics["ray_nightshift_engine_scale_events_total{pool=spot,action=lost}"] == 1
