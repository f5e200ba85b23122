"""Issue 19 through the gateway in-process: a ``/v1/responses`` batch answered by the real vLLM
engine on the tiny model and read back with the official ``openai`` client's types, and OpenAI's
expiry knobs (``expires_after`` on upload, ``output_expires_after`` on batch create) honoured by
the gateway's sweep. Only the orchestrator is scripted: the test publishes the run's artifacts
itself, with the core functions the flow's publish step uses."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.responses import Response
from sqlalchemy import update

from nightshift.api import db
from nightshift.api.routes.files import purge_deleted
from nightshift.core.artifacts import (
    FileRecord,
    Manifest,
    ModelRecord,
    RequestCounts,
    ResultRow,
    encode_rows,
    to_output_line,
    total_usage,
)
from nightshift.core.hashing import sha256_bytes
from nightshift.core.protocol import BatchError, Endpoint
from nightshift.core.validation import read_lines, validate_lines
from nightshift.storage import ArtifactStore
from tests.api.gateway_app import Gateway, chat_lines, run_gateway, settings_for

SERVED = "tiny-qwen2"
HOUR = 3600


def _client(gw: Gateway) -> openai.AsyncOpenAI:
    """The official client, speaking to the in-process app."""
    return openai.AsyncOpenAI(api_key=gw.keys["acme"], base_url="http://gateway.test/v1", http_client=gw.client, max_retries=0)


def _publish(store: ArtifactStore, batch_id: str, endpoint: Endpoint, source: bytes, rows: list[ResultRow]) -> None:
    """Write a published version of ``batch_id`` (output, errors, manifest) as the flow's publish step does."""
    version = sha256_bytes(source)[:16]
    paths = store.batch(batch_id, version)
    rows = sorted(rows, key=lambda r: r.line)
    records = {}
    for path, part in ((paths.output, [r for r in rows if r.error is None]), (paths.errors, [r for r in rows if r.error])):
        data = encode_rows(to_output_line(r, version=version) for r in part)
        store.write_bytes(path, data)
        records[path] = FileRecord(path=path, sha256=sha256_bytes(data), bytes=len(data), lines=len(part))
    now = datetime.now(UTC)
    failed = sum(1 for r in rows if r.error)
    manifest = Manifest(
        batch_id=batch_id,
        version=version,
        endpoint=endpoint,
        created_at=now,
        completed_at=now,
        input=FileRecord(path=paths.input, sha256=sha256_bytes(source), bytes=len(source), lines=len(rows)),
        model=ModelRecord(name=SERVED, source="tiny", sha256="0" * 64),
        engine={"engine": "vllm"},
        engine_params_in_version={},
        shards=[],
        output_file=records[paths.output],
        error_file=records[paths.errors],
        request_counts=RequestCounts(total=len(rows), completed=len(rows) - failed, failed=failed),
        usage=total_usage(rows),
    )
    store.write_bytes(paths.manifest, manifest.to_json())


async def _batch_row(gw: Gateway, batch_id: str) -> db.Batch:
    async with gw.app.state.database.session() as session:
        row = await session.get(db.Batch, batch_id)
    assert row is not None
    return row


async def _age_file(gw: Gateway, file_id: str, by: timedelta) -> None:
    """Move a file's expiry ``by`` into the past (time passing, without waiting an hour)."""
    async with gw.app.state.database.session() as session:
        found = await session.get(db.File, file_id)
        assert found is not None and found.expires_at is not None
        await session.execute(update(db.File).where(db.File.id == file_id).values(expires_at=found.expires_at - by))


