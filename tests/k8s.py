"""Kubernetes helpers for the manifest and job-template tests.

Rendering goes through Prefect's own code path, ``BaseJobConfiguration.from_template_and_values``
(variable defaults, env merge, ``apply_values``, env coercion to strings), exactly as a worker
builds a flow run's job. The few steps the kubernetes worker adds afterwards (prefect-kubernetes
is not installed here) are mirrored in ``as_submitted``.
"""

from __future__ import annotations

import asyncio
import copy
import json
import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from prefect.workers.base import BaseJobConfiguration

ROOT = Path(__file__).resolve().parents[1]
K8S_DIR = ROOT / "infra" / "k8s"
POOLS_FILE = ROOT / "deployments" / "pools.yaml"
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
# Rendering must never reach a Prefect API: any call on this placeholder client would fail.
_NO_CLIENT: Any = object()


def declared_pools() -> dict[str, dict[str, Any]]:
    """Pool name → its declaration in deployments/pools.yaml."""
    return yaml.safe_load(POOLS_FILE.read_text())["pools"]


def template_path(pool: str) -> Path:
    """The pool's kubernetes base job template: as pools.yaml declares it, else where it must declare it."""
    declared = declared_pools().get(pool, {}).get("kubernetes_base_job_template")
    return ROOT / (declared or f"infra/k8s/{pool}.base-job-template.json")


def load_template(pool: str) -> dict[str, Any]:
    """The pool's kubernetes base job template, parsed."""
    return json.loads(template_path(pool).read_text())


def defaults(template: dict[str, Any]) -> dict[str, Any]:
    """The template's variable defaults (what a deployment without job variables gets)."""
    return {name: spec["default"] for name, spec in template["variables"]["properties"].items() if "default" in spec}


class KubernetesJobConfiguration(BaseJobConfiguration):
    """The fields of prefect-kubernetes' ``KubernetesWorkerJobConfiguration``."""

    namespace: str = "default"
    job_manifest: dict[str, Any]
    cluster_config: dict[str, Any] | None = None
    job_watch_timeout_seconds: int | None = None
    pod_watch_timeout_seconds: int = 60
    stream_output: bool = True


def render(template: dict[str, Any], job_variables: dict[str, Any] | None = None) -> KubernetesJobConfiguration:
    """The job configuration a worker builds from the pool template and a deployment's job variables."""
    return asyncio.run(KubernetesJobConfiguration.from_template_and_values(template, job_variables or {}, client=_NO_CLIENT))


def as_submitted(config: KubernetesJobConfiguration) -> dict[str, Any]:
    """The Job the kubernetes worker submits: its env as a list, args split, a generated name."""
    manifest = copy.deepcopy(config.job_manifest)
    container = manifest["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [{"name": k, "value": v} for k, v in config.env.items()]
    args = container.get("args", "prefect flow-run execute")
    container["args"] = shlex.split(args) if isinstance(args, str) else args
    if manifest["metadata"].get("generateName", "-") == "-":
        manifest["metadata"]["generateName"] = "prefect-job-"
    return manifest


def validate_job(manifest: dict[str, Any], version: str = "1.30") -> None:
    """Strict schema validation of a Job, minus the two pod-spec keys Prefect's worker insists on.

    prefect-kubernetes refuses a template without ``parallelism: 1`` and ``completions: 1`` under
    ``spec.template.spec`` (they belong to the Job spec, where 1 is the default anyway); the API
    server drops them with a warning. Every other field must be known to Kubernetes.
    """
    manifest = copy.deepcopy(manifest)
    pod = manifest["spec"]["template"]["spec"]
    assert (pod.pop("parallelism"), pod.pop("completions")) == (1, 1)
    kubernetes_validate.validate(manifest, version, strict=True)


def main_container(manifest: dict[str, Any]) -> dict[str, Any]:
    """The flow-run container of a rendered Job."""
    return manifest["spec"]["template"]["spec"]["containers"][0]


def tolerates(tolerations: list[dict[str, Any]], key: str, value: str, effect: str = "NoSchedule") -> bool:
    """Kubernetes' toleration matching for one ``key=value:effect`` taint."""
    for t in tolerations:
        if t.get("effect") not in (None, "", effect):
            continue
        operator = t.get("operator", "Equal")
        if not t.get("key") and operator == "Exists":
            return True
        if t.get("key") == key and (operator == "Exists" or t.get("value", "") == value):
            return True
    return False
