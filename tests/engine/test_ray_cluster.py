"""nightshift on an existing multi-node Ray: a head and a second node, each its own `ray start`
process group on 127.0.0.1, joined by address by a `nightshift run` with two engine replicas.

The second node is a node of a real cluster: it has the dependencies but not this repository (an
interpreter whose site-packages lack the editable install of nightshift, started from an empty
folder with no PYTHONPATH), so whatever runs there came with the job's runtime_env.

The run is a subprocess: this test process may already hold the session's in-process Ray, and
prefect-ray's task runner reuses an initialised Ray whatever address it is given.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.batchfiles import read_jsonl, write_batch

ROOT = Path(__file__).resolve().parents[2]

#: `ray start --address=...` for a second node on this machine, kept on 127.0.0.1. Ray refuses to
#: add a node while RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (what keeps the head on loopback, see
#: PLATFORM.md), and with it on swaps 127.0.0.1 for the host's address, which the head does not
#: listen on. A real worker node is another machine with its own address and needs neither patch;
#: the processes this one starts keep the variable at 0, so they stay on loopback too.
RAY_START_ON_LOOPBACK = """
import sys
import ray._private.ray_constants as ray_constants
import ray._private.services as services
ray_constants.ENABLE_RAY_CLUSTER = True
services.resolve_ip_for_localhost = lambda host: host
from ray.scripts.scripts import main
sys.argv[0] = "ray"
main()
"""

#: Counts the nodes a cluster reports alive (a driver of its own, so this process's Ray is untouched).
COUNT_NODES = """
import sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(sum(1 for n in ray.nodes() if n["Alive"]))
"""

#: Where the interpreter finds nightshift's packages (None: nowhere), once Ray is imported.
FIND_CODE = """
import importlib.util, ray
for name in ("nightshift", "flows", "tasks", "blocks"):
    print(importlib.util.find_spec(name))
