"""The one-host stack in infra/ fits together: docker-compose.yml renders with the services it
promises, Prometheus scrapes services that exist there, and every metric the Grafana dashboard
queries is one that nightshift exports (the pushed batch metrics and the gateway's /metrics).

Rendering uses `docker compose config` (or Debian's docker-compose 1.29), which interpolates and
validates the file offline: no image is pulled and nothing starts. PromQL and the Prometheus
configuration are checked with `promtool` (Debian's `prometheus` package) when it is installed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from nightshift.api import metrics as api_metrics
from nightshift.telemetry import metrics as batch_metrics

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
COMPOSE_FILE = INFRA / "docker-compose.yml"
PROMETHEUS_FILE = INFRA / "prometheus.yml"
DASHBOARD_FILE = INFRA / "grafana" / "dashboards" / "nightshift.json"
PROVISIONING = INFRA / "grafana" / "provisioning"

SERVICES = {
    "postgres",
    "prefect-server",
    "ray-head",
    "worker-gpu-spot",
    "worker-gpu-dedicated",
    "gateway",
    "pushgateway",
    "prometheus",
    "grafana",
}
# Compose must refuse to start without these; they never get a default in the file.
SECRETS = {
    "POSTGRES_PASSWORD": "pg-test-password",
    "NIGHTSHIFT_API_JWT_SECRET": "jwt-test-secret",
    "GRAFANA_ADMIN_PASSWORD": "grafana-test-password",
}
# Metric names a panel may use without nightshift exporting them, each from a documented source:
# Ray's metrics export port (Ray's node metrics, and vLLM's engine metrics renamed `ray_vllm_*` by
# vLLM's Ray stat logger), and the Pushgateway's own per-group push timestamps (how the dashboard
# tells a killed run, which never pushes running=0, from a live one).
FOREIGN_PREFIXES = ("ray_", "vllm")
PUSHGATEWAY_METRICS = {"push_time_seconds", "push_failure_time_seconds"}
# The families each panel topic needs; the dashboard must query every one of them.
REQUIRED_METRICS = {
    "nightshift_batch_requests_total",  # throughput, error rate
    "nightshift_batch_tokens_total",  # tokens/s
    "nightshift_batch_eta_seconds",
    "nightshift_batch_sla_slack_seconds",
    "nightshift_batch_running",
    "nightshift_batch_cache_hits_total",
    "nightshift_shard_duration_seconds",  # p50/p95
    "nightshift_pool_queue_depth",
    "nightshift_pool_running_runs",
    "nightshift_pool_concurrency_limit",
    "nightshift_pool_workers_online",
    "nightshift_api_requests_total",
}


# -- helpers ------------------------------------------------------------------------------------
def _compose_command() -> list[str] | None:
    """`docker compose` when the plugin works, else Debian's `docker-compose`, else None."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def _run_config(command: list[str], tmp_path: Path, secrets: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`compose config` on the file with exactly ``secrets`` in the environment.

    An empty ``--env-file`` keeps a developer's infra/.env (real secrets) out of the check.
    """
    empty = tmp_path / "empty.env"
    empty.write_text("")
    env = {k: v for k, v in os.environ.items() if k not in SECRETS}
    env.update(secrets)
    return subprocess.run(
        [*command, "--env-file", str(empty), "-f", str(COMPOSE_FILE), "config"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def compose_command() -> list[str]:
    command = _compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is on PATH (Debian: apt-get install docker-compose)")
    return command


@pytest.fixture(scope="module")
def rendered(compose_command: list[str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The compose file as the tool resolves it (anchors merged, variables interpolated)."""
    result = _run_config(compose_command, tmp_path_factory.mktemp("compose"), SECRETS)
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    return path


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):  # list syntax: KEY=value
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {k: v for k, v in env.items() if v is not None}


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command") or []
    return command.split() if isinstance(command, str) else [str(c) for c in command]


def _option(command: list[str], name: str) -> str:
    """The value of ``--name=value`` or ``--name value`` in a command line."""
    for i, arg in enumerate(command):
        if arg.startswith(f"{name}="):
            return arg.split("=", 1)[1]
        if arg == name:
            return command[i + 1]
    raise AssertionError(f"{name} not in {command}")


