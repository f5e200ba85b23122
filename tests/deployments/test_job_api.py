"""The native job API on a live gateway (loopback), over real flow runs on the stack's workers:
URL and inline inputs, what is refused before anything is fetched, tiers, and priority."""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from uuid import UUID

import httpx
import openai
import pytest

from nightshift.services import free_port, stop_process_group
from tests.batchfiles import chat_line, write_batch
from tests.deployments.gateways import cli, start_gateway

TERMINAL = ("completed", "failed", "expired", "cancelled")
PROMPTS = ["Tell me about the sea.", "Name a red fox.", "Winter light is", "Old trains go", "Bread is made of"]


@pytest.fixture(scope="module")
def gateway(stack, tmp_path_factory, s3_endpoint):
    import s3fs

    home = tmp_path_factory.mktemp("jobs-gateway")
    allowed = home / "allowed"
    allowed.mkdir()
    # acme's own bucket, opened to it by the operator (s3 inputs are refused unless allowed per org)
    bucket = f"s3://acme-in-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True).mkdir(bucket.removeprefix("s3://"))
    env = {
        **stack["env"],
        "NIGHTSHIFT_API_DATABASE_URL": f"sqlite+aiosqlite:///{home / 'gateway.db'}",
        "NIGHTSHIFT_API_S3_INPUT_PREFIXES": json.dumps({"acme-jobs": [f"{bucket}/in/"]}),
        "NIGHTSHIFT_API_ALLOWED_FILE_ROOTS": json.dumps([str(allowed)]),
        "NIGHTSHIFT_API_ALLOWED_HTTPS_HOSTS": json.dumps(["data.example.test"]),
        "NIGHTSHIFT_API_MAX_INLINE_ITEMS": "10",
    }
    keys = {
        "acme": cli(env, "keys", "create", "--org", "acme-jobs", "--tier", "premium").strip().splitlines()[-1],
        "globex": cli(env, "keys", "create", "--org", "globex-jobs", "--tier", "free").strip().splitlines()[-1],
    }
    port = free_port()
    proc = start_gateway(env, port, home / "gateway.log")
    yield {"url": f"http://127.0.0.1:{port}", "keys": keys, "allowed": allowed, "env": env, "bucket": bucket}
    stop_process_group(proc)


def _http(gateway, org: str = "acme") -> httpx.Client:
    return httpx.Client(base_url=gateway["url"], headers={"Authorization": f"Bearer {gateway['keys'][org]}"}, timeout=60)


def _wait(client: httpx.Client, job_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] not in TERMINAL:
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    return job


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_s3_job_completes_and_its_results_download_over_http(gateway, tmp_path):
    import s3fs

    src = tmp_path / "candidates.jsonl"
    nonce = uuid.uuid4().hex[:8]  # new prompts: the engine answers them, not the request cache
    with src.open("w") as f:
        for i in range(6):
            line = chat_line(i, max_tokens=4)
            line["body"]["messages"][0]["content"] += f" ({nonce})"
            f.write(json.dumps(line) + "\n")
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": gateway["env"]["NIGHTSHIFT_STORAGE_ENDPOINT_URL"]})
    s3_bucket = gateway["bucket"]
    fs.put(str(src), f"{s3_bucket}/in/candidates.jsonl")

    with _http(gateway) as client:
        created = client.post("/v1/jobs", json={"input_file_url": f"{s3_bucket}/in/candidates.jsonl"})
        assert created.status_code == 200, created.text
        job = created.json()
        assert job["status"] == "validating" and job["job_id"].startswith("batch_")
        assert job["deadline_at"] and job["estimated_completion"] and job["priority"] == "normal"

        done = _wait(client, job["job_id"])
        assert done["status"] == "completed"
        assert done["progress"] == {"completed": 6, "failed": 0, "total": 6, "percent": 100.0}
        assert done["sla"]["tier"] == "premium" and done["version"] and done["pool"] in ("gpu-spot", "gpu-dedicated")
        assert done["throughput"]["req_per_sec"] > 0

        results = client.get(f"/v1/jobs/{job['job_id']}/results").json()
        assert results["errors_url"] is None and results["expires_at"]
        output = client.get(results["results_url"])  # the gateway's download link (local store)
        assert output.status_code == 200
        rows = _lines(output.text)
        assert sorted(r["custom_id"] for r in rows) == [f"req-{i:03d}" for i in range(6)]
        stats = results["stats"]
        assert (stats["total"], stats["successful"], stats["failed"]) == (6, 6, 0)
        assert stats["usage"]["completion_tokens"] == sum(r["response"]["body"]["usage"]["completion_tokens"] for r in rows)
        assert stats["avg_latency_s"] > 0 and stats["cost"]["usd"] > 0

    # the same object through the OpenAI API, with the same counts
    batch = openai.OpenAI(base_url=f"{gateway['url']}/v1", api_key=gateway["keys"]["acme"]).batches.retrieve(job["job_id"])
    assert batch.status == "completed"
    assert batch.request_counts.model_dump() == {"total": 6, "completed": 6, "failed": 0}