# -- /v1/responses ----------------------------------------------------------------------------
def _responses_lines() -> bytes:
    schema = {"type": "object", "properties": {"score": {"type": "integer"}}, "required": ["score"]}
    bodies: list[dict[str, Any]] = [
        {"input": "Tell me about the sea.", "max_output_tokens": 6},
        {
            "input": [{"role": "user", "content": [{"type": "input_text", "text": "Score the sea."}]}],
            "instructions": "Answer in JSON.",
            "max_output_tokens": 12,
            "text": {"format": {"type": "json_schema", "name": "score", "schema": schema}},
        },
        {"input": [{"role": "user", "content": "Hi"}], "store": False},
        {"input": "Remember this.", "store": True},  # refused for its line: nothing is stored server-side
    ]
    lines = [
        {"custom_id": f"r-{i}", "method": "POST", "url": "/v1/responses", "body": {"model": SERVED, "temperature": 0, **b}}
        for i, b in enumerate(bodies)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def test_a_responses_batch_through_the_gateway_parses_as_openai_responses(tmp_path, tiny_model: Path):
    from nightshift.engine.base import EngineSpec
    from nightshift.engine.tokens import build_token_counter
    from nightshift.engine.vllm_engine import VLLMEngine
    from nightshift.settings import EngineConfig

    config = EngineConfig(max_model_len=512, default_max_tokens=8)
    engine = VLLMEngine(
        EngineSpec(model_path=str(tiny_model), served_model_name=SERVED, endpoint=Endpoint.RESPONSES, config=config)
    )

    async def body(gw: Gateway) -> None:
        client = _client(gw)
        uploaded = await client.files.create(file=("responses.jsonl", _responses_lines()), purpose="batch")
        batch = await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/responses", completion_window="24h")
        assert batch.endpoint == "/v1/responses"
        (submitted,) = gw.orchestrator.submits
        assert submitted["endpoint"] is Endpoint.RESPONSES

        # The run: the flow's validation and the vLLM engine on the lines the gateway stored.
        store: ArtifactStore = gw.app.state.store
        source = store.read_bytes(submitted["source_uri"])
        lines = read_lines(source, uri="responses.jsonl", max_lines=100, max_bytes=1 << 20)
        checked = validate_lines(
            lines,
            endpoint=Endpoint.RESPONSES,
            max_model_len=config.max_model_len,
            count_tokens=build_token_counter(str(tiny_model)),
            served_model=SERVED,
        )
        rows = engine.run(checked.valid)
        rows += [
            ResultRow(line=e.line, custom_id=e.custom_id, error=BatchError(code=e.code, message=e.message, param=e.param))
            for e in checked.errors
        ]
        _publish(store, batch.id, Endpoint.RESPONSES, source, rows)

        done = await client.batches.retrieve(batch.id)
        assert done.status == "completed"
        assert done.request_counts is not None and (done.request_counts.completed, done.request_counts.failed) == (3, 1)
        output = [json.loads(line) for line in (await client.files.content(done.output_file_id)).text.splitlines()]
        assert [o["custom_id"] for o in output] == ["r-0", "r-1", "r-2"]
        responses = [Response.model_validate(o["response"]["body"]) for o in output]
        for parsed in responses:
            assert parsed.object == "response" and parsed.model == SERVED
            assert parsed.output[0].type == "message" and parsed.output_text
            assert parsed.usage is not None and parsed.usage.input_tokens > 0 and parsed.usage.output_tokens > 0
        assert responses[0].usage.output_tokens == 6 and responses[0].status == "incomplete"
        assert responses[1].output_text.startswith('{"score":')  # text.format json_schema honoured
        assert responses[1].instructions == "Answer in JSON."
        # nightshift's usage comes from the Responses names (input_tokens/output_tokens).
        assert done.usage is not None
        assert done.usage.input_tokens == sum(r.usage.input_tokens for r in responses)
        assert done.usage.output_tokens == sum(r.usage.output_tokens for r in responses)
        (error,) = [json.loads(line) for line in (await client.files.content(done.error_file_id)).text.splitlines()]
        assert error["custom_id"] == "r-3" and error["error"]["code"] == "unsupported_parameter"
        assert error["error"]["param"] == "store"

    run_gateway(settings_for(tmp_path), body)


# -- expiry -----------------------------------------------------------------------------------
def test_upload_expiry_is_openais_form_fields_reported_and_honoured(tmp_path):
    async def body(gw: Gateway) -> None:
        client = _client(gw)
        kept = await client.files.create(file=("a.jsonl", chat_lines(1)), purpose="batch")
        short = await client.files.create(
            file=("b.jsonl", chat_lines(2)), purpose="batch", expires_after={"anchor": "created_at", "seconds": HOUR}
        )
        assert kept.expires_at is None
        assert short.expires_at == short.created_at + HOUR
        assert (await client.files.retrieve(short.id)).expires_at == short.expires_at
        listed = {f.id: f.expires_at async for f in client.files.list()}
        assert listed == {kept.id: None, short.id: short.expires_at}

        for expiry, param in (
            ({"anchor": "created_at", "seconds": 60}, "expires_after[seconds]"),
            ({"anchor": "created_at", "seconds": 2_592_001}, "expires_after[seconds]"),
            ({"anchor": "last_active_at", "seconds": HOUR}, "expires_after[anchor]"),
        ):
            with pytest.raises(openai.BadRequestError) as refused:
                await client.files.create(file=("c.jsonl", chat_lines(1)), purpose="batch", expires_after=expiry)  # type: ignore[arg-type]
            assert refused.value.body["param"] == param  # type: ignore[index]

        # An hour on, the id is gone at once, and the sweep deletes the bytes; the other file stays.
        await _age_file(gw, short.id, timedelta(hours=1))
        with pytest.raises(openai.NotFoundError):
            await client.files.retrieve(short.id)
        assert [f.id async for f in client.files.list()] == [kept.id]
        assert len(list((tmp_path / "store" / "files").rglob("*.jsonl"))) == 2
        assert await purge_deleted(gw.app.state.gateway) == 1
        stored = list((tmp_path / "store" / "files").rglob("*.jsonl"))
        assert [p.stem for p in stored] == [kept.id]

    run_gateway(settings_for(tmp_path), body)


def test_output_expiry_reaches_the_batchs_output_and_error_files_and_is_honoured(tmp_path):
    async def body(gw: Gateway) -> None:
        client = _client(gw)
        source = chat_lines(2)
        uploaded = await client.files.create(file=("in.jsonl", source), purpose="batch")

        async def create(seconds: int) -> Any:
            return await client.batches.create(
                input_file_id=uploaded.id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                output_expires_after={"anchor": "created_at", "seconds": seconds},
            )

        for seconds, why in ((60, "greater than or equal to 3600"), (8 * 24 * HOUR, "storage retention")):
            with pytest.raises(openai.BadRequestError) as refused:
                await create(seconds)
            assert refused.value.body["param"] == "output_expires_after.seconds"  # type: ignore[index]
            assert why in refused.value.message
        assert await gw.rows() == []  # a refused create leaves no batch behind

        batch = await create(2 * HOUR)
        assert (await _batch_row(gw, batch.id)).output_expires_after == 2 * HOUR
        answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}
        rows = [
            ResultRow(line=1, custom_id="req-0", body=answer),
            ResultRow(line=2, custom_id="req-1", error=BatchError(code="engine_error", message="boom")),
        ]
        _publish(gw.app.state.store, batch.id, Endpoint.CHAT_COMPLETIONS, source, rows)
        done = await client.batches.retrieve(batch.id)
        assert done.status == "completed" and done.output_file_id and done.error_file_id
        outputs = [await client.files.retrieve(done.output_file_id), await client.files.retrieve(done.error_file_id)]
        for f in outputs:
            assert f.expires_at == f.created_at + 2 * HOUR
        assert (await client.files.retrieve(uploaded.id)).expires_at is None  # the input keeps its own (none)

        for f in outputs:
            await _age_file(gw, f.id, timedelta(hours=2))
        assert await purge_deleted(gw.app.state.gateway) == 2
        for f in outputs:
            with pytest.raises(openai.NotFoundError):
                await client.files.content(f.id)
        version = gw.app.state.store.newest(batch.id, "manifest.json")
        assert not Path(version.output).exists() and not Path(version.errors).exists()

    run_gateway(settings_for(tmp_path), body)


