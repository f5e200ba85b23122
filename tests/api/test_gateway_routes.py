"""The gateway in-process (httpx ASGITransport): every route, and each way a hostile tenant or a
careless client tried to misuse it (issue 16's table), on a real SQLite database, a real local
store and real loopback listeners. Only the orchestrator (Prefect) is scripted."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import httpx
import openai
import pytest

from nightshift.api.app import GatewayConfigError, create_app
from nightshift.api.auth import issue_jwt
from nightshift.api.tracker import RunState
from nightshift.settings import ApiConfig, LimitsConfig, Settings, StorageConfig
from tests.api.gateway_app import ScriptedOrchestrator, chat_lines, run_gateway, settings_for
from tests.api.loopback import LoopbackServer, Reply

MiB = 1024 * 1024


class CountingBody:
    """An async request body that records how many of its chunks were read."""

    def __init__(self, size: int, chunk: int = 64 * 1024) -> None:
        self.size, self.chunk, self.pulled = size, chunk, 0

    async def __aiter__(self):
        # a well-formed multipart start, then file bytes: the parser keeps reading until the limit
        yield b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jsonl"\r\n\r\n'
        sent = 0
        while sent < self.size:
            self.pulled += 1
            part = min(self.chunk, self.size - sent)
            sent += part
            yield b"x" * part


# -- files ------------------------------------------------------------------------------------
def test_upload_list_page_retrieve_and_content(tmp_path):
    async def body(gw):
        ids = []
        for i in range(3):
            r = await gw.upload(chat_lines(2 + i), name=f"f{i}.jsonl")
            assert r.status_code == 200, r.text
            f = openai.types.FileObject.model_validate(r.json())
            assert f.purpose == "batch" and f.filename == f"f{i}.jsonl"
            ids.append(f.id)
        first = (await gw.client.get("/v1/files?limit=2", headers=gw.auth())).json()
        assert [f["id"] for f in first["data"]] == ids[::-1][:2] and first["has_more"] is True
        assert first["first_id"] == ids[2] and first["last_id"] == ids[1]
        rest = (await gw.client.get(f"/v1/files?limit=2&after={first['last_id']}", headers=gw.auth())).json()
        assert [f["id"] for f in rest["data"]] == [ids[0]] and rest["has_more"] is False
        asc = (await gw.client.get("/v1/files?order=asc", headers=gw.auth())).json()
        assert [f["id"] for f in asc["data"]] == ids
        content = await gw.client.get(f"/v1/files/{ids[0]}/content", headers=gw.auth())
        assert content.content == chat_lines(2)
        # another org sees none of it
        assert (await gw.client.get(f"/v1/files/{ids[0]}", headers=gw.auth("globex"))).status_code == 404
        assert (await gw.client.get(f"/v1/files/{ids[0]}/content", headers=gw.auth("globex"))).status_code == 404
        assert (await gw.client.get("/v1/files", headers=gw.auth("globex"))).json()["data"] == []

    run_gateway(settings_for(tmp_path), body)


def test_unauthenticated_upload_is_refused_before_its_body_is_read(tmp_path):
    async def body(gw):
        upload = CountingBody(12 * MiB)
        headers = {"Content-Type": "multipart/form-data; boundary=xyz", "Content-Length": str(upload.size)}
        r = await gw.client.post("/v1/files", content=upload, headers=headers)
        assert r.status_code == 401
        assert upload.pulled <= 1  # nothing past the first chunk the transport primes

    run_gateway(settings_for(tmp_path, limits=LimitsConfig(max_bytes=16 * MiB)), body)


def test_body_over_the_limit_is_413_by_header_and_cut_when_streamed(tmp_path):
    async def body(gw):
        declared = CountingBody(3 * MiB)
        headers = {**gw.auth(), "Content-Type": "multipart/form-data; boundary=xyz", "Content-Length": str(declared.size)}
        r = await gw.client.post("/v1/files", content=declared, headers=headers)
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        assert declared.pulled == 0  # refused from the Content-Length alone
        streamed = CountingBody(3 * MiB)  # no Content-Length: chunked
        headers = {**gw.auth(), "Content-Type": "multipart/form-data; boundary=xyz"}
        r = await gw.client.post("/v1/files", content=streamed, headers=headers)
        assert r.status_code == 413
        assert streamed.pulled * streamed.chunk <= 1 * MiB + 64 * 1024 + streamed.chunk  # stopped at the limit
        big_json = {"input_file_id": "file-x", "endpoint": "/v1/chat/completions", "metadata": {"k": "v" * (2 * MiB)}}
        r = await gw.client.post("/v1/batches", json=big_json, headers=gw.auth())
        assert r.status_code == 413
        # no half-written upload left behind
        assert not list((tmp_path / "store").rglob("*.part"))

    settings = settings_for(tmp_path, limits=LimitsConfig(max_bytes=1 * MiB), max_json_body_bytes=1 * MiB)
    run_gateway(settings, body)


def test_one_line_rule_for_gateway_and_flow(tmp_path):
    """U+2028 inside a JSON string is one line; a non-UTF-8 line is one bad line, the rest intact."""
    from nightshift.core.validation import read_lines, validate_lines

    good = json.loads(chat_lines(1))
    good["body"]["messages"][0]["content"] = "a\u2028b\u0085c"
    data = (
        (json.dumps(good, ensure_ascii=False) + "\n").encode()
        + b'{"custom_id": "bad \xff"}\n'
        + chat_lines(2).replace(b"req-", b"r-")
    )

    async def body(gw):
        r = await gw.upload(data)
        assert r.status_code == 200, r.text
        async with gw.app.state.database.session() as session:
            from nightshift.api.db import File

            row = await session.get(File, r.json()["id"])
        assert row.lines == 4

    run_gateway(settings_for(tmp_path), body)
    lines = read_lines(data, uri="t", max_lines=100, max_bytes=10**6)
    result = validate_lines(lines)
    assert result.total_lines == 4 and len(result.valid) == 3
    assert [(e.line, e.code) for e in result.errors] == [(2, "invalid_encoding")]
    assert result.valid[0].body["messages"][0]["content"] == "a\u2028b\u0085c"


def test_delete_removes_the_bytes_and_the_id_at_once_but_waits_for_a_running_batch(tmp_path):
    async def body(gw):
        solo = (await gw.upload(chat_lines(1))).json()["id"]
        used = (await gw.upload(chat_lines(2))).json()["id"]
        assert (await gw.create_batch(used)).status_code == 200
        files = tmp_path / "store" / "files"
        assert len(list(files.rglob("*.jsonl"))) == 2
        for file_id in (solo, used):
            r = await gw.client.delete(f"/v1/files/{file_id}", headers=gw.auth())
            assert r.json() == {"id": file_id, "object": "file", "deleted": True}
            assert (await gw.client.get(f"/v1/files/{file_id}", headers=gw.auth())).status_code == 404
            assert (await gw.client.get(f"/v1/files/{file_id}/content", headers=gw.auth())).status_code == 404
        assert [p.stem for p in files.rglob("*.jsonl")] == [used]  # the running batch still reads it
        (batch,) = await gw.rows()
        gw.orchestrator.states[batch.flow_run_id] = RunState(batch.flow_run_id, "Running")
        await gw.client.post(f"/v1/batches/{batch.id}/cancel", headers=gw.auth())
        gw.orchestrator.states[batch.flow_run_id] = RunState(batch.flow_run_id, "Cancelled")
        assert (await gw.client.get(f"/v1/batches/{batch.id}", headers=gw.auth())).json()["status"] == "cancelled"
        from nightshift.api.routes.files import purge_deleted

        assert await purge_deleted(gw.app.state.gateway) == 1
        assert list(files.rglob("*.jsonl")) == []

    run_gateway(settings_for(tmp_path), body)


def test_upload_parts_left_by_a_crash_are_swept_at_start(tmp_path):
    store = tmp_path / "store" / "files" / "org_x"
    store.mkdir(parents=True)
    old, fresh = store / "file-old.jsonl.part", store / "file-new.jsonl.part"
    old.write_bytes(b"half")
    fresh.write_bytes(b"half")
    os.utime(old, (time.time() - 7200, time.time() - 7200))

    async def body(gw):
        assert not old.exists() and fresh.exists()

    run_gateway(settings_for(tmp_path, part_max_age_seconds=3600), body)


# -- batches ----------------------------------------------------------------------------------
def test_batch_create_retrieve_list_and_cancel_speak_openai(tmp_path):
    async def body(gw):
        file_id = (await gw.upload(chat_lines(3))).json()["id"]
        created = await gw.create_batch(file_id, metadata={"team": "search"})
        batch = openai.types.Batch.model_validate(created.json())
        assert batch.status == "validating" and batch.metadata == {"team": "search"}
        assert created.json()["nightshift"]["pool"] == "gpu-spot"
        (submit,) = gw.orchestrator.submits
        assert submit["batch_id"] == batch.id and "slow_shards_seconds" not in submit
        run = submit and (await gw.rows())[0].flow_run_id
        gw.orchestrator.states[run] = RunState(run, "Running", pool="gpu-spot")
        got = openai.types.Batch.model_validate((await gw.client.get(f"/v1/batches/{batch.id}", headers=gw.auth())).json())
        assert got.status == "in_progress" and got.in_progress_at is not None
        listed = (await gw.client.get("/v1/batches", headers=gw.auth())).json()
        assert [b["id"] for b in listed["data"]] == [batch.id] and listed["has_more"] is False
        cancelling = (await gw.client.post(f"/v1/batches/{batch.id}/cancel", headers=gw.auth())).json()
        assert cancelling["status"] == "cancelling" and gw.orchestrator.cancels == [run]
        gw.orchestrator.states[run] = RunState(run, "Cancelled")
        done = openai.types.Batch.model_validate((await gw.client.get(f"/v1/batches/{batch.id}", headers=gw.auth())).json())
        assert done.status == "cancelled" and done.request_counts.failed == 3
        errors = (await gw.client.get(f"/v1/files/{done.error_file_id}/content", headers=gw.auth())).text.splitlines()
        assert sorted(json.loads(e)["custom_id"] for e in errors) == ["req-0", "req-1", "req-2"]
        again = await gw.client.post(f"/v1/batches/{batch.id}/cancel", headers=gw.auth())
        assert again.status_code == 400 and again.json()["error"]["code"] == "invalid_state"
        assert (await gw.client.get(f"/v1/batches/{batch.id}", headers=gw.auth("globex"))).status_code == 404

    run_gateway(settings_for(tmp_path), body)


def test_a_runs_event_moves_the_batch_without_any_poll(tmp_path):
    import asyncio

    heard: asyncio.Queue[str] = asyncio.Queue()

    async def events():
        while True:
            yield await heard.get()

    async def body(gw):
        file_id = (await gw.upload(chat_lines(2))).json()["id"]
        batch_id = (await gw.create_batch(file_id)).json()["id"]
        (row,) = await gw.rows()
        gw.orchestrator.states[row.flow_run_id] = RunState(row.flow_run_id, "Running")
        await asyncio.sleep(0.2)
        assert (await gw.rows())[0].status == "validating"  # nothing polls (tracker every hour)
        heard.put_nowait(batch_id)  # the flow's nightshift.batch.started, as Prefect delivers it
        for _ in range(50):
            if (await gw.rows())[0].status == "in_progress":
                break
            await asyncio.sleep(0.05)
        assert (await gw.rows())[0].status == "in_progress"

    run_gateway(settings_for(tmp_path), body, batch_events=events)


def test_start_failures_end_the_batch_failed_and_leave_no_validating_row(tmp_path):
    orchestrator = ScriptedOrchestrator(fail=httpx.ConnectError("[Errno 111] Connection refused to /srv/prefect"))

    async def body(gw):
        file_id = (await gw.upload(chat_lines(2))).json()["id"]
        r = await gw.create_batch(file_id)
        assert r.status_code == 200
        batch = openai.types.Batch.model_validate(r.json())
        assert batch.status == "failed" and batch.failed_at is not None
        (error,) = batch.errors.data
        assert error.code == "submit_failed" and "Errno" not in error.message and "/srv" not in error.message
        assert [row.status for row in await gw.rows()] == ["failed"]

    run_gateway(settings_for(tmp_path), body, orchestrator=orchestrator)


def test_completion_windows_follow_the_tier_settings(tmp_path):
    async def body(gw):
        file_id = (await gw.upload(chat_lines(1))).json()["id"]
        assert (await gw.create_batch(file_id, completion_window="8h")).status_code == 200
        refused = await gw.create_batch(file_id, completion_window="6h")
        assert refused.status_code == 400 and refused.json()["error"]["param"] == "completion_window"

    from nightshift.settings import SLAConfig

    settings = settings_for(tmp_path)
    settings = settings.model_copy(update={"sla": SLAConfig(enterprise_hours=8)})
    run_gateway(settings, body)


@pytest.mark.parametrize(
    ("metadata", "why"),
    [
        ({f"k{i}": "v" for i in range(17)}, "16"),
        ({"k" * 65: "v"}, "64"),
        ({"k": "v" * 513}, "512"),
    ],
)
def test_metadata_over_openais_limits_is_400(tmp_path, metadata, why):
    async def body(gw):
        file_id = (await gw.upload(chat_lines(1))).json()["id"]
        r = await gw.create_batch(file_id, metadata=metadata)
        assert r.status_code == 400 and r.json()["error"]["param"] == "metadata" and why in r.json()["error"]["message"]
        job = await gw.client.post("/v1/jobs", headers=gw.auth(), json={"input": [{"prompt": "hi"}], "metadata": metadata})
        assert job.status_code == 400 and job.json()["error"]["param"] == "metadata"
        assert await gw.rows() == []

    run_gateway(settings_for(tmp_path), body)


def test_fault_knobs_are_operator_only(tmp_path):
    async def body(gw):
        file_id = (await gw.upload(chat_lines(1))).json()["id"]
        drill = {"nightshift_drill_slow_shards_seconds": "3600"}
        r = await gw.create_batch(file_id, org="acme", metadata=drill)
        assert r.status_code == 403 and r.json()["error"]["param"] == "metadata.nightshift_drill_slow_shards_seconds"
        ops_file = (await gw.upload(chat_lines(1), org="globex")).json()["id"]
        bad = await gw.create_batch(ops_file, org="globex", metadata={"nightshift_drill_slow_shards_seconds": "soon"})
        assert bad.status_code == 400
        ok = await gw.create_batch(ops_file, org="globex", metadata={"nightshift_drill_slow_shards_seconds": "2"})
        assert ok.status_code == 200 and gw.orchestrator.submits[-1]["slow_shards_seconds"] == 2.0
        assert len(await gw.rows()) == 1

    run_gateway(settings_for(tmp_path, drill_orgs=["globex"]), body)


def test_webhook_urls_that_reach_inside_are_refused_at_create_and_never_called(tmp_path):
    with LoopbackServer().running() as receiver:
        receiver.script["/hook"] = [Reply(200)]
        port = receiver.port
        spellings = [
            f"http://127.0.0.1:{port}/hook",
            f"https://127.0.0.1:{port}/hook",
            f"https://127.1:{port}/hook",
            f"https://0x7f000001:{port}/hook",
            f"https://2130706433:{port}/hook",
            f"https://0177.0.0.1:{port}/hook",
            f"https://[::ffff:127.0.0.1]:{port}/hook",
            f"https://[::1]:{port}/hook",
            f"https://localhost:{port}/hook",
            f"https://0.0.0.0:{port}/hook",
            f"https://10.0.0.1:{port}/hook",
            "https://169.254.169.254/latest/meta-data",
            "ftp://example.com/hook",
            "file:///etc/passwd",
        ]

        async def body(gw):
            file_id = (await gw.upload(chat_lines(1))).json()["id"]
            for url in spellings:
                r = await gw.create_batch(file_id, metadata={"webhook_url": url})
                assert r.status_code == 400, (url, r.text)
                assert r.json()["error"]["param"] == "metadata.webhook_url", url
                job = await gw.client.post("/v1/jobs", headers=gw.auth(), json={"input": [{"prompt": "x"}], "webhook_url": url})
                assert job.status_code == 400 and job.json()["error"]["param"] == "webhook_url", url
            assert await gw.rows() == []
            async with gw.app.state.database.session() as session:
                from sqlalchemy import select

                from nightshift.api.db import AuditLog

                refused = (await session.execute(select(AuditLog).where(AuditLog.action == "webhook.refused"))).scalars().all()
            assert len(refused) == 2 * len(spellings)  # recorded, never sent

        run_gateway(settings_for(tmp_path), body)
        assert receiver.hits == []


def test_an_allowed_webhook_is_signed_by_standard_webhooks_and_sent_once(tmp_path):
    with LoopbackServer().running() as receiver:
        receiver.script["/hook"] = [Reply(500), Reply(200)]

        async def body(gw):
            file_id = (await gw.upload(chat_lines(2))).json()["id"]
            created = (await gw.create_batch(file_id, metadata={"webhook_url": receiver.url("/hook")})).json()
            (row,) = await gw.rows()
            await gw.client.post(f"/v1/batches/{created['id']}/cancel", headers=gw.auth())
            gw.orchestrator.states[row.flow_run_id] = RunState(row.flow_run_id, "Cancelled")
            # the tracker and two clients see the same change at once: one transition, one webhook
            import asyncio

            lifecycle = gw.app.state.gateway.lifecycle
            await asyncio.gather(
                lifecycle.track_once(),
                gw.client.get(f"/v1/batches/{created['id']}", headers=gw.auth()),
                gw.client.get(f"/v1/batches/{created['id']}", headers=gw.auth()),
            )
            await lifecycle.drain()
            await lifecycle.track_once()  # nothing owed any more
            await lifecycle.drain()
            (row,) = await gw.rows()
            assert row.status == "cancelled" and row.webhook_status == "delivered HTTP 200" and row.webhook_attempts == 2
            async with gw.app.state.database.session() as session:
                from sqlalchemy import func, select

                from nightshift.api.db import File, get_org_by_name

                outputs = (
                    await session.execute(select(func.count()).select_from(File).where(File.purpose == "batch_output"))
                ).scalar()
                secret = (await get_org_by_name(session, "acme")).webhook_secret
            assert outputs == 2  # output and error file registered once
            client = openai.OpenAI(api_key="unused", webhook_secret=_whsec(secret), base_url="http://127.0.0.1:9/v1")
            hits = [h for h in receiver.hits if h.path == "/hook"]
            assert len(hits) == 2 and hits[0].headers["webhook-id"] == hits[1].headers["webhook-id"]
            event = client.webhooks.unwrap(hits[1].body.decode(), hits[1].headers)
            assert event.type == "batch.cancelled" and event.data.id == created["id"]
            with pytest.raises(openai.InvalidWebhookSignatureError):
                client.webhooks.unwrap(hits[1].body.decode(), hits[1].headers, secret=_whsec("another-secret"))

        settings = settings_for(tmp_path, webhook_allow_http=True, egress_allowed_hosts=["127.0.0.1"])
        from nightshift.api.urls import webhook_sender

        run_gateway(settings, body, send_webhook=webhook_sender(settings))


def _whsec(secret: str) -> str:
    from nightshift.api.webhooks import signing_secret

    return signing_secret(secret)


# -- jobs and input URLs ----------------------------------------------------------------------
def test_s3_inputs_only_under_the_orgs_prefixes_and_never_the_store(tmp_path):
    store = StorageConfig(root="s3://nightshift-store/ns", endpoint_url="http://127.0.0.1:9", region="us-east-1")
    settings = settings_for(tmp_path, storage=store, s3_input_prefixes={"globex": ["s3://globex-data/in/"]})

    async def body(gw):
        def job(url):
            return gw.client.post("/v1/jobs", headers=gw.auth("globex"), json={"input_file_url": url})

        refused = [
            "s3://nightshift-store/ns/files/org_acme/file-abc.jsonl",  # another org's upload, in the store
            "s3://nightshift-store/ns/batches/b/v/output.jsonl",
            "s3://acme-private/data.jsonl",  # a bucket the service can reach, not opened to globex
            "s3://globex-data/in/../../acme/x.jsonl",
            "s3://globex-data/in/%2e%2e/x.jsonl",
            "s3://globex-data/other/x.jsonl",
        ]
        for url in refused:
            r = await job(url)
            assert r.status_code == 400 and r.json()["error"]["param"] == "input_file_url", (url, r.text)
            assert "nightshift-store/ns" not in r.json()["error"]["message"]
        # allowed: the size probe runs now (nothing listens there), and says so without library text
        r = await job("s3://globex-data/in/batch.jsonl")
        assert r.status_code == 400, r.text
        message = r.json()["error"]["message"]
        assert "botocore" not in message and "Errno" not in message and "127.0.0.1" not in message
        assert await gw.rows() == []

    run_gateway(settings, body)


def test_file_inputs_are_copied_in_at_submit_so_a_later_swap_is_never_read(tmp_path):
    root = tmp_path / "inputs"
    root.mkdir()
    (root / "data.jsonl").write_bytes(chat_lines(2))
    secret = tmp_path / "secret.jsonl"
    secret.write_bytes(b'{"custom_id": "the other org secret"}\n')
    (root / "folder").mkdir()

    async def body(gw):
        def job(url):
            return gw.client.post("/v1/jobs", headers=gw.auth(), json={"input_file_url": url})

        r = await job(f"file://{root}/data.jsonl")
        assert r.status_code == 200, r.text
        (row,) = await gw.rows()
        content = await gw.client.get(f"/v1/files/{row.input_file_id}/content", headers=gw.auth())
        assert content.content == chat_lines(2)
        (root / "data.jsonl").unlink()
        (root / "data.jsonl").symlink_to(secret)  # swapped after submit
        swapped = await gw.client.get(f"/v1/files/{row.input_file_id}/content", headers=gw.auth())
        assert swapped.content == chat_lines(2)  # the copy taken at submit
        (submit,) = gw.orchestrator.submits
        assert submit["source_uri"].removeprefix("file://").startswith(gw.settings.storage.root)  # the flow reads the copy
        # submitted now, the link is refused (opened without following links)
        linked = await job(f"file://{root}/data.jsonl")
        assert linked.status_code == 400 and "secret" not in linked.text
        for url in (f"file://{root}/folder", f"file://{root}/../secret.jsonl", f"file://{secret}"):
            r = await job(url)
            assert r.status_code == 400, (url, r.text)
            assert str(tmp_path) not in r.text  # no server path in the message
        assert len(await gw.rows()) == 1

    run_gateway(settings_for(tmp_path, allowed_file_roots=[root]), body)


def test_unreachable_allow_listed_https_input_is_a_400_and_no_row(tmp_path):
    async def body(gw):
        r = await gw.client.post("/v1/jobs", headers=gw.auth(), json={"input_file_url": "https://127.0.0.1:9/in.jsonl"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "input_file_url", r.text
        assert "Errno" not in r.text
        assert await gw.rows() == []

    settings = settings_for(tmp_path, allowed_https_hosts=["127.0.0.1"], egress_allowed_hosts=["127.0.0.1"])
    run_gateway(settings, body)


def test_job_token_budget_is_bounded_by_the_models_context(tmp_path):
    async def body(gw):
        for payload, param in (
            ({"input": [{"prompt": "x"}], "max_tokens": 10**30}, "max_tokens"),
            ({"input": [{"prompt": "x", "max_tokens": 10**6}]}, "input[0].max_tokens"),
        ):
            r = await gw.client.post("/v1/jobs", headers=gw.auth(), json=payload)
            assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
        ok = await gw.client.post("/v1/jobs", headers=gw.auth(), json={"input": [{"prompt": "x"}], "max_tokens": 16})
        assert ok.status_code == 200, ok.text
        status = (await gw.client.get(f"/v1/jobs/{ok.json()['job_id']}", headers=gw.auth())).json()
        assert status["object"] == "job" and status["sla"]["tier"] == "premium"

    run_gateway(settings_for(tmp_path), body)


def test_job_results_wait_for_the_end_then_link_the_files(tmp_path):
    async def body(gw):
        job = (await gw.client.post("/v1/jobs", headers=gw.auth(), json={"input": [{"prompt": "a"}, {"prompt": "b"}]})).json()
        early = await gw.client.get(f"/v1/jobs/{job['job_id']}/results", headers=gw.auth())
        assert early.status_code == 409 and early.json()["error"]["code"] == "job_not_finished"
        (row,) = await gw.rows()
        await gw.client.post(f"/v1/batches/{row.id}/cancel", headers=gw.auth())
        gw.orchestrator.states[row.flow_run_id] = RunState(row.flow_run_id, "Cancelled")
        results = (await gw.client.get(f"/v1/jobs/{job['job_id']}/results", headers=gw.auth())).json()
        assert results["status"] == "cancelled" and results["stats"]["failed"] == 2
        errors = await gw.client.get(results["errors_url"].removeprefix("http://gateway.test"), headers=gw.auth())
        assert sorted(json.loads(line)["custom_id"] for line in errors.text.splitlines()) == ["item-0", "item-1"]
        other = await gw.client.get(f"/v1/jobs/{job['job_id']}/results", headers=gw.auth("globex"))
        assert other.status_code == 404

    run_gateway(settings_for(tmp_path), body)


# -- auth, limits, errors ---------------------------------------------------------------------
def test_rate_budget_belongs_to_the_org_with_openai_headers(tmp_path):
    async def body(gw):
        config = gw.settings.api
        tokens = [issue_jwt(config, org="globex", sub=f"user{i}") for i in range(3)]
        seen = []
        for i in range(4):
            r = await gw.client.get("/v1/files", headers={"Authorization": f"Bearer {tokens[i % 3]}"})
            seen.append((r.status_code, r.headers.get("x-ratelimit-remaining-requests")))
        assert seen[:3] == [(200, "2"), (200, "1"), (200, "0")]
        limited = await gw.client.get("/v1/files", headers=gw.auth("globex"))  # the org's key shares the budget
        assert limited.status_code == 429 and int(limited.headers["Retry-After"]) >= 1
        assert limited.headers["x-ratelimit-limit-requests"] == "3"
        assert (await gw.client.get("/v1/files", headers=gw.auth("acme"))).status_code == 200

    run_gateway(settings_for(tmp_path, free_requests_per_hour=3), body)


def test_empty_or_short_jwt_secret_refuses_to_start(tmp_path):
    for secret in ("", "short"):
        settings = Settings(api=ApiConfig(database_url=f"sqlite+aiosqlite:///{tmp_path / 'x.db'}", jwt_secret=secret))
        with pytest.raises(GatewayConfigError, match="NIGHTSHIFT_API_JWT_SECRET"):
            create_app(settings, orchestrator=ScriptedOrchestrator())


def test_unhandled_errors_are_counted_logged_and_named_by_request_id(tmp_path, caplog):
    class Broken(ScriptedOrchestrator):
        def run_state(self, flow_run_id):
            raise RuntimeError("/srv/secret/path exploded")

    async def body(gw):
        file_id = (await gw.upload(chat_lines(1))).json()["id"]
        batch_id = (await gw.create_batch(file_id)).json()["id"]
        with caplog.at_level(logging.INFO, logger="nightshift.api"):
            r = await gw.client.get(f"/v1/batches/{batch_id}", headers={**gw.auth(), "x-request-id": "trace-42"})
        assert r.status_code == 500 and r.headers["x-request-id"] == "trace-42"
        assert "trace-42" in r.json()["error"]["message"] and "/srv" not in r.text
        assert any(
            getattr(rec, "request_id", None) == "trace-42" and getattr(rec, "status", None) == 500 for rec in caplog.records
        )
        assert any("trace-42" in rec.getMessage() and rec.exc_info for rec in caplog.records)
        metrics = (await gw.client.get("/metrics")).text
        assert 'nightshift_api_requests_total{method="GET",route="/v1/batches/{batch_id}",status="500"}' in metrics
        ok = await gw.client.get("/v1/files", headers=gw.auth())
        assert ok.headers["x-request-id"].startswith("req_")

    run_gateway(settings_for(tmp_path), body, orchestrator=Broken())


def test_malformed_bodies_are_400s_that_name_the_field(tmp_path):
    async def body(gw):
        r = await gw.client.post("/v1/batches", headers={**gw.auth(), "Content-Type": "application/json"}, content=b"{not json")
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"
        r = await gw.client.post("/v1/batches", headers=gw.auth(), json={"endpoint": "/v1/chat/completions"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "input_file_id"
        r = await gw.client.post("/v1/batches", headers=gw.auth(), json={"input_file_id": "f", "endpoint": "/v1/images"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "endpoint"
        r = await gw.upload(b"not json at all\n")
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_file"
        r = await gw.client.post("/v1/files", headers=gw.auth(), data={"purpose": "fine-tune"}, files={"file": ("a", b"{}")})
        assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"
        assert not list(Path(gw.settings.storage.root).rglob("*.jsonl"))

    run_gateway(settings_for(tmp_path), body)
