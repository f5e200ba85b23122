"""The Kubernetes manifests in infra/k8s/ are valid and wired to each other and to the repo.

Every YAML document under infra/k8s/ is validated offline: Kubernetes' own kinds against the
Kubernetes OpenAPI schema in strict mode (kubernetes-validate: an unknown or misspelt field fails),
the KubeRay ``RayCluster`` against our own schema of KubeRay's documented ray.io/v1 fields
(``raycluster_schema.py`` says why it is ours), whose pod templates use Kubernetes' strict
``PodTemplateSpec``. Then the wiring: the Ray address the deployments are registered with names the
RayCluster's head Service, each GPU pool has a kubernetes worker allowed to create its Jobs, the
gateway takes its secrets from Secret references and is ready only when /health says so.
"""

from __future__ import annotations

import importlib.resources
import json
import re
import tomllib
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

from tests.infra.raycluster_schema import K8S_DEFINITIONS, RAYCLUSTER_V1_SCHEMA
from tests.k8s import as_submitted, declared_pools, load_template, main_container, render, template_path, tolerates

ROOT = Path(__file__).resolve().parents[2]
K8S_DIR = ROOT / "infra" / "k8s"
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
SPOT_TAINTS = (
    ("nvidia.com/gpu", "present"),
    ("nightshift.dev/capacity", "spot"),
    ("cloud.google.com/gke-spot", "true"),
    ("kubernetes.azure.com/scalesetpriority", "spot"),
)
# Env names whose values are secrets: they may only come from a secretKeyRef.
SECRET_ENV = re.compile(r"SECRET|PASSWORD|TOKEN|AUTH_STRING|DATABASE_URL|WEBHOOK_URL|ACCESS_KEY")


def _documents() -> list[tuple[str, dict[str, Any]]]:
    docs = []
    for path in sorted([*K8S_DIR.rglob("*.yaml"), *K8S_DIR.rglob("*.yml")]):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((str(path.relative_to(K8S_DIR)), doc))
    return docs


DOCUMENTS = _documents()


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for _, d in DOCUMENTS if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _all(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in DOCUMENTS if d["kind"] == kind]


def _pins() -> dict[str, str]:
    """Package name → pinned version, from pyproject.toml's dependencies."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return {re.split(r"[\[=]", d)[0].lower(): d.split("==")[1] for d in deps if "==" in d}


def _template_default(variable: str) -> str:
    """A variable's default, the same in every pool's template."""
    found = {load_template(pool)["variables"]["properties"][variable]["default"] for pool in declared_pools()}
    assert len(found) == 1, (variable, found)
    return found.pop()


def _template_default_image() -> str:
    return _template_default("image")


def _template_default_namespace() -> str:
    return _template_default("namespace")


def _containers(pod_template: dict[str, Any]) -> list[dict[str, Any]]:
    return pod_template["spec"]["containers"]


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _allows(role: dict[str, Any], group: str, resource: str, verb: str) -> bool:
    for rule in role["rules"]:
        if (
            group in rule.get("apiGroups", [])
            and resource in rule.get("resources", [])
            and (verb in rule["verbs"] or "*" in rule["verbs"])
        ):
            return True
    return False


@cache
def _raycluster_validator(version: str) -> jsonschema.protocols.Validator:
    """Our RayCluster schema, with Kubernetes' strict definitions of ``version`` for the pod templates."""
    minor = ".".join(version.split(".")[:2])  # "1.30" or latest_version()'s "1.37.0"
    full = [v for v in kubernetes_validate.utils.all_versions() if v.rsplit(".", 1)[0] == minor][-1]
    folder = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema" / f"v{full}-local-strict"
    definitions = json.loads((folder / "_definitions.json").read_text())
    assert definitions["$id"] == K8S_DEFINITIONS
    registry = Resource.from_contents(definitions) @ Registry()
    jsonschema.Draft202012Validator.check_schema(RAYCLUSTER_V1_SCHEMA)
    return jsonschema.Draft202012Validator(RAYCLUSTER_V1_SCHEMA, registry=registry)


def _validate(doc: dict[str, Any], version: str) -> None:
    if doc["apiVersion"].startswith("ray.io/"):
        assert doc["kind"] == "RayCluster", f"no schema here for {doc['apiVersion']} {doc['kind']}"
        _raycluster_validator(version).validate(doc)
    else:
        kubernetes_validate.validate(doc, version, strict=True)


# -- every document -----------------------------------------------------------------------------
@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(
    "doc", [d for _, d in DOCUMENTS], ids=[f"{path}:{d['kind']}/{d['metadata']['name']}" for path, d in DOCUMENTS]
)
def test_document_is_valid(doc, version):
    _validate(doc, version)


