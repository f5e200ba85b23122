"""prefect.yaml: every entrypoint loads by module path, its parameters validate, and every work
pool a deployment names is declared in deployments/pools.yaml."""

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_every_deployment_entrypoint_loads_and_its_parameters_validate():
    from prefect.flows import load_flow_from_entrypoint

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    names = {f"{d['entrypoint'].split(':')[-1]}/{d['name']}" for d in spec["deployments"]}
    assert {
        "submit_batch_flow/submit",
        "process_batch/spot",
        "process_batch/dedicated",
        "cleanup/daily",
        "score_table/nightly",
    } <= names
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


def _form(entrypoint: str) -> dict[str, list[str]]:
    """The fields a deployment's run form offers: parameter → fields of its model, from the
    schema ``prefect deploy`` registers (``parameter_openapi_schema``)."""
    from prefect.flows import load_flow_from_entrypoint
    from prefect.utilities.callables import parameter_schema

    schema = parameter_schema(load_flow_from_entrypoint(entrypoint)).model_dump()
    form = {}
    for name, prop in schema["properties"].items():
        ref = prop.get("$ref", "").rsplit("/", 1)[-1]
        form[name] = list(schema["definitions"][ref]["properties"]) if ref else []
    return form


def test_forms_offer_only_what_a_user_decides():
    # process-batch: no placement, lineage, resume, submitted-at or fault-injection field.
    assert _form("flows.batch:process_batch") == {
        "params": ["input_uri", "batch_id", "tier", "endpoint", "model", "shard_size", "deadline", "use_cache"]
    }
    assert _form("flows.submit:submit_batch_flow") == {
        "params": ["input_uri", "tier", "model", "priority", "deadline", "webhook"]
    }


def test_product_fields_still_reach_the_flow_and_unknown_ones_are_refused():
    from prefect.exceptions import ParameterTypeError
    from prefect.flows import load_flow_from_entrypoint

    flow = load_flow_from_entrypoint("flows.batch:process_batch")
    context = {"submitted_at": "2026-01-01T00:00:00Z", "drill": {"slow_shards_seconds": 2}}
    got = flow.validate_parameters({"params": {"input_uri": "a.jsonl"}, "context": context, "resumed_from": "run-1"})
    assert got["context"].drill.slow_shards_seconds == 2 and got["resumed_from"] == "run-1"
    # A product field on the user's form is refused, not silently dropped.
    with pytest.raises(ParameterTypeError, match="slow_shards_seconds"):
        flow.validate_parameters({"params": {"input_uri": "a.jsonl", "slow_shards_seconds": 2}})