def _published_ports(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host_ip, published) of each port, from short ("ip:host:container") or long syntax."""
    ports = []
    for port in service.get("ports") or []:
        if isinstance(port, dict):  # docker compose v2 renders the long syntax
            ports.append((port.get("host_ip", ""), str(port.get("published", ""))))
        else:
            parts = str(port).split(":")
            ports.append((parts[0] if len(parts) == 3 else "", parts[-2] if len(parts) >= 2 else ""))
    return ports


def _volume_targets(service: dict[str, Any]) -> dict[str, str]:
    """Container path → host source of each bind mount."""
    mounts = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            mounts[volume["target"]] = str(volume.get("source", ""))
        else:
            source, target = str(volume).split(":")[:2]
            mounts[target] = source
    return mounts


def _prometheus() -> dict[str, Any]:
    return yaml.safe_load(PROMETHEUS_FILE.read_text())


def _targets(job: dict[str, Any]) -> list[str]:
    return [t for sc in job.get("static_configs", []) for t in sc["targets"]]


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD_FILE.read_text())


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in (collapsed) rows."""
    out = []
    for panel in dashboard["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def _exprs(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in _panels(dashboard) for t in p.get("targets", [])]


# -- PromQL metric names ------------------------------------------------------------------------
_TOKEN = re.compile(
    r"""
    (?P<string>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
  | (?P<matchers>\{[^}]*\})
  | (?P<range>\[[^\]]*\])
  | (?P<variable>\$\{?\w+\}?)
  | (?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?(?:ms|[smhdwy])?)
  | (?P<name>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<open>\()
  | (?P<close>\))
  | (?P<other>\S)
    """,
    re.VERBOSE,
)
# Words that take a parenthesised list of label names, which are not metrics.
_LABEL_LIST_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}
# Aggregation operators may stand before their `by (...)` clause, away from their parenthesis.
_AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values", "bottomk", "topk", "quantile"}
_KEYWORDS = _LABEL_LIST_WORDS | _AGGREGATIONS | {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}


def metric_names_in(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, label names, Grafana
    variables, strings and label matchers left out)."""
    tokens = [(m.lastgroup, m.group()) for m in _TOKEN.finditer(expr)]
    names: set[str] = set()
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        following = tokens[i + 1][0] if i + 1 < len(tokens) else None
        if kind == "name" and text.lower() in _LABEL_LIST_WORDS and following == "open":
            depth, i = 0, i + 1
            while i < len(tokens):  # skip the label list
                depth += {"open": 1, "close": -1}.get(tokens[i][0], 0)
                if depth == 0:
                    break
                i += 1
        elif kind == "name" and following != "open" and text.lower() not in _KEYWORDS:
            names.add(text)
        i += 1
    return names


def _known(name: str, exported: set[str]) -> bool:
    """Whether a queried name is exported, or a series of an exported histogram.

    ``metric_names()`` gives family names only; a histogram family's series carry a suffix. Counter
    families end in ``_total`` and cannot be histograms, so ``x_total_bucket`` stays unknown.
    """
    if name in exported or name in PUSHGATEWAY_METRICS or name.startswith(FOREIGN_PREFIXES):
        return True
    base = re.sub(r"(_bucket|_sum|_count)$", "", name)
    return base != name and base in exported and not base.endswith("_total")


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """What nightshift exports: pushed by batch runs, and scraped from the gateway."""
    return batch_metrics.metric_names() | api_metrics.metric_names()


# -- docker-compose.yml -------------------------------------------------------------------------
def test_compose_file_renders_with_every_service(rendered):
    assert set(rendered["services"]) >= SERVICES, SERVICES - set(rendered["services"])


def test_compose_refuses_to_render_without_each_secret(compose_command, tmp_path):
    raw = COMPOSE_FILE.read_text()
    for name in SECRETS:
        # Only `${NAME:?message}` references: no default value, no literal secret in the file.
        references = re.findall(rf"\$\{{{name}([^}}]*)\}}", raw)
        assert references and all(r.startswith(":?") for r in references), (name, references)
        result = _run_config(compose_command, tmp_path, {k: v for k, v in SECRETS.items() if k != name})
        assert result.returncode != 0
        assert name in result.stderr


def test_compose_binds_every_host_port_to_loopback(rendered):
    for name, service in rendered["services"].items():
        for host_ip, published in _published_ports(service):
            assert host_ip == "127.0.0.1", (name, host_ip, published)


def test_prefect_server_runs_on_postgres_15(rendered):
    services = rendered["services"]
    assert services["postgres"]["image"].split(":")[1].split(".")[0] == "15"
    env = _env(services["prefect-server"])
    url = urlsplit(env["PREFECT_API_DATABASE_CONNECTION_URL"])
    assert (url.scheme, url.hostname, url.password) == ("postgresql+asyncpg", "postgres", SECRETS["POSTGRES_PASSWORD"])
    assert _command(services["prefect-server"])[:3] == ["prefect", "server", "start"]
    assert env["PREFECT_SERVER_METRICS_ENABLED"] == "true"


def test_nightshift_services_share_one_image_built_from_infra_dockerfile(rendered):
    services = rendered["services"]
    nightshift = ["prefect-server", "ray-head", "worker-gpu-spot", "worker-gpu-dedicated", "gateway"]
    images = {services[name]["image"] for name in nightshift}
    assert len(images) == 1, images
    for name in nightshift:
        assert Path(services[name]["build"]["context"]).resolve() == ROOT
        assert services[name]["build"]["dockerfile"] == "infra/Dockerfile"
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.MULTILINE)
    assert "pip uninstall -y torchvision torchaudio torchcodec" in dockerfile


@pytest.mark.parametrize("pool", ["gpu-spot", "gpu-dedicated"])
def test_one_process_worker_per_pool_joins_the_ray_head(rendered, pool):
    services = rendered["services"]
    worker = services[f"worker-{pool}"]
    command = _command(worker)
    assert command[:3] == ["prefect", "worker", "start"]
    assert (_option(command, "--pool"), _option(command, "--type")) == (pool, "process")
    address = urlsplit(_env(worker)["NIGHTSHIFT_RAY_ADDRESS"])
    ray_head = _command(services["ray-head"])
    assert (address.scheme, address.hostname) == ("ray", "ray-head")
    assert str(address.port) == _option(ray_head, "--ray-client-server-port")
    assert _env(worker)["PREFECT_API_URL"] == "http://prefect-server:4200/api"


def test_deploy_time_variables_of_prefect_yaml_are_set_where_deployments_are_registered(rendered):
    """prefect.yaml's `{{ $VAR }}` in job variables are resolved by `prefect deploy`, not by workers."""
    register = rendered["services"]["register"]
    assert "prefect --no-prompt deploy --all" in " ".join(_command(register))
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    used = set()
    for deployment in deployments:
        used |= set(re.findall(r"\{\{\s*\$(\w+)\s*\}\}", json.dumps(deployment.get("work_pool", {}))))
    assert used, "prefect.yaml no longer reads any deploy-time variable: update this test"
    env = _env(register)
    for name in used:
        assert env.get(name, "").startswith("ray://ray-head:"), name


