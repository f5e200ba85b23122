"""The real flow: real Prefect server, local Ray, real vLLM on the tiny model."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from tests.batchfiles import check_mixed_batch, read_jsonl, write_batch
from tests.engines import engine_requests_served as _engine_requests_served

pytestmark = pytest.mark.usefixtures("ray_session", "prefect_api")


def _manifest(result) -> dict:
    return json.loads(Path(result.manifest_uri.removeprefix("file://")).read_text())


def _run(path: Path, context=None, **kw):
    from flows.batch import BatchRunParameters, process_batch

    return process_batch(BatchRunParameters(input_uri=str(path), **kw), context)


def test_another_model_and_streaming_are_refused_per_line(tmp_path, engine_env):
    """Issue 23's lines through the real flow: never answered by the served model, never silently
    streamed; one error line each naming the field, the rest answered."""
    src = tmp_path / "refused.jsonl"
    write_batch(src, 4, ["unknown_model", "stream"])
    result = _run(src, tier="premium")
    assert result.request_counts.model_dump() == {"total": 6, "completed": 4, "failed": 2}
    errors = {e["custom_id"]: e["error"] for e in read_jsonl(result.error_uri)}
    assert errors["other-model"]["code"] == "model_not_found" and errors["other-model"]["param"] == "model"
    assert errors["streamed"]["code"] == "unsupported_parameter" and errors["streamed"]["param"] == "stream"


def test_mixed_batch_gives_47_outputs_and_3_errors(tmp_path, engine_env):
    src = tmp_path / "mixed.jsonl"
    write_batch(src, 47, ["invalid_json", "unknown_url", "bad_body"])
    result = _run(src, tier="premium")

    out, err = check_mixed_batch(result)

    manifest = json.loads(Path(result.manifest_uri.removeprefix("file://")).read_text())
    assert manifest["request_counts"] == {"total": 50, "completed": 47, "failed": 3}
    assert manifest["usage"]["completion_tokens"] == 47 * 8
    assert len(manifest["shards"]) == 5 and manifest["version"] == result.version
    # Prefix-cache hits of this run's engine requests (all 47: nothing came from the request cache).
    assert manifest["cache"]["hits"] == 0 and manifest["prefix_cache"]["prompt_tokens"] == manifest["usage"]["prompt_tokens"]
    assert 0 <= manifest["prefix_cache"]["cached_tokens"] < manifest["prefix_cache"]["prompt_tokens"]
    assert manifest["engine"]["kind"] == "auto" and manifest["engine"]["used"] == "vllm"  # vLLM can serve this model
    assert result.sla.met and result.sla.tier.value == "premium"
    # every hash in the manifest is the hash of the bytes on disk
    files = [manifest["input"], manifest["output_file"], manifest["error_file"]]
    files += [s["input"] for s in manifest["shards"]] + [s["results"] for s in manifest["shards"]]
    for record in files:
        data = Path(record["path"].removeprefix("file://")).read_bytes()
        assert hashlib.sha256(data).hexdigest() == record["sha256"] and len(data) == record["bytes"]
    assert manifest["input"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()

    arts = _artifacts(result.flow_run_id)
    assert set(arts) == {"batch-mixed-summary", "batch-mixed-progress", "batch-mixed-outputs", "batch-mixed-errors"}
    assert [arts[f"batch-mixed-{k}"].type for k in ("summary", "progress", "outputs", "errors")] == [
        "markdown",
        "progress",
        "table",
        "table",
    ]
    assert arts["batch-mixed-progress"].data == 100.0  # the SLA watch's last update
    summary = arts["batch-mixed-summary"].data
    assert result.version in summary and "| 50 | 47 | 3 |" in summary and "**Tier** `premium`" in summary
    assert "**SLA met**" in summary and result.manifest_uri in summary and result.output_uri in summary
    # Estimate and actual side by side, by one cost rule. Called directly (no pool): estimated on the
    # default throughput and priced at the model's dedicated engine-hour price.
    from nightshift.settings import Settings

    settings = Settings()
    est, cost = manifest["estimate"], manifest["cost"]
    assert est["requests"] == 50 and est["placement"]["kind"] == "dedicated" and est["confidence"] == "default"
    assert est["prompt_tokens"] > 0 and est["completion_tokens"] >= manifest["usage"]["completion_tokens"]  # an upper bound
    assert est["eta_seconds"] == pytest.approx(50 / settings.pools.dedicated_requests_per_second)
    busy = manifest["timings"]["infer_s"] - manifest["timings"]["engine_wait_s"]  # the engine's busy time
    assert cost["pool"] == "dedicated" and cost["engine_seconds"] == pytest.approx(busy * settings.engine.replicas)
    price = settings.catalogue().price(cost["model"], "dedicated")
    assert cost["usd"] == pytest.approx(cost["engine_seconds"] / 3600 * price) and cost["usd"] > 0
    assert est["cost"]["usd"] == pytest.approx(est["engine_hours"] * price)
    assert f"**Cost** ${cost['usd']:.6f} on dedicated capacity" in summary
    assert "| estimate (default) | 50 |" in summary and "| actual | 50 |" in summary
    # a local store's links are file URLs
    assert f"[download](file://{result.output_uri.removeprefix('file://')})" in summary
    first = json.loads(arts["batch-mixed-outputs"].data)
    assert [r["custom_id"] for r in first] == [o["custom_id"] for o in out[:10]]
    answer = " ".join(out[0]["response"]["body"]["choices"][0]["message"]["content"].split())  # on one line
    assert first[0]["answer"] and answer.startswith(first[0]["answer"].removesuffix("…"))
    assert {r["completion_tokens"] for r in first} == {8}
    by_code = {r["error_code"]: r["count"] for r in json.loads(arts["batch-mixed-errors"].data)}
    assert by_code == dict(Counter(e["error"]["code"] for e in err)) and sum(by_code.values()) == 3


def _artifacts(flow_run_id: str) -> dict:
    """The flow run's Prefect artifacts by key."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in arts}