"""

#: The node id of every alive node that is not the head.
WORKER_NODES = """
import json, sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(json.dumps([n["NodeID"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" not in n["Resources"]]))
"""

#: Waits until every engine actor on a cluster is up; prints the node id of each.
ENGINE_NODES = """
import json, sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("engine-")]
actors = [ray.get_actor(name, namespace="nightshift") for name in names]
nodes = ray.get([a.__ray_call__.remote(lambda self: ray.get_runtime_context().get_node_id()) for a in actors], timeout=300)
print(json.dumps(dict(zip(names, nodes))))
"""


def _on_cluster(script: str, address: str) -> str:
    """The last line a driver script of its own prints (this process's Ray is left alone)."""
    run = subprocess.run([sys.executable, "-c", script, address], capture_output=True, text=True, timeout=400)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout.strip().splitlines()[-1]


def _alive_nodes(address: str) -> int:
    return int(_on_cluster(COUNT_NODES, address))


def _python_without_nightshift(folder: Path) -> tuple[Path, dict[str, str]]:
    """An interpreter with this venv's dependencies but not nightshift, and an environment without
    the repository: what a node built from a Ray image plus the requirements has.

    A venv whose one ``.pth`` line adds this venv's site-packages to ``sys.path``: the dependencies
    import, but the ``.pth`` files in that folder (the editable install's finder for nightshift,
    flows, tasks, blocks) are not run, since only a venv's own site folder has its ``.pth`` run.
    """
    import site
    import venv

    venv.EnvBuilder(with_pip=False, symlinks=True).create(folder)
    (purelib,) = (folder / "lib").glob("python3*/site-packages")
    (purelib / "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}}
    return folder / "bin" / "python", env


def _start_in(cwd: Path, args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``start_process`` (own process group, output to ``log``) with ``cwd`` as working folder."""
    with open(log, "ab") as out:
        return subprocess.Popen(
            args, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A two-node Ray on 127.0.0.1: a head and a worker node (2 CPUs each), each `ray start --block`
    in its own process group and temp dir, stopped by killing that group; yields the head's address.
    The worker node runs from an empty folder on an interpreter that cannot import nightshift."""
    from nightshift.runtime import RAY_ENV
    from nightshift.services import local_ray_head, stop_process_group

    root = Path(tempfile.mkdtemp(prefix="ns-rc-", dir="/tmp"))  # Ray's socket paths must stay short
    try:
        python, env = _python_without_nightshift(root / "py")
        empty = root / "cwd"
        empty.mkdir()
        probe = subprocess.run([python, "-c", FIND_CODE], cwd=empty, env=env, capture_output=True, text=True, timeout=120)
        assert probe.stdout.split() == ["None"] * 4, probe.stdout + probe.stderr[-2000:]  # Ray imports, nightshift does not
        with local_ray_head(root / "head", num_cpus=2) as address:
            node_dir = root / "node"
            node_dir.mkdir()
            args = [str(python), "-c", RAY_START_ON_LOOPBACK, "start", f"--address={address}", "--block"]
            args += ["--node-ip-address=127.0.0.1", "--num-cpus=2", f"--temp-dir={node_dir}", "--disable-usage-stats"]
            node = _start_in(empty, args, {**env, **RAY_ENV}, node_dir / "node.log")
            try:
                deadline = time.monotonic() + 90
                while _alive_nodes(address) < 2:
                    assert node.poll() is None, (node_dir / "node.log").read_text()[-3000:]
                    assert time.monotonic() < deadline, "the second node never joined"
                    time.sleep(1)
                yield address
            finally:
                stop_process_group(node, grace=15)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _run(src: Path, env: dict[str, str]) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "nightshift.cli", "run", str(src), "--shard-size", "5"],
        cwd=ROOT,
        env={**env, "COLUMNS": "250"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]


def test_a_batch_on_a_two_node_cluster_uses_a_replica_on_each_node(ray_cluster, prefect_api, tiny_model, tmp_path):
    store = tmp_path / "store"
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_api,
        "NIGHTSHIFT_HOME": str(tmp_path / "home"),
        "NIGHTSHIFT_RAY_ADDRESS": ray_cluster,
        "NIGHTSHIFT_ENGINE_REPLICAS": "2",
        "NIGHTSHIFT_ENGINE_NUM_CPUS": "1",
        "NIGHTSHIFT_ENGINE_MODEL": str(tiny_model),
        "NIGHTSHIFT_ENGINE_SERVED_MODEL_NAME": "tiny",
        "NIGHTSHIFT_ENGINE_MAX_MODEL_LEN": "512",
        "NIGHTSHIFT_ENGINE_DEFAULT_MAX_TOKENS": "8",
        "NIGHTSHIFT_STORAGE_ROOT": str(store),
    }
    # Shards go only to replicas that are up, and a tiny batch is done before a replica on the
    # other node has loaded: a first run starts both (kept warm), the measured run finds them up.
    warm = tmp_path / "warm.jsonl"
    write_batch(warm, 4, max_tokens=4)  # not the measured batch's requests: those must not be cache hits
    _run(warm, env)
    engines = json.loads(_on_cluster(ENGINE_NODES, ray_cluster))
    assert len(engines) == 2 and len(set(engines.values())) == 2, engines  # SPREAD: one replica per node

    src = tmp_path / "mixed.jsonl"
    write_batch(src, 47, ["invalid_json", "unknown_url", "bad_body"])
    _run(src, env)
    (manifest_file,) = store.glob("batches/mixed/*/manifest.json")
    manifest = json.loads(manifest_file.read_text())
    assert manifest["request_counts"] == {"total": 50, "completed": 47, "failed": 3}
    out, err = read_jsonl(manifest["output_file"]["path"]), read_jsonl(manifest["error_file"]["path"])
    assert (len(out), len(err)) == (47, 3)
    ids = [line["custom_id"] for line in out + err]
    assert sorted(i for i in ids if i) == sorted([f"req-{i:03d}" for i in range(47)] + ["bad-url", "bad-body"])
    assert ids.count(None) == 1  # the line that is not JSON has no readable custom_id

    shards = manifest["shards"]
    assert len(shards) == 10  # 47 valid requests in shards of 5
    workers = [s["worker"] for s in shards]
    assert all(w is not None for w in workers)
    assert len({w["node_id"] for w in workers}) >= 2, workers  # both replicas took shards, one per node
    assert {w["actor"]: w["node_id"] for w in workers} == engines
    # The node without the repository ran shards with the code the driver shipped, and says which.
    (bare_node,) = json.loads(_on_cluster(WORKER_NODES, ray_cluster))
    assert any(w["node_id"] == bare_node for w in workers), (bare_node, workers)
    # '<installed version>+<hash of the shipped sources>', one for the whole job (both replicas got
    # the same upload). Not compared with this checkout's hash: the warm replicas keep the code of
    # the job that started them, and a shared checkout may change in between.
    from nightshift.engine.cluster import installed_version

    (version,) = {w["nightshift_version"] for w in workers}
    assert re.fullmatch(rf"{re.escape(installed_version() or '0')}\+[0-9a-f]{{12}}", version), version
    assert "replicas" not in manifest["engine_params_in_version"]
    assert manifest["engine"]["replicas"] == 2


def test_code_is_shipped_only_to_a_cluster_joined_by_address_and_only_when_not_installed():
    from nightshift.engine.cluster import VERSION_ENV, build_runtime_env, shipped_version
    from nightshift.engine.runner import ray_init_kwargs
    from nightshift.settings import RayConfig

    assert build_runtime_env(RayConfig()) is None  # a local Ray runs this environment's code
    assert build_runtime_env(RayConfig(address="10.0.0.5:6379", code="installed")) is None
    env = ray_init_kwargs(RayConfig(address="ray://10.0.0.5:10001"))["runtime_env"]
    assert [Path(p).name for p in env["py_modules"]] == ["nightshift", "flows", "tasks", "blocks"]
    assert "__pycache__/" in env["excludes"] and "*.pyc" in env["excludes"]
    assert env["env_vars"] == {VERSION_ENV: shipped_version()}
    assert "runtime_env" not in ray_init_kwargs(RayConfig(address="auto", code="installed"))