def test_a_batch_without_output_expiry_leaves_its_files_without_one(tmp_path):
    async def body(gw: Gateway) -> None:
        client = _client(gw)
        source = chat_lines(1)
        uploaded = await client.files.create(file=("in.jsonl", source), purpose="batch")
        batch = await client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
        answer = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}
        _publish(
            gw.app.state.store, batch.id, Endpoint.CHAT_COMPLETIONS, source, [ResultRow(line=1, custom_id="req-0", body=answer)]
        )
        done = await client.batches.retrieve(batch.id)
        assert done.status == "completed"
        assert (await client.files.retrieve(done.output_file_id)).expires_at is None
        assert await purge_deleted(gw.app.state.gateway) == 0

    run_gateway(settings_for(tmp_path), body)


def test_the_expiry_form_fields_fit_the_upload_form_limit(tmp_path):
    """The raw wire format the ``openai`` client sends (bracketed form names), checked without it."""

    async def body(gw: Gateway) -> None:
        form = {"purpose": "batch", "expires_after[anchor]": "created_at", "expires_after[seconds]": "7200"}
        r = await gw.client.post("/v1/files", headers=gw.auth(), data=form, files={"file": ("a.jsonl", chat_lines(1))})
        assert r.status_code == 200, r.text
        assert r.json()["expires_at"] == r.json()["created_at"] + 7200
        half = {"purpose": "batch", "expires_after[seconds]": "7200"}
        r = await gw.client.post("/v1/files", headers=gw.auth(), data=half, files={"file": ("a.jsonl", chat_lines(1))})
        assert r.status_code == 400 and r.json()["error"]["param"] == "expires_after[anchor]"

    run_gateway(settings_for(tmp_path), body)


def test_openai_client_sends_the_wire_format_this_gateway_reads():
    """Guard against a client upgrade changing how ``expires_after`` is encoded."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(400, json={"error": {"message": "stop", "type": "invalid_request_error"}})

    client = openai.OpenAI(
        api_key="x", base_url="http://t/v1", http_client=httpx.Client(transport=httpx.MockTransport(handler)), max_retries=0
    )
    with pytest.raises(openai.BadRequestError):
        client.files.create(file=("a.jsonl", b"{}\n"), purpose="batch", expires_after={"anchor": "created_at", "seconds": HOUR})
    with pytest.raises(openai.BadRequestError):
        client.batches.create(
            input_file_id="f",
            endpoint="/v1/responses",
            completion_window="24h",
            output_expires_after={"anchor": "created_at", "seconds": HOUR},
        )
    upload, create = (r.read() for r in seen)
    assert b'name="expires_after[anchor]"\r\n\r\ncreated_at' in upload and b'name="expires_after[seconds]"\r\n\r\n3600' in upload
    assert json.loads(create)["output_expires_after"] == {"anchor": "created_at", "seconds": HOUR}