#: Raw vLLM in a clean process: the reference the flow must match, with no nightshift code.
RAW_CHAT = """
import json, sys
from vllm import LLM, SamplingParams
model, path = sys.argv[1], sys.argv[2]
requests = [json.loads(line) for line in open(path)]
llm = LLM(model=model, dtype="float32", enforce_eager=True, max_model_len=512, seed=0)
outs = llm.chat([r["body"]["messages"] for r in requests], SamplingParams(temperature=0, max_tokens=12), use_tqdm=False)
print(json.dumps({r["custom_id"]: o.outputs[0].text for r, o in zip(requests, outs)}))
"""


def run_against_raw_llm_chat(tmp_path: Path, tiny_model: Path):
    """12 greedy chat requests through the flow; asserts its answers equal raw ``LLM.chat``'s on
    the same prompts (in a clean process) and returns the flow's result."""
    src = tmp_path / "greedy.jsonl"
    write_batch(src, 12, max_tokens=12)
    result = _run(src)
    got = {o["custom_id"]: o["response"]["body"]["choices"][0]["message"]["content"] for o in read_jsonl(result.output_uri)}

    raw = subprocess.run(
        [sys.executable, "-c", RAW_CHAT, str(tiny_model), str(src)], capture_output=True, text=True, check=True, timeout=300
    )
    want = json.loads(raw.stdout.strip().splitlines()[-1])
    assert got == want
    assert len(set(want.values())) > 1  # different prompts, different answers: a real model ran
    return result


def test_greedy_outputs_equal_llm_chat(tmp_path, engine_env, tiny_model):
    run_against_raw_llm_chat(tmp_path, tiny_model)


