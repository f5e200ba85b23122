"""The Kubernetes base job templates of the work pools (infra/k8s/) render into valid Jobs.

Rendering goes through Prefect's own templating (``k8s.render``), exactly as a worker builds a flow
run's job, plus the few steps the kubernetes worker adds afterwards (``k8s.as_submitted``). The Job
is then checked offline against the Kubernetes OpenAPI schema in strict mode, where an unknown or
misspelt field fails.
"""

from __future__ import annotations

import json
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from prefect.utilities.templating import find_placeholders

from tests.k8s import (
    K8S_VERSIONS,
    ROOT,
    as_submitted,
    declared_pools,
    defaults,
    load_template,
    main_container,
    render,
    template_path,
    tolerates,
    validate_job,
)

GPU_POOLS = ("gpu-spot", "gpu-dedicated")
POOLS = (*GPU_POOLS, "nightshift-ops")
JOB_CONFIGURATION_KEYS = {
    "command",
    "env",
    "labels",
    "name",
    "namespace",
    "job_manifest",
    "cluster_config",
    "job_watch_timeout_seconds",
    "pod_watch_timeout_seconds",
    "stream_output",
}
GPU_TAINT = ("nvidia.com/gpu", "present")
# The taints spot GPU nodes carry: a neutral nightshift label, GKE spot, AKS spot node pools.
SPOT_TAINTS = (
    ("nightshift.dev/capacity", "spot"),
    ("cloud.google.com/gke-spot", "true"),
    ("kubernetes.azure.com/scalesetpriority", "spot"),
)
# What flow-run pods read their storage, Pushgateway, Ray-auth settings and S3 keys from.
ENV_FROM = [{"configMapRef": {"name": "nightshift-config"}}, {"secretRef": {"name": "nightshift-storage", "optional": True}}]


def _env(manifest: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in main_container(manifest)["env"]}


def _gpus(manifest: dict[str, Any]) -> int | None:
    """The container's ``nvidia.com/gpu``, checked the way the API server checks an extended resource.

    kubernetes-validate checks the schema only; the API server also requires an extended resource's
    request to equal its limit, and a non-negative integer (0 included).
    """
    resources = main_container(manifest)["resources"]
    request, limit = resources["requests"].get("nvidia.com/gpu"), resources["limits"].get("nvidia.com/gpu")
    assert request == limit, (request, limit)
    assert request is None or (isinstance(request, int) and request >= 0), request
    return request


@pytest.mark.parametrize("pool", POOLS)
def test_template_is_a_kubernetes_base_job_template_with_a_valid_variables_schema(pool):
    template = load_template(pool)
    assert set(template) == {"job_configuration", "variables"}
    assert set(template["job_configuration"]) == JOB_CONFIGURATION_KEYS
    variables = template["variables"]
    jsonschema.Draft202012Validator.check_schema(variables)
    # What Prefect checks of a deployment's job variables (the defaults here).
    jsonschema.validate(defaults(template), variables)
    # What the Prefect server checks when the pool is created: every placeholder is a variable.
    used = {p.name for p in find_placeholders(json.dumps(template["job_configuration"]))}
    assert used <= set(variables["properties"]), used - set(variables["properties"])
    unused = set(variables["properties"]) - used
    assert not unused, f"variables declared but not used: {unused}"
    for name in ("cpu_request", "memory_request", "memory_limit", "node_selector", "tolerations", "image", "env"):
        assert name in used, name


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("pool", POOLS)
def test_rendered_job_is_a_valid_kubernetes_job(pool, version):
    validate_job(as_submitted(render(load_template(pool))), version)


@pytest.mark.parametrize("pool", sorted(declared_pools()))
def test_pools_apply_kubernetes_renders_a_valid_job_for_every_declared_pool(pool):
    """What `nightshift pools apply --type kubernetes` sends for each pool renders and validates."""
    from deployments.pools import load_pools

    declaration = {p.name: p for p in load_pools()}[pool]
    expected = f"infra/k8s/{pool}.base-job-template.json"
    # A pool pools.yaml does not point at its template yet is checked with the line it is to gain.
    declaration = declaration.model_copy(
        update={"kubernetes_base_job_template": declaration.kubernetes_base_job_template or expected}
    )
    assert declaration.kubernetes_base_job_template == expected
    template = declaration.base_job_template("kubernetes")
    assert template == load_template(pool)
    validate_job(as_submitted(render(template)))


@pytest.mark.parametrize("pool", sorted(declared_pools()))
def test_pools_yaml_declares_the_kubernetes_template_of_every_pool(pool):
    """Without the declaration `nightshift pools apply --type kubernetes` refuses the pool."""
    if not declared_pools()[pool].get("kubernetes_base_job_template"):
        pytest.skip(
            f"deployments/pools.yaml does not declare `kubernetes_base_job_template: "
            f"{template_path(pool).relative_to(ROOT)}` under {pool} yet (owned by another change)"
        )
    from deployments.pools import load_pools

    declaration = {p.name: p for p in load_pools()}[pool]
    assert declaration.base_job_template("kubernetes") == load_template(pool)