def test_inline_job_matches_the_same_prompts_sent_as_a_batch_file(gateway, tmp_path):
    items = [{"custom_id": f"p{i}", "prompt": p} for i, p in enumerate(PROMPTS)]
    with _http(gateway) as client:
        created = client.post(
            "/v1/jobs", json={"input": items, "max_tokens": 8, "temperature": 0, "sla_tier": "basic", "metadata": {"team": "qa"}}
        )
        assert created.status_code == 200, created.text
        job = _wait(client, created.json()["job_id"])
        assert job["status"] == "completed" and job["sla"]["tier"] == "basic"  # below the key's premium: allowed
        inline = _lines(client.get(client.get(f"/v1/jobs/{job['job_id']}/results").json()["results_url"]).text)

    # The batch file: the same prompts, greedy, plus a no-op top_p so that the request cache (keyed
    # on the body) cannot answer them from the inline job: the engine computes both.
    src = tmp_path / "same.jsonl"
    with src.open("w") as f:
        for item in items:
            body = {"model": "tiny", "messages": [{"role": "user", "content": item["prompt"]}], "max_tokens": 8}
            body.update(temperature=0, top_p=1.0)
            f.write(json.dumps({"custom_id": item["custom_id"], "method": "POST", "url": "/v1/chat/completions", "body": body}))
            f.write("\n")
    oai = openai.OpenAI(base_url=f"{gateway['url']}/v1", api_key=gateway["keys"]["acme"], max_retries=0)
    batch = oai.batches.create(
        input_file_id=oai.files.create(file=src.open("rb"), purpose="batch").id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
    )
    deadline = time.monotonic() + 300
    while (batch := oai.batches.retrieve(batch.id)).status not in TERMINAL:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    as_file = _lines(oai.files.content(batch.output_file_id).text)

    def answers(rows):
        return {r["custom_id"]: r["response"]["body"]["choices"][0]["message"]["content"] for r in rows}

    assert answers(inline) == answers(as_file) and len(answers(inline)) == 5
    # ... and the batch is a job too, with the same counts
    with _http(gateway) as client:
        as_job = client.get(f"/v1/jobs/{batch.id}").json()
    assert as_job["progress"]["total"] == batch.request_counts.total == 5
    assert as_job["progress"]["completed"] == batch.request_counts.completed == 5


