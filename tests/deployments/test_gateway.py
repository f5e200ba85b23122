"""The gateway, live on loopback, driven by the unchanged official `openai` client against real
flow runs on the stack's workers (tiny model)."""

from __future__ import annotations

import json
import time

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletion
from prometheus_client.parser import text_string_to_metric_families

from nightshift.services import free_port, stop_process_group
from tests.batchfiles import write_batch
from tests.deployments.gateways import cli as _cli
from tests.deployments.gateways import start_gateway as _start

TERMINAL = ("completed", "failed", "expired", "cancelled")


@pytest.fixture(scope="module")
def gateway(stack, tmp_path_factory):
    home = tmp_path_factory.mktemp("gateway")
    env = {
        **stack["env"],
        "NIGHTSHIFT_API_DATABASE_URL": f"sqlite+aiosqlite:///{home / 'gateway.db'}",
        "NIGHTSHIFT_API_JWT_SECRET": "test-secret-for-hs256-tokens-0123456789",
        "NIGHTSHIFT_API_FREE_REQUESTS_PER_HOUR": "6",
        "NIGHTSHIFT_LIMITS_MAX_LINES": "100",  # the gateway's upload limit (the workers keep their own)
        # The operator's side: acme may run SLA drills, and the loopback webhook receiver is allowed.
        "NIGHTSHIFT_API_DRILL_ORGS": '["acme"]',
        "NIGHTSHIFT_API_WEBHOOK_ALLOW_HTTP": "true",
        "NIGHTSHIFT_API_EGRESS_ALLOWED_HOSTS": '["127.0.0.1"]',
        "NIGHTSHIFT_API_TRACK_SECONDS": "2",
        "NIGHTSHIFT_API_KEY_CACHE_SECONDS": "1",
    }
    acme = _cli(env, "keys", "create", "--org", "acme", "--tier", "premium").strip().splitlines()[-1]
    globex = _cli(env, "keys", "create", "--org", "globex", "--tier", "free").strip().splitlines()[-1]
    port = free_port()
    state = {"env": env, "port": port, "log": home / "gateway.log", "keys": {"acme": acme, "globex": globex}}
    state["proc"] = _start(env, port, state["log"])
    yield state
    stop_process_group(state["proc"])


def _client(gateway, org: str = "acme", **kw) -> openai.OpenAI:
    key = kw.pop("api_key", None) or gateway["keys"][org]
    return openai.OpenAI(base_url=f"http://127.0.0.1:{gateway['port']}/v1", api_key=key, max_retries=0, **kw)


def _wait(client: openai.OpenAI, batch_id: str, timeout: float = 300, until=TERMINAL):
    deadline = time.monotonic() + timeout
    while (b := client.batches.retrieve(batch_id)).status not in until:
        assert time.monotonic() < deadline, b
        time.sleep(0.5)
    return b


def _create(client: openai.OpenAI, path, **metadata: str):
    """Upload ``path`` and create a chat batch from it (metadata as given)."""
    uploaded = client.files.create(file=path.open("rb"), purpose="batch")
    return client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h", metadata=metadata or None
    )


def _insert_batch(gateway, **fields):
    """Write an acme batch row straight into the gateway's database (states a run cannot easily
    be driven into on demand); returns its id."""
    import asyncio

    from nightshift.api import db

    async def insert() -> str:
        database = db.Database(gateway["env"]["NIGHTSHIFT_API_DATABASE_URL"])
        try:
            async with database.session() as session:
                org = await db.get_org_by_name(session, "acme")
                row = await db.add_batch(
                    session, org_id=org.id, endpoint="/v1/chat/completions", completion_window="24h", tier="premium", **fields
                )
                return row.id
        finally:
            await database.dispose()

    return asyncio.run(insert())


