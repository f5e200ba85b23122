"""prefect.yaml: every entrypoint loads by module path, its parameters validate, and every work
pool a deployment names is declared in deployments/pools.yaml."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_every_deployment_entrypoint_loads_and_its_parameters_validate():
    from prefect.flows import load_flow_from_entrypoint

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    names = {f"{d['entrypoint'].split(':')[-1]}/{d['name']}" for d in spec["deployments"]}
    assert {"process_batch/spot", "process_batch/dedicated", "cleanup/daily", "score_table/nightly"} <= names
    for dep in spec["deployments"]:
        # A module path, not a file path: Ray workers must unpickle the flow by an importable name.
        assert ".py:" not in dep["entrypoint"]
        flow = load_flow_from_entrypoint(dep["entrypoint"])
        flow.validate_parameters(dep.get("parameters") or {})


def test_deployments_use_declared_pools_and_spot_resumes_on_dedicated():
    from deployments.pools import load_pools

    pools = {p.name: p for p in load_pools()}
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    by_name = {d["name"]: d for d in spec["deployments"]}
    for dep in spec["deployments"]:
        assert dep["work_pool"]["name"] in pools, dep["name"]
    assert pools[by_name["spot"]["work_pool"]["name"]].kind == "spot"
    assert pools[by_name["dedicated"]["work_pool"]["name"]].kind == "dedicated"
    for pool in pools.values():
        if pool.kind in ("spot", "dedicated"):
            assert pool.concurrency_limit and pool.base_job_template("kubernetes")["job_configuration"]