def test_the_manifests_declare_the_cluster_side_of_nightshift():
    kinds = sorted(d["kind"] for _, d in DOCUMENTS)
    for kind in ("Namespace", "ConfigMap", "RayCluster", "ServiceAccount", "Role", "RoleBinding", "Deployment", "Service", "Job"):
        assert kind in kinds, kind
    assert not _all("Secret"), "secrets are created by hand (see infra/k8s/README.md), never committed"


def test_everything_lives_in_the_namespace_the_job_templates_use():
    namespace = _one("Namespace")["metadata"]["name"]
    assert namespace == _template_default_namespace()
    for path, doc in DOCUMENTS:
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace, (path, doc["kind"], doc["metadata"]["name"])


def _env_lists(node: Any) -> list[list[dict[str, Any]]]:
    """Every container ``env`` list anywhere in a document."""
    if isinstance(node, dict):
        found = [node["env"]] if isinstance(node.get("env"), list) else []
        return found + [e for value in node.values() for e in _env_lists(value)]
    if isinstance(node, list):
        return [e for value in node for e in _env_lists(value)]
    return []


def test_no_secret_value_is_written_into_a_manifest():
    for path, doc in DOCUMENTS:
        for env in _env_lists(doc):
            for item in env:
                if SECRET_ENV.search(item["name"]):
                    assert "secretKeyRef" in item.get("valueFrom", {}), (path, item["name"])
        if doc["kind"] == "ConfigMap":
            for key in doc["data"]:
                assert not SECRET_ENV.search(key), (path, key)


# -- KubeRay ------------------------------------------------------------------------------------
def test_raycluster_runs_the_pinned_ray_in_the_flow_run_image():
    cluster = _one("RayCluster")
    assert cluster["spec"]["rayVersion"] == _pins()["ray"]
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    for group in groups:
        for container in _containers(group["template"]):
            # A Ray client (the flow run) must match the cluster's Ray and Python exactly: one image.
            assert container["image"] == _template_default_image()


def test_raycluster_has_a_head_a_cpu_group_and_a_spot_gpu_group():
    spec = _one("RayCluster")["spec"]
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["metrics-export-port"].isdigit()
    ports = {p["name"]: p["containerPort"] for p in _containers(head["template"])[0]["ports"]}
    assert ports["client"] == 10001
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    for group in groups.values():
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
    gpu = [g for g in groups.values() if "nvidia.com/gpu" in _containers(g["template"])[0]["resources"]["limits"]]
    cpu = [g for g in groups.values() if g not in gpu]
    assert len(gpu) == 1 and cpu, list(groups)
    pod = gpu[0]["template"]["spec"]
    assert pod["nodeSelector"] == {"nightshift.dev/capacity": "spot"}
    for key, value in SPOT_TAINTS:
        assert tolerates(pod["tolerations"], key, value), key
    for group in cpu:
        assert not tolerates(group["template"]["spec"].get("tolerations", []), "nightshift.dev/capacity", "spot")


def test_the_spot_ray_address_names_the_raycluster_head_service():
    cluster = _one("RayCluster")
    config = _one("ConfigMap", "nightshift-config")["data"]
    head_ports = {p["name"]: p["containerPort"] for p in _containers(cluster["spec"]["headGroupSpec"]["template"])[0]["ports"]}
    # KubeRay names the head Service "<RayCluster name>-head-svc" in the cluster's namespace.
    assert config["NIGHTSHIFT_SPOT_RAY_ADDRESS"] == f"ray://{cluster['metadata']['name']}-head-svc:{head_ports['client']}"
    # Empty: a local Ray inside the dedicated flow-run pod; otherwise another Ray cluster.
    assert config["NIGHTSHIFT_DEDICATED_RAY_ADDRESS"] == "" or config["NIGHTSHIFT_DEDICATED_RAY_ADDRESS"].startswith("ray://")
    assert config["RAY_AUTH_MODE"] == "disabled"


# -- Prefect workers ----------------------------------------------------------------------------
def _kubernetes_pools() -> list[str]:
    """Every declared pool with a kubernetes template (where pools.yaml names it, or is to name it)."""
    return [name for name in declared_pools() if template_path(name).is_file()]


def _worker_for(pool: str) -> dict[str, Any]:
    workers = []
    for deployment in _all("Deployment"):
        args = _containers(deployment["spec"]["template"])[0].get("args", [])
        if args[:3] == ["prefect", "worker", "start"] and args[args.index("--pool") + 1] == pool:
            workers.append(deployment)
    assert len(workers) == 1, f"{len(workers)} workers for pool {pool}"
    return workers[0]


def test_every_pool_has_a_kubernetes_template_and_a_worker():
    assert set(_kubernetes_pools()) == set(declared_pools()) >= {"gpu-spot", "gpu-dedicated", "nightshift-ops"}
    for pool in _kubernetes_pools():
        _worker_for(pool)