def test_openai_client_runs_a_batch_end_to_end(gateway, tmp_path):
    client = _client(gateway)
    src = tmp_path / "requests.jsonl"
    write_batch(src, 9, ["unknown_url"], max_tokens=6)
    uploaded = client.files.create(file=src.open("rb"), purpose="batch")
    assert (uploaded.purpose, uploaded.bytes, uploaded.status) == ("batch", src.stat().st_size, "processed")
    assert client.files.content(uploaded.id).content == src.read_bytes()

    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h", metadata={"job": "e2e"}
    )
    assert batch.status == "validating" and batch.metadata == {"job": "e2e"}
    done = _wait(client, batch.id)
    assert done.status == "completed", done
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (10, 9, 1)
    assert done.completed_at >= done.created_at and done.usage.output_tokens == 9 * 6

    out = [json.loads(line) for line in client.files.content(done.output_file_id).text.splitlines()]
    err = [json.loads(line) for line in client.files.content(done.error_file_id).text.splitlines()]
    assert [o["custom_id"] for o in out] == [f"req-{i:03d}" for i in range(9)]
    for line in out:
        ChatCompletion.model_validate(line["response"]["body"])  # the client's own type
    assert [e["custom_id"] for e in err] == ["bad-url"]
    extra = done.model_extra["nightshift"]
    assert extra["tier"] == "premium" and extra["pool"] in ("gpu-spot", "gpu-dedicated") and extra["version"]

    # Another org sees none of it.
    other = _client(gateway, "globex")
    with pytest.raises(openai.NotFoundError):
        other.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        other.files.content(uploaded.id)