def test_gateway_serves_on_all_interfaces_with_its_own_database(rendered):
    gateway = rendered["services"]["gateway"]
    command = _command(gateway)
    assert command[:2] == ["nightshift", "serve"]
    assert _option(command, "--host") == "0.0.0.0"
    env = _env(gateway)
    url = urlsplit(env["NIGHTSHIFT_API_DATABASE_URL"])
    assert (url.scheme, url.hostname, url.path) == ("postgresql+asyncpg", "postgres", "/nightshift")
    assert env["NIGHTSHIFT_API_JWT_SECRET"] == SECRETS["NIGHTSHIFT_API_JWT_SECRET"]
    assert urlsplit(env["NIGHTSHIFT_METRICS_PUSHGATEWAY_URL"]).hostname == "pushgateway"


def test_prometheus_and_grafana_mount_the_files_in_infra(rendered):
    services = rendered["services"]
    prometheus = _volume_targets(services["prometheus"])
    assert Path(prometheus["/etc/prometheus/prometheus.yml"]).resolve() == PROMETHEUS_FILE
    grafana = _volume_targets(services["grafana"])
    assert Path(grafana["/etc/grafana/provisioning"]).resolve() == PROVISIONING
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "nightshift.yml").read_text())["providers"][0]
    dashboards_dir = provider["options"]["path"]
    assert Path(grafana[dashboards_dir]).resolve() == DASHBOARD_FILE.parent


def test_grafana_datasource_points_at_the_prometheus_service_the_dashboard_defaults_to(rendered):
    datasource = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert datasource["type"] == "prometheus"
    assert urlsplit(datasource["url"]).hostname in rendered["services"]
    variable = next(v for v in _dashboard()["templating"]["list"] if v["name"] == "datasource")
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    assert variable["current"]["value"] == datasource["uid"]


# -- prometheus.yml -----------------------------------------------------------------------------
def test_prometheus_scrapes_only_services_of_the_compose_file(rendered):
    config = _prometheus()
    jobs = config["scrape_configs"]
    assert len({j["job_name"] for j in jobs}) == len(jobs)
    for job in jobs:
        for target in _targets(job):
            host = target.rsplit(":", 1)[0]
            assert host in rendered["services"], (job["job_name"], target)