@pytest.mark.parametrize("pool", _kubernetes_pools())
def test_worker_runs_the_pinned_prefect_as_a_kubernetes_worker(pool):
    container = _containers(_worker_for(pool)["spec"]["template"])[0]
    args = container["args"]
    assert args[args.index("--type") + 1] == "kubernetes"
    repository, tag = container["image"].rsplit(":", 1)
    assert repository == "prefecthq/prefect"
    assert tag == f"{_pins()['prefect']}-python3.11-kubernetes"  # the flavour that ships prefect-kubernetes
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert ">=3.11" in requires


@pytest.mark.parametrize("pool", _kubernetes_pools())
def test_worker_reads_its_api_url_and_ray_addresses_from_the_configmap(pool):
    config = _one("ConfigMap", "nightshift-config")
    env = _env(_containers(_worker_for(pool)["spec"]["template"])[0])
    for name in ("PREFECT_API_URL", "NIGHTSHIFT_SPOT_RAY_ADDRESS", "NIGHTSHIFT_DEDICATED_RAY_ADDRESS"):
        ref = env[name]["valueFrom"]["configMapKeyRef"]
        assert ref["name"] == config["metadata"]["name"] and ref["key"] in config["data"], name
    assert config["data"]["PREFECT_API_URL"].endswith("/api")


@pytest.mark.parametrize("pool", _kubernetes_pools())
def test_worker_may_create_and_follow_jobs_in_its_namespace(pool):
    worker = _worker_for(pool)
    namespace = worker["metadata"]["namespace"]
    account = worker["spec"]["template"]["spec"]["serviceAccountName"]
    assert any(sa["metadata"]["name"] == account for sa in _all("ServiceAccount"))
    bindings = [
        b
        for b in _all("RoleBinding")
        if any(s["kind"] == "ServiceAccount" and s["name"] == account and s["namespace"] == namespace for s in b["subjects"])
    ]
    roles = [_one("Role", b["roleRef"]["name"]) for b in bindings if b["roleRef"]["kind"] == "Role"]
    assert roles, f"no Role bound to {account}"
    assert all(r["metadata"]["namespace"] == namespace for r in roles)
    for group, resource, verb in [
        ("batch", "jobs", "create"),
        ("batch", "jobs", "delete"),
        ("batch", "jobs", "watch"),
        ("", "pods", "list"),
        ("", "pods", "watch"),
        ("", "pods/log", "get"),
        ("", "events", "list"),
    ]:
        assert any(_allows(r, group, resource, verb) for r in roles), (group, resource, verb)


def test_deployments_are_registered_with_the_configmap_ray_addresses():
    """prefect.yaml's `{{ $VAR }}` job variables are resolved by `prefect deploy`: the register Job's env."""
    job = _one("Job", "nightshift-register")
    container = _containers(job["spec"]["template"])[0]
    command = " ".join([*container.get("command", []), *container.get("args", [])])
    assert "nightshift pools apply --type kubernetes" in command and "prefect --no-prompt deploy --all" in command
    assert {"configMapRef": {"name": "nightshift-config"}} in container["envFrom"]
    config = _one("ConfigMap", "nightshift-config")["data"]
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    used = {v for d in deployments for v in re.findall(r"\{\{\s*\$(\w+)\s*\}\}", json.dumps(d.get("work_pool", {})))}
    assert used and used <= set(config), used - set(config)


# -- flow-run pods -------------------------------------------------------------------------------
@pytest.mark.parametrize("pool", _kubernetes_pools())
def test_flow_run_pods_take_the_configmap_and_storage_secret_the_cluster_uses(pool):
    """The flow run reads the same store, Pushgateway and Ray auth mode as the gateway and the Ray pods."""
    env_from = main_container(as_submitted(render(load_template(pool))))["envFrom"]
    config = _one("ConfigMap", "nightshift-config")
    assert {"configMapRef": {"name": config["metadata"]["name"]}} in env_from
    gateway = _containers(_one("Deployment", "nightshift-gateway")["spec"]["template"])[0]
    storage = [e for e in gateway["envFrom"] if "secretRef" in e]
    assert storage and storage[0] in env_from and storage[0]["secretRef"]["optional"] is True
    for name in ("NIGHTSHIFT_STORAGE_ROOT", "NIGHTSHIFT_METRICS_PUSHGATEWAY_URL", "RAY_AUTH_MODE"):
        assert config["data"][name], name