def test_cancel_mid_run_publishes_partial_results(gateway, tmp_path):
    client = _client(gateway)
    src = tmp_path / "cancel.jsonl"
    write_batch(src, 40, max_tokens=5)  # 8 shards of 5
    batch = _create(client, src, nightshift_drill_slow_shards_seconds="3")
    deadline = time.monotonic() + 120
    while (b := client.batches.retrieve(batch.id)).request_counts.completed == 0:
        assert b.status in ("validating", "in_progress") and time.monotonic() < deadline, b
        time.sleep(0.3)
    assert client.batches.cancel(batch.id).status == "cancelling"
    done = _wait(client, batch.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    out = client.files.content(done.output_file_id).text.splitlines()
    err = [json.loads(line) for line in client.files.content(done.error_file_id).text.splitlines()]
    assert 0 < len(out) < 40 and len(out) + len(err) == 40
    assert {e["error"]["code"] for e in err} == {"batch_cancelled"}
    ids = sorted([json.loads(x)["custom_id"] for x in out] + [e["custom_id"] for e in err])
    assert ids == [f"req-{i:03d}" for i in range(40)]

    page = client.batches.list(limit=1)
    assert len(page.data) == 1 and page.has_more and page.data[0].id == batch.id  # newest first
    rest = client.batches.list(limit=10, after=batch.id)
    assert batch.id not in [b.id for b in rest.data] and rest.data


def test_errors_speak_openai(gateway, tmp_path):
    with pytest.raises(openai.AuthenticationError):
        _client(gateway, api_key="ns-not-a-key").files.list()
    no_key = httpx.get(f"http://127.0.0.1:{gateway['port']}/v1/files")
    assert no_key.status_code == 401 and no_key.json()["error"]["code"] == "invalid_api_key"
    client = _client(gateway)
    bad = tmp_path / "notes.txt"
    bad.write_text("this is not\na batch file\n")
    with pytest.raises(openai.BadRequestError, match="no line is a JSON object"):
        client.files.create(file=bad.open("rb"), purpose="batch")
    good = tmp_path / "ok.jsonl"
    write_batch(good, 2)
    uploaded = client.files.create(file=good.open("rb"), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="unsupported endpoint"):
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/images/generations", completion_window="24h")
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-doesnotexist", endpoint="/v1/chat/completions", completion_window="24h")


def test_tokens_limits_and_rate_limits(gateway, tmp_path):
    import jwt as pyjwt

    env, base = gateway["env"], f"http://127.0.0.1:{gateway['port']}/v1"
    token = _cli(env, "keys", "token", "--org", "acme", "--sub", "ci-bot").strip()
    assert _client(gateway, api_key=token).files.list().object == "list"
    expired = _cli(env, "keys", "token", "--org", "acme", "--sub", "ci-bot", "--ttl", "-10").strip()
    with pytest.raises(openai.AuthenticationError, match="expired"):
        _client(gateway, api_key=expired).files.list()
    jti = pyjwt.decode(token, options={"verify_signature": False})["jti"]
    _cli(env, "keys", "revoke-token", jti)
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        _client(gateway, api_key=token).files.list()
    key = _cli(env, "keys", "create", "--org", "acme", "--name", "short-lived").strip().splitlines()[-1]
    _client(gateway, api_key=key).files.list()
    _cli(env, "keys", "revoke", key[:12])
    # A revoked key stops working within NIGHTSHIFT_API_KEY_CACHE_SECONDS (1 s here).
    deadline = time.monotonic() + 5
    while True:
        try:
            _client(gateway, api_key=key).files.list()
        except openai.AuthenticationError:
            break
        assert time.monotonic() < deadline, "a revoked key still works"
        time.sleep(0.2)

    big = tmp_path / "big.jsonl"
    write_batch(big, 101)
    with pytest.raises(openai.BadRequestError, match="100"):
        _client(gateway).files.create(file=big.open("rb"), purpose="batch")

    # Free tier: 6 calls an hour (the test's setting); the 7th is refused with Retry-After.
    free = _cli(env, "keys", "create", "--org", "initech", "--tier", "free").strip().splitlines()[-1]
    for _ in range(6):
        assert httpx.get(f"{base}/files", headers={"Authorization": f"Bearer {free}"}).status_code == 200
    refused = httpx.get(f"{base}/files", headers={"Authorization": f"Bearer {free}"})
    assert refused.status_code == 429 and 1 <= int(refused.headers["Retry-After"]) <= 3600
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"


def test_gateway_restart_mid_batch_loses_nothing(gateway, tmp_path):
    client = _client(gateway)
    src = tmp_path / "restart.jsonl"
    write_batch(src, 30, max_tokens=4)
    batch = _create(client, src, nightshift_drill_slow_shards_seconds="1")
    _wait(client, batch.id, until=("in_progress", *TERMINAL))
    stop_process_group(gateway["proc"])  # the gateway goes away mid-batch; the run goes on
    gateway["proc"] = _start(gateway["env"], gateway["port"], gateway["log"])
    done = _wait(client, batch.id)
    assert done.status == "completed" and done.request_counts.completed == 30
    assert len(client.files.content(done.output_file_id).text.splitlines()) == 30


class _Receiver:
    """A webhook receiver on loopback that keeps each call's headers and raw body."""

    def __init__(self, fail_first: bool = True) -> None:
        import http.server
        import threading

        calls = self.calls = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                calls.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(500 if fail_first and len(calls) == 1 else 200)  # a failed first try is retried
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_webhook_is_signed_retried_and_sent_once(gateway, tmp_path):

    receiver = _Receiver()
    client = _client(gateway)
    src = tmp_path / "hooked.jsonl"
    write_batch(src, 5, max_tokens=3)
    batch = _create(client, src, webhook_url=receiver.url)
    assert _wait(client, batch.id).status == "completed"
    deadline = time.monotonic() + 30
    while len(receiver.calls) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # and no third call
    receiver.server.shutdown()
    assert len(receiver.calls) == 2  # one failed try, one delivery
    headers, body = receiver.calls[-1]
    assert receiver.calls[0][0]["webhook-id"] == headers["webhook-id"]  # a retry is the same message
    # Standard Webhooks, checked by the openai client's own verifier with the org's whsec_ secret
    secret = _cli(gateway["env"], "keys", "webhook-secret", "--org", "acme").strip()
    assert secret.startswith("whsec_")
    event = client.webhooks.unwrap(body.decode(), headers, secret=secret)
    assert event.type == "batch.completed" and event.data.id == batch.id
    with pytest.raises(openai.InvalidWebhookSignatureError):
        client.webhooks.unwrap(body.decode(), headers, secret="whsec_" + "A" * 44)
    assert client.batches.retrieve(batch.id).request_counts.model_dump() == {"total": 5, "completed": 5, "failed": 0}

    metrics = httpx.get(f"http://127.0.0.1:{gateway['port']}/metrics").text
    assert 'nightshift_api_webhooks_total{outcome="delivered"}' in metrics
    assert 'nightshift_api_requests_total{method="POST",route="/v1/batches",status="200"}' in metrics
    # pool usage as the gateway read it from Prefect (every 15 s): the stack runs one worker per pool
    deadline = time.monotonic() + 40
    while True:
        pools = {
            (s.name, s.labels["pool"]): s.value
            for f in text_string_to_metric_families(httpx.get(f"http://127.0.0.1:{gateway['port']}/metrics").text)
            for s in f.samples
            if s.name.startswith("nightshift_pool_")
        }
        if all(pools.get(("nightshift_pool_workers_online", p), 0) >= 1 for p in ("gpu-spot", "gpu-dedicated")):
            break
        assert time.monotonic() < deadline, pools
        time.sleep(1)
    for pool in ("gpu-spot", "gpu-dedicated"):
        assert pools[("nightshift_pool_concurrency_limit", pool)] == 2
        assert pools[("nightshift_pool_queue_depth", pool)] >= 0


def test_batch_past_its_window_expires_with_every_line_accounted_for(gateway, tmp_path):
    """A batch still unfinished when its completion window ends: the tracker expires it and
    publishes partial results (here nothing ran, so every line is a batch_expired error)."""
    from datetime import UTC, datetime, timedelta

    client = _client(gateway)
    src = tmp_path / "late.jsonl"
    write_batch(src, 4, ["invalid_json"])
    uploaded = client.files.create(file=src.open("rb"), purpose="batch")
    past = datetime.now(UTC) - timedelta(minutes=1)
    batch_id = _insert_batch(
        gateway, input_file_id=uploaded.id, status="in_progress", created_at=past - timedelta(hours=24), expires_at=past
    )
    done = _wait(client, batch_id, timeout=60)
    assert done.status == "expired" and done.expired_at is not None and done.output_file_id
    assert client.files.content(done.output_file_id).text == ""
    errors = [json.loads(line) for line in client.files.content(done.error_file_id).text.splitlines()]
    assert [e["custom_id"] for e in errors] == ["req-000", "req-001", "req-002", None, "req-003"]
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert done.request_counts.total == 5 and done.request_counts.failed == 5


def test_webhook_owed_from_before_a_restart_is_sent(gateway):
    """A batch that finished while the gateway was down (status written, webhook never tried)."""
    from datetime import UTC, datetime

    receiver = _Receiver(fail_first=False)
    batch_id = _insert_batch(
        gateway, input_file_id="file-gone", status="completed", completed_at=datetime.now(UTC), webhook_url=receiver.url
    )
    deadline = time.monotonic() + 30
    while not receiver.calls and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)
    receiver.server.shutdown()
    assert len(receiver.calls) == 1 and json.loads(receiver.calls[0][1])["data"]["id"] == batch_id


def test_audit_log_records_who_did_what(gateway):
    """Runs last in this module: the earlier tests created, downloaded and cancelled as acme."""
    import asyncio

    from sqlalchemy import select

    from nightshift.api import db

    async def read() -> list[tuple[str, str | None]]:
        database = db.Database(gateway["env"]["NIGHTSHIFT_API_DATABASE_URL"])
        try:
            async with database.session() as session:
                acme = await db.get_org_by_name(session, "acme")
                rows = (await session.execute(select(db.AuditLog).where(db.AuditLog.org_id == acme.id))).scalars().all()
                return [(r.action, r.key_id) for r in rows]
        finally:
            await database.dispose()

    entries = asyncio.run(read())
    actions = {a for a, _ in entries}
    assert {"file.create", "batch.create", "file.download", "batch.cancel"} <= actions
    assert all(key for _, key in entries)  # every entry names the key (or jwt:<jti>) that acted