class _Listener:
    """A loopback HTTP server that counts every request reaching it."""

    def __init__(self) -> None:
        calls = self.calls = []

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                calls.append(self.path)
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b'{"custom_id": "x"}\n')

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_disallowed_input_urls_are_refused_and_nothing_is_fetched(gateway, tmp_path):
    listener = _Listener()
    outside = tmp_path / "outside.jsonl"
    write_batch(outside, 2)
    allowed = gateway["allowed"]
    urls = [
        f"http://127.0.0.1:{listener.port}/in.jsonl",  # not https
        f"https://127.0.0.1:{listener.port}/in.jsonl",  # host not on the allow-list
        f"ftp://127.0.0.1:{listener.port}/in.jsonl",
        f"file://{outside}",  # outside the allowed root
        f"file://{allowed}/../{outside.name}",  # climbing out of it
        "https://user:pw@data.example.test/in.jsonl",  # credentials
        "s3://",  # no bucket
    ]
    try:
        with _http(gateway) as client:
            for url in urls:
                response = client.post("/v1/jobs", json={"input_file_url": url})
                assert response.status_code == 400, (url, response.text)
                error = response.json()["error"]
                assert error["param"] == "input_file_url" and "input_file_url" in error["message"], error
            # neither both sources nor none
            assert client.post("/v1/jobs", json={"input": [{"prompt": "hi"}], "input_file_url": "s3://b/k"}).status_code == 400
            assert client.post("/v1/jobs", json={}).status_code == 400
            too_many = client.post("/v1/jobs", json={"input": [{"prompt": "hi"}] * 11})
            assert too_many.status_code == 400 and too_many.json()["error"]["param"] == "input"
    finally:
        listener.server.shutdown()
    assert listener.calls == []


def test_sla_tier_above_the_keys_tier_is_forbidden(gateway):
    with _http(gateway, "globex") as client:  # a free-tier key
        response = client.post("/v1/jobs", json={"input": [{"prompt": "hi"}], "sla_tier": "premium"})
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "tier_exceeded"


def test_high_priority_job_starts_before_a_low_one_that_waited_longer(gateway):
    """Both jobs wait on spot in the same tier (their queues paused), then one slot opens: the
    worker takes the high one first although the low one was submitted first."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolUpdate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from deployments.pools import apply_pools, load_pools

    api = gateway["env"]["PREFECT_API_URL"]
    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as prefect:
        queues = {name: prefect.read_work_queue_by_name(name, work_pool_name="gpu-spot") for name in ("low", "high")}
        for queue in queues.values():
            prefect.update_work_queue(queue.id, is_paused=True)
        try:
            jobs, runs = {}, {}
            with _http(gateway) as client:
                for priority in ("low", "high"):  # low first: it has waited longer
                    items = [{"prompt": f"{priority} job, item {i}"} for i in range(3)]
                    created = client.post("/v1/jobs", json={"input": items, "max_tokens": 4, "metadata": {"priority": priority}})
                    assert created.status_code == 200, created.text
                    jobs[priority] = created.json()
                    assert jobs[priority]["pool"] == "gpu-spot" and jobs[priority]["priority"] == priority
                    flow_run_id = client.get(f"/v1/batches/{jobs[priority]['job_id']}").json()["nightshift"]["flow_run_id"]
                    runs[priority] = UUID(flow_run_id)
                    time.sleep(1)
            assert {p: prefect.read_flow_run(r).work_queue_name for p, r in runs.items()} == {"low": "low", "high": "high"}
            time.sleep(3)  # a worker poll or two: nothing may start from a paused queue
            assert {prefect.read_flow_run(r).state.type.value for r in runs.values()} == {"SCHEDULED"}

            # One free slot; the low queue opens first, so any race favours the low job.
            prefect.update_work_pool("gpu-spot", WorkPoolUpdate(concurrency_limit=1))
            prefect.update_work_queue(queues["low"].id, is_paused=False)
            prefect.update_work_queue(queues["high"].id, is_paused=False)
            deadline = time.monotonic() + 120
            while True:  # the first to leave Scheduled is the one the worker took
                states = {p: prefect.read_flow_run(r).state.type.value for p, r in runs.items()}
                started = {p for p, s in states.items() if s != "SCHEDULED"}
                if started:
                    break
                assert time.monotonic() < deadline, states
                time.sleep(0.2)
            assert started == {"high"}, states
        finally:
            for queue in queues.values():
                prefect.update_work_queue(queue.id, is_paused=False)
            apply_pools(load_pools())  # back to the declared limit
    with _http(gateway) as client:
        assert _wait(client, jobs["high"]["job_id"])["status"] == "completed"
        assert _wait(client, jobs["low"]["job_id"])["status"] == "completed"
