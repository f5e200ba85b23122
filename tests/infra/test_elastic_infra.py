"""Elastic engines in the infrastructure: the KubeRay cluster lets Ray's autoscaler add and remove
worker nodes within bounds, and the Grafana dashboard queries the engine controller's metrics by the
names Ray exports them under (offline: the manifests and the dashboard file only)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from nightshift.engine.autoscale import exported_metric_names

ROOT = Path(__file__).resolve().parents[2]
RAYCLUSTER = ROOT / "infra" / "k8s" / "manifests" / "20-raycluster.yaml"
DASHBOARD = ROOT / "infra" / "grafana" / "dashboards" / "nightshift.json"


def _cluster() -> dict:
    (cluster,) = [d for d in yaml.safe_load_all(RAYCLUSTER.read_text()) if d and d["kind"] == "RayCluster"]
    return cluster


def test_kuberay_runs_the_in_tree_autoscaler_within_worker_group_bounds():
    spec = _cluster()["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0  # empty nodes go, once idle that long
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], group["groupName"]
    gpu = [g for g in spec["workerGroupSpecs"] if "num-gpus" in g["rayStartParams"]]
    # Engine replicas are what GPU nodes are for: with none asked for, their groups scale to zero.
    assert gpu and all(g["minReplicas"] == 0 < g["maxReplicas"] for g in gpu)


def test_the_dashboard_queries_the_engine_controller_metrics_by_their_exported_names():
    panels = json.loads(DASHBOARD.read_text())["panels"]
    exprs = [t["expr"] for p in panels for t in p.get("targets", [])]
    used = {name for e in exprs for name in re.findall(r"\bray_nightshift_[a-z_]+", e)}
    assert used == exported_metric_names()
    titles = {p["title"] for p in panels if any("ray_nightshift_engine" in t["expr"] for t in p.get("targets", []))}
    assert titles == {"Engine replicas: target vs running", "Engine scale events (per 5 min)"}