def test_rerun_reuses_version_and_max_tokens_makes_a_new_one(tmp_path, engine_env):
    src = tmp_path / "again.jsonl"
    write_batch(src, 15)
    first = _run(src)
    served = _engine_requests_served()
    second = _run(src)
    assert second.reused and second.version == first.version
    assert second.engine_requests == 0 and _engine_requests_served() == served
    reused = _artifacts(second.flow_run_id)  # nothing ran, but the run still shows its batch
    assert reused["batch-again-progress"].data == 100.0 and "nothing ran" in reused["batch-again-summary"].data
    assert read_jsonl(second.output_uri) == read_jsonl(first.output_uri)

    write_batch(src, 15, max_tokens=4)
    third = _run(src)
    assert third.version != first.version and not third.reused and third.engine_requests == 15
    assert Path(first.manifest_uri.removeprefix("file://")).exists()  # the old version stays beside it
    assert _manifest(first)["lineage"] is None
    assert _manifest(third)["lineage"] == {"parent_batch_id": "again", "parent_version": first.version, "relation": "rerun"}
    assert {len(o["response"]["body"]["choices"][0]["message"]["content"]) > 0 for o in read_jsonl(third.output_uri)}


def test_crashed_run_keeps_finished_shards_and_resume_computes_only_the_rest(tmp_path, engine_env, store_root):
    from nightshift.core.runs import BatchRunContext, FaultInjection

    src = tmp_path / "crash.jsonl"
    write_batch(src, 50)  # 5 shards of 10
    served = _engine_requests_served()
    with pytest.raises(Exception, match="fault injected"):
        _run(src, BatchRunContext(drill=FaultInjection(fail_after_shards=1)))
    done = sorted(Path(store_root).glob("batches/crash/*/shards/*.results.jsonl"))
    assert 1 <= len(done) < 5
    assert not list(Path(store_root).glob("batches/crash/*/manifest.json"))
    crashed_work = _engine_requests_served() - served

    result = _run(src)
    assert result.reused_shards == len(done)
    assert result.engine_requests == 50 - 10 * len(done)
    assert _engine_requests_served() - served == crashed_work + result.engine_requests == 50
    out = read_jsonl(result.output_uri)
    assert sorted(o["custom_id"] for o in out) == [f"req-{i:03d}" for i in range(50)]


def test_ray_data_llm_backend_gives_the_same_greedy_outputs(tmp_path, engine_env, monkeypatch):
    src = tmp_path / "rdl.jsonl"
    write_batch(src, 12, ["bad_body"], max_tokens=6)
    from nightshift.engine.runner import release_all_engines

    actor = _run(src)
    # Ray Data's engine needs the CPU the warm actor reserves on this 2-CPU cluster.
    assert release_all_engines() >= 1
    monkeypatch.setenv("NIGHTSHIFT_ENGINE_BACKEND", "ray-data-llm")
    monkeypatch.setenv("NIGHTSHIFT_STORAGE_ROOT", str(tmp_path / "rdl-store"))
    rdl = _run(src)
    assert rdl.version == actor.version  # the backend changes speed, not results
    assert _engine_requests_served() == 0  # no warm actor was started: Ray Data ran the engine
    out_a, out_r = read_jsonl(actor.output_uri), read_jsonl(rdl.output_uri)
    assert len(out_r) == 12 and len(read_jsonl(rdl.error_uri)) == 1

    # Ray Data detokenizes the whole id list at the end, vLLM incrementally: they differ only in
    # how an incomplete UTF-8 byte sequence (the random tiny model emits some) is rendered.
    def text(rows):
        return [(o["custom_id"], o["response"]["body"]["choices"][0]["message"]["content"].replace("\ufffd", "")) for o in rows]

    assert text(out_r) == text(out_a)
    assert rdl.usage == actor.usage


def test_retry_failed_builds_a_linked_batch_of_the_error_lines(tmp_path, engine_env):
    from flows.retry import RetryParameters, retry_failed

    src = tmp_path / "flaky.jsonl"
    lines = write_batch(src, 9, ["unknown_url", "bad_body"])
    first = _run(src)
    retry = retry_failed(RetryParameters(batch_id="flaky"))
    assert retry.batch_id == "flaky-retry" and retry.request_counts.total == 2
    manifest = _manifest(retry)
    assert manifest["lineage"] == {"parent_batch_id": "flaky", "parent_version": first.version, "relation": "retry-failed"}
    retried = Path(manifest["input"]["path"].removeprefix("file://")).read_text().splitlines()
    assert retried == [line for line in lines if '"bad-url"' in line or '"bad-body"' in line]