@pytest.mark.parametrize("pool", POOLS)
def test_flow_run_container_takes_the_config_map_and_the_optional_storage_secret(pool):
    """Storage root, Pushgateway, Ray auth mode (ConfigMap) and S3 keys (Secret, if any) reach every flow run."""
    manifest = as_submitted(render(load_template(pool), {"env": {"NIGHTSHIFT_ENGINE_MODEL": "m"}}))
    assert main_container(manifest)["envFrom"] == ENV_FROM
    validate_job(manifest)
    # A deployment's own env stays explicit, so it still wins over the ConfigMap's keys.
    assert _env(manifest)["NIGHTSHIFT_ENGINE_MODEL"] == "m"


@pytest.mark.parametrize("pool", GPU_POOLS)
def test_gpu_job_runs_on_its_capacity_and_configures_the_engine(pool):
    config = render(load_template(pool))
    manifest = as_submitted(config)
    assert {"cpu", "memory"} <= set(main_container(manifest)["resources"]["requests"])
    pod = manifest["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nightshift.dev/capacity": pool.removeprefix("gpu-")}
    assert tolerates(pod["tolerations"], *GPU_TAINT)
    assert isinstance(manifest["spec"]["ttlSecondsAfterFinished"], int)
    env = _env(manifest)
    assert env["NIGHTSHIFT_ENGINE_DEVICE"] == "cuda"
    assert env["NIGHTSHIFT_ENGINE_NUM_GPUS"] == "1"  # one GPU per engine replica, wherever Ray runs it
    assert env["NIGHTSHIFT_ENGINE_DTYPE"] == "bfloat16"
    assert env["NIGHTSHIFT_RAY_ADDRESS"] == ""  # the template's blank; prefect.yaml sets the address per deployment
    assert main_container(manifest)["image"] == "ghcr.io/nightshift/nightshift:0.1.0"


def test_spot_pod_requests_no_gpu_because_its_engine_runs_on_the_raycluster():
    """Spot runs drive the shared RayCluster: the engine's GPU is on a Ray worker, not in the run's pod."""
    manifest = as_submitted(render(load_template("gpu-spot"), {"env": {"NIGHTSHIFT_RAY_ADDRESS": "ray://h:10001"}}))
    validate_job(manifest)
    assert _gpus(manifest) == 0
    assert _env(manifest)["NIGHTSHIFT_ENGINE_NUM_GPUS"] == "1"


def test_dedicated_pod_requests_the_gpu_its_local_ray_runs_the_engine_on():
    manifest = as_submitted(render(load_template("gpu-dedicated")))
    assert _gpus(manifest) == 1
    assert float(_env(manifest)["NIGHTSHIFT_ENGINE_NUM_GPUS"]) <= _gpus(manifest)


def test_ops_job_is_cpu_only_and_never_on_gpu_or_spot_capacity():
    template = load_template("nightshift-ops")
    manifest = as_submitted(render(template))
    validate_job(manifest)
    resources = main_container(manifest)["resources"]
    assert _gpus(manifest) is None
    assert not any("gpu" in name for name in (*resources["requests"], *resources["limits"]))
    assert "gpu_count" not in template["variables"]["properties"]
    pod = manifest["spec"]["template"]["spec"]
    # Unset variables drop their keys: any node, no tolerations, no /dev/shm volume.
    assert "nodeSelector" not in pod and "tolerations" not in pod and "volumes" not in pod
    assert not any(name.startswith(("NIGHTSHIFT_ENGINE_", "NIGHTSHIFT_RAY_")) for name in _env(manifest))
    # Modest: the control flows place batches and wait; a GPU pod's 32Gi would never fit beside others.
    assert resources["requests"] == {"cpu": "500m", "memory": "1Gi"} and resources["limits"] == {"memory": "2Gi"}
    for key, value in (GPU_TAINT, *SPOT_TAINTS):
        assert not tolerates(pod.get("tolerations", []), key, value), key


def test_ops_job_takes_a_node_selector_and_tolerations_when_given():
    job_variables = {"node_selector": {"pool": "system"}, "tolerations": [{"key": "system", "operator": "Exists"}]}
    jsonschema.validate(job_variables, load_template("nightshift-ops")["variables"])
    manifest = as_submitted(render(load_template("nightshift-ops"), job_variables))
    validate_job(manifest)
    assert manifest["spec"]["template"]["spec"]["nodeSelector"] == {"pool": "system"}


