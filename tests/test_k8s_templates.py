"""The Kubernetes base job templates of the GPU pools (infra/k8s/) render into valid Jobs.

Rendering goes through Prefect's own code path, ``BaseJobConfiguration.from_template_and_values``
(variable defaults, env merge, ``apply_values``, env coercion to strings), exactly as a worker
builds a flow run's job. The few steps the kubernetes worker adds afterwards (prefect-kubernetes
is not installed here) are mirrored in ``_as_submitted``. The Job is then checked offline against
the Kubernetes OpenAPI schema in strict mode, where an unknown or misspelt field fails.
"""

from __future__ import annotations

import asyncio
import copy
import json
import shlex
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
from k8s import tolerates
from prefect.utilities.templating import find_placeholders
from prefect.workers.base import BaseJobConfiguration

K8S_DIR = Path(__file__).resolve().parents[1] / "infra" / "k8s"
POOLS = ("gpu-spot", "gpu-dedicated")
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
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
# Rendering must never reach a Prefect API: any call on this placeholder client would fail.
_NO_CLIENT: Any = object()


class _KubernetesJobConfiguration(BaseJobConfiguration):
    """The fields of prefect-kubernetes' ``KubernetesWorkerJobConfiguration``."""

    namespace: str = "default"
    job_manifest: dict[str, Any]
    cluster_config: dict[str, Any] | None = None
    job_watch_timeout_seconds: int | None = None
    pod_watch_timeout_seconds: int = 60
    stream_output: bool = True


def _load(pool: str) -> dict[str, Any]:
    return json.loads((K8S_DIR / f"{pool}.base-job-template.json").read_text())


def _defaults(template: dict[str, Any]) -> dict[str, Any]:
    return {name: spec["default"] for name, spec in template["variables"]["properties"].items() if "default" in spec}


def _render(template: dict[str, Any], job_variables: dict[str, Any] | None = None) -> _KubernetesJobConfiguration:
    """The job configuration a worker builds from the pool template and a deployment's job variables."""
    return asyncio.run(_KubernetesJobConfiguration.from_template_and_values(template, job_variables or {}, client=_NO_CLIENT))


def _as_submitted(config: _KubernetesJobConfiguration) -> dict[str, Any]:
    """The Job the kubernetes worker submits: its env as a list, args split, a generated name."""
    manifest = copy.deepcopy(config.job_manifest)
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": k, "value": v} for k, v in config.env.items()]
    args = container.get("args", "prefect flow-run execute")
    container["args"] = shlex.split(args) if isinstance(args, str) else args
    if manifest["metadata"].get("generateName", "-") == "-":
        manifest["metadata"]["generateName"] = "prefect-job-"
    return manifest


def _validate(manifest: dict[str, Any], version: str = "1.30") -> None:
    """Strict schema validation of a Job, minus the two pod-spec keys Prefect's worker insists on.

    prefect-kubernetes refuses a template without ``parallelism: 1`` and ``completions: 1`` under
    ``spec.template.spec`` (they belong to the Job spec, where 1 is the default anyway); the API
    server drops them with a warning. Every other field must be known to Kubernetes.
    """
    manifest = copy.deepcopy(manifest)
    pod = manifest["spec"]["template"]["spec"]
    assert (pod.pop("parallelism"), pod.pop("completions")) == (1, 1)
    kubernetes_validate.validate(manifest, version, strict=True)