def test_prometheus_targets_match_the_ports_the_services_listen_on(rendered):
    jobs = {j["job_name"]: j for j in _prometheus()["scrape_configs"]}
    services = rendered["services"]
    assert _targets(jobs["nightshift-gateway"]) == [f"gateway:{_option(_command(services['gateway']), '--port')}"]
    assert jobs["pushgateway"]["honor_labels"] is True
    assert _targets(jobs["pushgateway"]) == ["pushgateway:9091"]
    ray_metrics_port = _option(_command(services["ray-head"]), "--metrics-export-port")
    assert _targets(jobs["ray"]) == [f"ray-head:{ray_metrics_port}"]
    # Prefect 3.6 serves /api/metrics only with PREFECT_SERVER_METRICS_ENABLED (checked above).
    assert jobs["prefect-server"]["metrics_path"] == "/api/metrics"
    assert _targets(jobs["prefect-server"]) == ["prefect-server:4200"]


def test_prometheus_config_passes_promtool(promtool):
    result = subprocess.run([promtool, "check", "config", str(PROMETHEUS_FILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# -- the Grafana dashboard ----------------------------------------------------------------------
def test_dashboard_is_a_grafana_dashboard_model():
    dashboard = _dashboard()
    assert {"title", "uid", "panels", "schemaVersion", "templating", "time"} <= set(dashboard)
    assert dashboard["schemaVersion"] >= 39
    panels = _panels(dashboard)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    boxes = []
    for panel in panels:
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("x", "y", "w", "h")), panel["title"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        boxes.append((panel["title"], grid))
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"] == panel["datasource"], panel["title"]
    # Overlapping panels are silently re-laid out by Grafana: keep the grid honest.
    for i, (title_a, a) in enumerate(boxes):
        for title_b, b in boxes[i + 1 :]:
            apart = (
                a["x"] + a["w"] <= b["x"] or b["x"] + b["w"] <= a["x"] or a["y"] + a["h"] <= b["y"] or b["y"] + b["h"] <= a["y"]
            )
            assert apart, (title_a, title_b)


def test_every_metric_in_the_dashboard_is_exported_by_nightshift(exported):
    unknown = {
        (title, name) for title, expr in _exprs(_dashboard()) for name in metric_names_in(expr) if not _known(name, exported)
    }
    assert not unknown, f"panels query metrics nightshift does not export: {sorted(unknown)}"


def test_dashboard_covers_every_panel_topic(exported):
    used = {name for _, expr in _exprs(_dashboard()) for name in metric_names_in(expr)}
    used |= {re.sub(r"(_bucket|_sum|_count)$", "", name) for name in used}
    assert exported >= REQUIRED_METRICS, REQUIRED_METRICS - exported
    assert used >= REQUIRED_METRICS, REQUIRED_METRICS - used
    titles = " ".join(p["title"].lower() for p in _panels(_dashboard()))
    for topic in ("requests/s", "tokens/s", "eta", "slack", "error rate", "queue depth", "concurrency limit", "workers online"):
        assert topic in titles, topic
    assert "cache hit" in titles and "p50" in titles and "p95" in titles and "api requests" in titles


def test_dashboard_queries_are_valid_promql(promtool, tmp_path):
    """promtool parses each expression as a recording rule (Grafana's variables substituted)."""
    substitutions = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "6h", "$pool": ".*", "$tier": ".*"}
    rules = []
    for i, (_, expr) in enumerate(_exprs(_dashboard())):
        for variable, value in substitutions.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, expr
        rules.append({"record": f"nightshift:dashboard_query:{i}", "expr": expr})
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (le, pool) (rate(a_bucket{pool=~"$pool"}[$__rate_interval]))', {"a_bucket"}),
        ("histogram_quantile(0.95, sum by (le) (rate(b_bucket[5m])))", {"b_bucket"}),
        ("x and on (batch_id) (y == 1) unless ignoring (job) z", {"x", "y", "z"}),
        ('count(q{s="by (x)"} == 1) or vector(0) * 1e-9', {"q"}),
        ("r * on (p) group_left (kind) t offset 5m", {"r", "t"}),
    ],
)
def test_metric_names_in_reads_promql(expr, names):
    assert metric_names_in(expr) == names


def test_a_misspelt_metric_is_caught(exported):
    assert not _known("nightshift_batch_request_total", exported)
    assert not _known("nightshift_api_requests_total_bucket", exported)
    assert _known("nightshift_shard_duration_seconds_bucket", exported)
