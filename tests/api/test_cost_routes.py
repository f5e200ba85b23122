"""Cost and estimate through the gateway in-process (httpx ASGITransport): ``POST /v1/batches/estimate``
is a dry run of ``POST /v1/batches``, and a published batch's cost shows on its batch object and
job stats. Real SQLite and local store; only the orchestrator is scripted."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest

from nightshift.core.artifacts import FileRecord, Manifest, ModelRecord, RequestCounts
from nightshift.core.catalogue import EngineHourPrices
from nightshift.core.cost import engine_cost
from nightshift.core.estimate import count_lines, estimate_batch, throughput_basis
from nightshift.core.placement import Placement, PoolThroughput, ThroughputSample
from nightshift.core.protocol import Endpoint, Usage
from nightshift.storage.pools import record_throughput
from tests.api.gateway_app import Gateway, ScriptedOrchestrator, run_gateway, settings_for


def _lines(n: int, max_tokens: int = 20) -> bytes:
    body = lambda i: {"messages": [{"role": "user", "content": f"question {i:04d}"}], "max_tokens": max_tokens}  # noqa: E731
    return b"".join(
        json.dumps({"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions", "body": body(i)}).encode() + b"\n"
        for i in range(n)
    )


def _estimate(gw: Gateway, file_id: str, **extra):
    body = {"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h", **extra}
    return gw.client.post("/v1/batches/estimate", headers=gw.auth(), json=body)


def test_estimate_is_a_dry_run_on_the_models_history_or_the_stated_default(tmp_path):
    async def body(gw: Gateway) -> None:
        file_id = (await gw.upload(_lines(30))).json()["id"]
        model = gw.settings.catalogue().default
        price = gw.settings.catalogue().price(model, "spot")

        r = await _estimate(gw, file_id)
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["object"] == "batch.estimate" and got["input_file_id"] == file_id
        est = got["estimate"]
        # "user" + "question 00NN" = 17 characters → 5 tokens a line; completion bound: 20 a line
        assert (est["requests"], est["prompt_tokens"], est["completion_tokens"]) == (30, 30 * 5, 30 * 20)
        assert est["model"] == model and est["placement"]["pool"] == "gpu-spot" and est["placement"]["kind"] == "spot"
        assert est["confidence"] == "default" and est["basis_batches"] == 0
        assert "pools.spot_requests_per_second = 5 req/s" in est["basis"]
        assert est["eta_seconds"] == pytest.approx(30 / 5.0)
        assert est["cost"]["usd"] == pytest.approx(est["engine_hours"] * price) and est["cost"]["pool"] == "spot"
        assert est["cost"]["spot_saving_usd"] > 0
        assert gw.orchestrator.submits == [] and await gw.rows() == []  # nothing started, nothing recorded

        # Two finished batches of this model on spot measured 2 req/s: the next estimate stands on them.
        at = datetime(2030, 1, 1, tzinfo=UTC)
        for _ in range(2):
            record_throughput(gw.app.state.store, "gpu-spot", model, ThroughputSample(at=at, requests=20, seconds=10))
        record_throughput(gw.app.state.store, "gpu-spot", "another-model", ThroughputSample(at=at, requests=1, seconds=100))
        est = (await _estimate(gw, file_id)).json()["estimate"]
        assert est["confidence"] == "measured" and est["basis_batches"] == 2 and est["requests_per_second"] == 2.0
        assert est["eta_seconds"] == pytest.approx(15.0) and "last 2 batches" in est["basis"]

        # The same checks as a create: the file must be the caller's, the endpoint and window served.
        assert (await _estimate(gw, "file-nope")).status_code == 404
        other = await gw.client.post(
            "/v1/batches/estimate",
            headers=gw.auth("globex"),
            json={"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
        )
        assert other.status_code == 404
        bad = await _estimate(gw, file_id, endpoint="/v1/images")
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "endpoint"
        window = await _estimate(gw, file_id, completion_window="1m")
        assert window.status_code == 400 and window.json()["error"]["param"] == "completion_window"

    run_gateway(settings_for(tmp_path), body)


def test_estimate_without_the_orchestrator_is_a_503_that_names_nothing_inside(tmp_path):
    orchestrator = ScriptedOrchestrator(fail=httpx.ConnectError("[Errno 111] Connection refused to /srv/prefect"))

    async def body(gw: Gateway) -> None:
        file_id = (await gw.upload(_lines(2))).json()["id"]
        r = await _estimate(gw, file_id)
        assert r.status_code == 503 and "Errno" not in r.text and "/srv" not in r.text

    run_gateway(settings_for(tmp_path), body, orchestrator=orchestrator)


def test_a_published_batchs_cost_shows_on_the_batch_object_and_the_job_stats(tmp_path):
    settings = settings_for(tmp_path)
    count = count_lines(_lines(2).splitlines(), default_max_tokens=1, max_model_len=64)
    basis = throughput_basis(PoolThroughput(pool="gpu-spot"), model="m", default_rps=5.0, default_setting="pools.x")
    placement = Placement(pool="gpu-spot", kind="spot", reason="scripted", estimated_seconds=0.4, remaining_seconds=3600)
    forecast = estimate_batch(
        count, model="m", catalogue=settings.catalogue(), placement=placement, basis=basis, replicas=1, made_at=datetime.now(UTC)
    )

    async def body(gw: Gateway) -> None:
        file_id = (await gw.upload(_lines(2))).json()["id"]
        batch = (await gw.create_batch(file_id)).json()
        assert batch["nightshift"]["cost"] is None  # not run yet

        store = gw.app.state.store
        paths = store.batch(batch["id"], "v1")
        for path in (paths.output, paths.errors):
            store.write_bytes(path, b"")
        record = FileRecord(path=store.uri(paths.output), sha256="0" * 64, bytes=0, lines=0)
        cost = engine_cost(engine_seconds=90.0, model="m", pool="spot", prices=EngineHourPrices(spot=0.2, dedicated=0.5))
        now = datetime.now(UTC)
        manifest = Manifest(
            batch_id=batch["id"], version="v1", endpoint=Endpoint.CHAT_COMPLETIONS, created_at=now, completed_at=now,
            input=record, model=ModelRecord(name="m", source="m", sha256="0" * 64), engine={}, engine_params_in_version={},
            shards=[], output_file=record, error_file=record, request_counts=RequestCounts(total=2, completed=2, failed=0),
            usage=Usage(), cost=cost,
        )  # fmt: skip
        store.write_bytes(paths.manifest, manifest.to_json())

        done = (await gw.client.get(f"/v1/batches/{batch['id']}", headers=gw.auth())).json()
        assert done["status"] == "completed"
        shown = done["nightshift"]["cost"]
        assert shown["engine_seconds"] == 90.0 and shown["pool"] == "spot"
        assert shown["usd"] == pytest.approx(90 / 3600 * 0.2) and shown["spot_saving_usd"] == pytest.approx(90 / 3600 * 0.3)
        assert done["nightshift"]["estimate"] == json.loads(forecast.model_dump_json())  # kept from placement
        stats = (await gw.client.get(f"/v1/jobs/{batch['id']}/results", headers=gw.auth())).json()["stats"]
        assert stats["cost"]["usd"] == pytest.approx(shown["usd"]) and stats["cost"]["capacity"] == "spot"
        assert stats["cost"]["engine_seconds"] == 90.0 and stats["cost"]["price_per_engine_hour"] == 0.2

    run_gateway(settings, body, orchestrator=ScriptedOrchestrator(estimate=forecast))