def _container(manifest: dict[str, Any]) -> dict[str, Any]:
    return manifest["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("pool", POOLS)
def test_template_is_a_kubernetes_base_job_template_with_a_valid_variables_schema(pool):
    template = _load(pool)
    assert set(template) == {"job_configuration", "variables"}
    assert set(template["job_configuration"]) == JOB_CONFIGURATION_KEYS
    variables = template["variables"]
    jsonschema.Draft202012Validator.check_schema(variables)
    # What Prefect checks of a deployment's job variables (the defaults here).
    jsonschema.validate(_defaults(template), variables)
    # What the Prefect server checks when the pool is created: every placeholder is a variable.
    used = {p.name for p in find_placeholders(json.dumps(template["job_configuration"]))}
    assert used <= set(variables["properties"]), used - set(variables["properties"])
    for name in ("gpu_count", "cpu_request", "memory_request", "node_selector", "tolerations", "ray_address", "image"):
        assert name in used, f"variable {name} is declared but not used"
    assert variables["properties"]["gpu_count"]["type"] == "integer"
    assert variables["properties"]["gpu_count"]["default"] == 1


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("pool", POOLS)
def test_rendered_job_is_a_valid_kubernetes_job(pool, version):
    _validate(_as_submitted(_render(_load(pool))), version)


@pytest.mark.parametrize("pool", POOLS)
def test_job_requests_gpus_on_its_capacity_and_configures_the_engine(pool):
    config = _render(_load(pool))
    manifest = _as_submitted(config)
    resources = _container(manifest)["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == 1
    assert {"cpu", "memory"} <= set(resources["requests"])
    pod = manifest["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"nightshift.dev/capacity": pool.removeprefix("gpu-")}
    assert tolerates(pod["tolerations"], *GPU_TAINT)
    assert isinstance(manifest["spec"]["ttlSecondsAfterFinished"], int)
    env = {e["name"]: e["value"] for e in _container(manifest)["env"]}
    assert env["NIGHTSHIFT_ENGINE_DEVICE"] == "cuda"
    assert env["NIGHTSHIFT_ENGINE_NUM_GPUS"] == "1"
    assert env["NIGHTSHIFT_ENGINE_DTYPE"] == "bfloat16"
    assert env["NIGHTSHIFT_RAY_ADDRESS"] == ""  # blank: a local Ray inside the pod
    assert _container(manifest)["image"] == "ghcr.io/nightshift/nightshift:0.1.0"


def test_deployment_job_variables_override_the_pool_defaults():
    template = _load("gpu-spot")
    job_variables = {
        "gpu_count": 2,
        "ray_address": "ray://nightshift-ray-head-svc:10001",
        "env": {"NIGHTSHIFT_ENGINE_MODEL": "Qwen/Qwen2.5-7B-Instruct"},
        "node_selector": {"cloud.google.com/gke-spot": "true"},
    }
    jsonschema.validate(job_variables, template["variables"])
    manifest = _as_submitted(_render(template, job_variables))
    _validate(manifest)
    assert _container(manifest)["resources"]["limits"]["nvidia.com/gpu"] == 2
    env = {e["name"]: e["value"] for e in _container(manifest)["env"]}
    assert env["NIGHTSHIFT_ENGINE_NUM_GPUS"] == "2"
    assert env["NIGHTSHIFT_RAY_ADDRESS"] == "ray://nightshift-ray-head-svc:10001"
    assert env["NIGHTSHIFT_ENGINE_MODEL"] == "Qwen/Qwen2.5-7B-Instruct"
    assert env["NIGHTSHIFT_ENGINE_DEVICE"] == "cuda"  # a deployment's env merges into the pool's
    assert manifest["spec"]["template"]["spec"]["nodeSelector"] == {"cloud.google.com/gke-spot": "true"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"gpu_count": 0}, template["variables"])


def test_a_deployment_env_entry_beats_the_template_variable_behind_it():
    """prefect.yaml may set env NIGHTSHIFT_RAY_ADDRESS directly; it wins over ``ray_address``."""
    job_variables = {"ray_address": "ray://from-variable:10001", "env": {"NIGHTSHIFT_RAY_ADDRESS": "ray://from-env:10001"}}
    config = _render(_load("gpu-dedicated"), job_variables)
    assert config.env["NIGHTSHIFT_RAY_ADDRESS"] == "ray://from-env:10001"


def test_spot_job_tolerates_spot_taints_and_is_never_retried_by_kubernetes():
    config = _render(_load("gpu-spot"))
    manifest = _as_submitted(config)
    assert manifest["spec"]["backoffLimit"] == 0
    tolerations = manifest["spec"]["template"]["spec"]["tolerations"]
    for key, value in SPOT_TAINTS:
        assert tolerates(tolerations, key, value), key
    # A preempted run must end Crashed (the automation resumes it on gpu-dedicated), not be
    # rescheduled onto spot, which the worker would ask for on SIGTERM when backoffLimit is 0.
    assert config.env["PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR"] == "crash"


def test_dedicated_job_does_not_tolerate_spot_taints():
    manifest = _as_submitted(_render(_load("gpu-dedicated")))
    tolerations = manifest["spec"]["template"]["spec"]["tolerations"]
    for key, value in SPOT_TAINTS:
        assert not tolerates(tolerations, key, value), key
    assert tolerates(tolerations, *GPU_TAINT)


@pytest.mark.parametrize(
    "mistake",
    [
        pytest.param(lambda m: m["spec"]["template"]["spec"].update(nodeSelecter={"a": "b"}), id="misspelt-field"),
        pytest.param(lambda m: _container(m)["env"].append({"name": "N", "value": 1}), id="non-string-env-value"),
        pytest.param(lambda m: _container(m)["resources"]["limits"].update({"nvidia.com/gpu": [1]}), id="bad-quantity"),
        pytest.param(lambda m: m["spec"].update(backoffLimit="0"), id="string-backoff-limit"),
    ],
)
def test_validation_rejects_a_broken_job(mistake):
    """The offline check is strict enough to catch the mistakes a template edit makes."""
    manifest = _as_submitted(_render(_load("gpu-spot")))
    mistake(manifest)
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(manifest)