def _registered_job_variables(deployment: dict[str, Any]) -> dict[str, Any]:
    """A deployment's job variables as the register Job's `prefect deploy` resolves them (ConfigMap as env)."""
    config = _one("ConfigMap", "nightshift-config")["data"]
    text = json.dumps(deployment.get("work_pool", {}).get("job_variables", {}))
    return json.loads(re.sub(r"\{\{\s*\$(\w+)\s*\}\}", lambda m: config[m.group(1)], text))


def _gpu_deployments() -> list[dict[str, Any]]:
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    kinds = {name: spec["kind"] for name, spec in declared_pools().items()}
    return [d for d in deployments if kinds.get(d.get("work_pool", {}).get("name")) in ("spot", "dedicated")]


@pytest.mark.parametrize("deployment", _gpu_deployments(), ids=lambda d: d["name"])
def test_a_flow_run_pod_requests_gpus_only_when_its_engine_runs_inside_it(deployment):
    """Driving a Ray cluster, the pod is a Ray client: the engine's GPU is on a Ray worker. Else it brings its own."""
    pool = deployment["work_pool"]["name"]
    config = render(load_template(pool), _registered_job_variables(deployment))
    container = main_container(as_submitted(config))
    gpus = container["resources"]["limits"]["nvidia.com/gpu"]
    assert gpus == container["resources"]["requests"]["nvidia.com/gpu"]
    if config.env["NIGHTSHIFT_RAY_ADDRESS"]:
        assert gpus == 0, f"{deployment['name']} drives {config.env['NIGHTSHIFT_RAY_ADDRESS']} but its pod asks for {gpus} GPUs"
    else:
        assert gpus >= float(config.env["NIGHTSHIFT_ENGINE_NUM_GPUS"]) > 0, deployment["name"]


def test_spot_runs_drive_the_raycluster():
    """Why the spot pool's pods request no GPU: its deployment is registered with the RayCluster's address."""
    spot = [d for d in _gpu_deployments() if declared_pools()[d["work_pool"]["name"]]["kind"] == "spot"]
    assert spot
    for deployment in spot:
        config = render(load_template(deployment["work_pool"]["name"]), _registered_job_variables(deployment))
        head = f"ray://{_one('RayCluster')['metadata']['name']}-head-svc:"
        assert config.env["NIGHTSHIFT_RAY_ADDRESS"].startswith(head), deployment["name"]


# -- the gateway --------------------------------------------------------------------------------
def test_gateway_serves_with_secrets_from_secret_references_and_is_ready_on_health():
    deployment = _one("Deployment", "nightshift-gateway")
    container = _containers(deployment["spec"]["template"])[0]
    args = container["args"]
    assert args[:2] == ["nightshift", "serve"] and args[args.index("--host") + 1] == "0.0.0.0"
    env = _env(container)
    for name in ("NIGHTSHIFT_API_JWT_SECRET", "NIGHTSHIFT_API_DATABASE_URL"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] and ref["key"] and not ref.get("optional", False), name
    probe = container["readinessProbe"]["httpGet"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert probe["path"] == "/health" and probe["port"] in ports
    assert str(ports[probe["port"]]) == args[args.index("--port") + 1]
    assert container["image"] == _template_default_image()


def test_gateway_service_selects_the_gateway_pods():
    deployment = _one("Deployment", "nightshift-gateway")
    service = _one("Service", "nightshift-gateway")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    container_ports = {p["name"] for p in _containers(deployment["spec"]["template"])[0]["ports"]}
    assert all(p["targetPort"] in container_ports for p in service["spec"]["ports"])


# -- the checks catch mistakes ------------------------------------------------------------------
@pytest.mark.parametrize(
    "mistake",
    [
        pytest.param(lambda c: c["spec"].update(workerGroupSpec=c["spec"].pop("workerGroupSpecs")), id="misspelt-spec-field"),
        pytest.param(lambda c: c["spec"]["workerGroupSpecs"][0]["rayStartParams"].update({"num-cpus": 4}), id="non-string-param"),
        pytest.param(lambda c: c["spec"]["workerGroupSpecs"][0].pop("groupName"), id="group-without-name"),
        pytest.param(
            lambda c: c["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0].update(imagePullPolice="Always"),
            id="misspelt-container-field",
        ),
        pytest.param(
            lambda c: c["spec"]["workerGroupSpecs"][-1]["template"]["spec"].update(tolerations=[{"key": 1}]),
            id="bad-toleration",
        ),
        pytest.param(lambda c: c["spec"].update(autoscalerOptions={"upscalingMode": "Fast"}), id="bad-upscaling-mode"),
    ],
)
def test_raycluster_validation_rejects_a_broken_cluster(mistake):
    cluster = json.loads(json.dumps(_one("RayCluster")))
    mistake(cluster)
    with pytest.raises(jsonschema.ValidationError):
        _raycluster_validator("1.30").validate(cluster)
