"""A real batch run pushes its metrics to a real Pushgateway and logs JSON lines with its batch id."""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from nightshift.settings import LogConfig
from nightshift.telemetry.logs import configure_logging
from tests.batchfiles import write_batch

pytestmark = [
    pytest.mark.usefixtures("ray_session", "prefect_api"),
    pytest.mark.skipif(shutil.which("prometheus-pushgateway") is None, reason="needs Debian's prometheus-pushgateway"),
]


@pytest.fixture(scope="module")
def pushgateway(tmp_path_factory: pytest.TempPathFactory):
    from nightshift.services import local_pushgateway

    with local_pushgateway(tmp_path_factory.mktemp("pushgateway")) as url:
        yield url


@pytest.fixture
def mixed_run(tmp_path, engine_env, pushgateway, monkeypatch):
    """The 50-line mixed batch, run by the real flow with metrics pushed and JSON logs to a file."""
    from flows.batch import BatchRunParameters, process_batch

    log_file = tmp_path / "nightshift.log.jsonl"
    monkeypatch.setenv("NIGHTSHIFT_METRICS_PUSHGATEWAY_URL", pushgateway)
    monkeypatch.setenv("NIGHTSHIFT_LOG_FORMAT", "json")
    monkeypatch.setenv("NIGHTSHIFT_LOG_FILE", str(log_file))
    src = tmp_path / "mixed.jsonl"
    write_batch(src, 47, ["invalid_json", "unknown_url", "bad_body"])
    try:
        result = process_batch(BatchRunParameters(input_uri=str(src), batch_id="telemetry-mixed", tier="premium"))
    finally:
        configure_logging(LogConfig())  # back to stderr, text, for the rest of the session
    manifest = json.loads(Path(result.manifest_uri.removeprefix("file://")).read_text())
    return result, manifest, log_file


def _samples(url: str, batch_id: str) -> dict[str, list]:
    """Samples on the Pushgateway's /metrics (what Prometheus scrapes) of one batch's group."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    found = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.labels.get("batch_id") == batch_id and s.labels.get("job") == "nightshift_batch":
                found[s.name].append(s)
    return found


def _value(samples: list, **labels: str) -> float:
    matching = [s.value for s in samples if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matching) == 1, (labels, samples)
    return matching[0]


def test_scraped_metrics_equal_the_manifest(mixed_run, pushgateway):
    result, manifest, _ = mixed_run
    m = _samples(pushgateway, "telemetry-mixed")
    requests = m["nightshift_batch_requests_total"]
    assert _value(requests, status="completed") == 47
    assert _value(requests, status="failed") == 3
    tokens = m["nightshift_batch_tokens_total"]
    assert _value(tokens, kind="prompt") == manifest["usage"]["prompt_tokens"] > 0
    assert _value(tokens, kind="completion") == manifest["usage"]["completion_tokens"] == 47 * 8
    assert _value(m["nightshift_batch_cache_hits_total"]) == manifest["cache"]["hits"]
    assert _value(m["nightshift_batch_size_requests"]) == 50
    # one observation per shard the engine ran, labelled with the served model
    assert _value(m["nightshift_shard_duration_seconds_count"]) == len(manifest["shards"]) == 5
    assert {s.labels["model"] for s in requests} == {manifest["model"]["name"]}
    assert _value(m["nightshift_batch_running"]) == 0 and _value(m["nightshift_batch_at_risk"]) == 0
    assert _value(m["nightshift_batch_sla_slack_seconds"]) == pytest.approx(result.sla.slack_seconds, abs=5)
    assert _value(m["nightshift_batch_duration_seconds"]) > 0


def test_log_lines_are_json_with_the_batch_id(mixed_run):
    result, manifest, log_file = mixed_run
    lines = log_file.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert records and all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    assert all(r["batch_id"] == "telemetry-mixed" and r["flow_run_id"] == result.flow_run_id for r in records)
    shards = {r["shard"] for r in records if r["logger"] == "nightshift.orchestration.watch" and "shard" in r}
    assert shards == {s["name"] for s in manifest["shards"]}