def test_deployment_job_variables_override_the_pool_defaults():
    template = load_template("gpu-spot")
    job_variables = {
        "gpu_count": 2,
        "engine_num_gpus": 2,
        "ray_address": "",
        "env": {"NIGHTSHIFT_ENGINE_MODEL": "Qwen/Qwen2.5-7B-Instruct"},
        "node_selector": {"cloud.google.com/gke-spot": "true"},
    }
    jsonschema.validate(job_variables, template["variables"])
    manifest = as_submitted(render(template, job_variables))
    validate_job(manifest)
    assert _gpus(manifest) == 2  # a spot run with a local Ray brings its own GPUs
    env = _env(manifest)
    assert env["NIGHTSHIFT_ENGINE_NUM_GPUS"] == "2"
    assert env["NIGHTSHIFT_ENGINE_MODEL"] == "Qwen/Qwen2.5-7B-Instruct"
    assert env["NIGHTSHIFT_ENGINE_DEVICE"] == "cuda"  # a deployment's env merges into the pool's
    assert manifest["spec"]["template"]["spec"]["nodeSelector"] == {"cloud.google.com/gke-spot": "true"}


@pytest.mark.parametrize(
    "job_variables",
    [
        pytest.param({"gpu_count": -1}, id="negative-gpus"),
        pytest.param({"gpu_count": 0.5}, id="fractional-pod-gpus"),
        pytest.param({"engine_num_gpus": 0}, id="engine-without-gpu"),
        pytest.param({"tolerations": [{"key": "k", "operator": "Matches"}]}, id="bad-toleration-operator"),
    ],
)
@pytest.mark.parametrize("pool", GPU_POOLS)
def test_bad_job_variables_are_refused(pool, job_variables):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(job_variables, load_template(pool)["variables"])


def test_a_deployment_env_entry_beats_the_template_variable_behind_it():
    """prefect.yaml may set env NIGHTSHIFT_RAY_ADDRESS directly; it wins over ``ray_address``."""
    job_variables = {"ray_address": "ray://from-variable:10001", "env": {"NIGHTSHIFT_RAY_ADDRESS": "ray://from-env:10001"}}
    config = render(load_template("gpu-dedicated"), job_variables)
    assert config.env["NIGHTSHIFT_RAY_ADDRESS"] == "ray://from-env:10001"


def test_spot_job_tolerates_spot_taints_and_is_never_retried_by_kubernetes():
    config = render(load_template("gpu-spot"))
    manifest = as_submitted(config)
    assert manifest["spec"]["backoffLimit"] == 0
    tolerations = manifest["spec"]["template"]["spec"]["tolerations"]
    for key, value in SPOT_TAINTS:
        assert tolerates(tolerations, key, value), key
    # A preempted run must end Crashed (the automation resumes it on gpu-dedicated), not be
    # rescheduled onto spot, which the worker would ask for on SIGTERM when backoffLimit is 0.
    assert config.env["PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR"] == "crash"


def test_dedicated_job_does_not_tolerate_spot_taints():
    manifest = as_submitted(render(load_template("gpu-dedicated")))
    tolerations = manifest["spec"]["template"]["spec"]["tolerations"]
    for key, value in SPOT_TAINTS:
        assert not tolerates(tolerations, key, value), key
    assert tolerates(tolerations, *GPU_TAINT)


@pytest.mark.parametrize(
    "mistake",
    [
        pytest.param(lambda m: m["spec"]["template"]["spec"].update(nodeSelecter={"a": "b"}), id="misspelt-field"),
        pytest.param(lambda m: main_container(m)["env"].append({"name": "N", "value": 1}), id="non-string-env-value"),
        pytest.param(lambda m: main_container(m)["resources"]["limits"].update({"nvidia.com/gpu": [1]}), id="bad-quantity"),
        pytest.param(lambda m: m["spec"].update(backoffLimit="0"), id="string-backoff-limit"),
        pytest.param(lambda m: main_container(m)["envFrom"].append({"configMapRef": {"nam": "x"}}), id="misspelt-env-from"),
        pytest.param(lambda m: main_container(m)["envFrom"][1]["secretRef"].update(optional="true"), id="string-optional"),
    ],
)
@pytest.mark.parametrize("pool", ["gpu-spot", "nightshift-ops"])
def test_validation_rejects_a_broken_job(pool, mistake):
    """The offline check is strict enough to catch the mistakes a template edit makes."""
    manifest = as_submitted(render(load_template(pool)))
    mistake(manifest)
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_job(manifest)


@pytest.mark.parametrize(
    "mistake",
    [
        pytest.param(
            lambda r: r["requests"].update({"nvidia.com/gpu": r["limits"]["nvidia.com/gpu"] + 1}), id="request-above-limit"
        ),
        pytest.param(
            lambda r: (r["requests"].update({"nvidia.com/gpu": -1}), r["limits"].update({"nvidia.com/gpu": -1})), id="negative"
        ),
    ],
)
def test_gpu_check_rejects_what_the_api_server_rejects(mistake):
    manifest = as_submitted(render(load_template("gpu-spot")))
    mistake(main_container(manifest)["resources"])
    with pytest.raises(AssertionError):
        _gpus(manifest)
