"""The Prefect UI view of a batch run: artifact keys, the summary markdown, the output and error tables."""

import re
from datetime import UTC, datetime, timedelta

import pytest

from nightshift.core.artifacts import CacheStats, FileRecord, Manifest, ModelRecord, RequestCounts, ShardRecord
from nightshift.core.lineage import Lineage
from nightshift.core.protocol import BatchError, BatchRequestOutput, BatchResponse, Endpoint, Usage
from nightshift.core.report import artifact_key, error_rows, format_duration, output_rows, summary_markdown
from nightshift.core.sla import Tier, sla_report

T0 = datetime(2030, 5, 1, 12, 0, tzinfo=UTC)


def _file(name: str, lines: int, size: int = 2048) -> FileRecord:
    return FileRecord(path=f"file:///store/batches/b/v1/{name}", sha256="ab" * 32, bytes=size, lines=lines)


def _manifest(**kw) -> Manifest:
    shard = ShardRecord(name="shard-00000", index=0, num_requests=10, input=_file("s.jsonl", 10))
    base = dict(
        batch_id="nightly_Reviews.v2",
        version="0123456789abcdef",
        endpoint=Endpoint.CHAT_COMPLETIONS,
        created_at=T0,
        completed_at=T0 + timedelta(minutes=2),
        input=_file("input.jsonl", 50),
        model=ModelRecord(name="tiny", source="/models/tiny", sha256="cd" * 32),
        engine={"backend": "actor", "device": "cpu", "dtype": "float32", "max_num_seqs": 256, "seed": 0},
        engine_params_in_version={},
        shards=[shard, shard.model_copy(update={"name": "shard-00001", "index": 1, "reused": True})],
        output_file=_file("output.jsonl", 47, 40_000),
        error_file=_file("errors.jsonl", 3, 900),
        request_counts=RequestCounts(total=50, completed=47, failed=3),
        cache=CacheStats(cacheable=47, hits=5),
        usage=Usage(prompt_tokens=600, completion_tokens=376, total_tokens=976),
        timings={"validate_s": 0.42, "infer_s": 12.3},
    )
    return Manifest(**(base | kw))


def _sla(minutes_late: float = -239) -> object:
    deadline = T0 + timedelta(hours=4)
    return sla_report(
        tier=Tier.PREMIUM,
        submitted_at=T0,
        finished_at=deadline + timedelta(minutes=minutes_late),
        requests=45,
        tokens=900,
        busy_seconds=10.0,
        deadline=deadline,
    )


def _ok(cid: str, text: str, prompt: int = 12, completion: int = 8) -> BatchRequestOutput:
    body = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }
    return BatchRequestOutput(custom_id=cid, response=BatchResponse(status_code=200, request_id="r", body=body), error=None)


def _err(cid: str | None, code: str, line: int, message: str = "bad") -> BatchRequestOutput:
    return BatchRequestOutput(custom_id=cid, response=None, error=BatchError(code=code, message=message, line=line))


@pytest.mark.parametrize(
    ("batch_id", "key"),
    [
        ("mixed", "batch-mixed-summary"),
        ("drill-3fa9c1", "batch-drill-3fa9c1-summary"),
    ],
)
def test_keys_of_prefect_safe_ids_are_the_id_itself(batch_id, key):
    assert artifact_key(batch_id, "summary") == key


def test_keys_are_prefect_safe_stable_and_distinct_for_ids_that_fold_together():
    ids = ["My_Batch", "my-batch", "my.batch", "MY BATCH", "___", "x" * 200, "x" * 201]
    keys = [artifact_key(i, "outputs") for i in ids]
    assert all(re.fullmatch(r"[a-z0-9-]+", k) for k in keys)
    assert len(set(keys)) == len(ids)  # a lossy slug gets a hash of the exact id
    assert keys == [artifact_key(i, "outputs") for i in ids]  # stable across calls (and processes: sha256)
    assert keys[0].startswith("batch-my-batch-") and keys[0].endswith("-outputs")
    assert all(len(k) <= len("batch--outputs") + 48 + 7 for k in keys)
    assert {artifact_key("b", k) for k in ("summary", "progress", "outputs", "errors")} == {
        "batch-b-summary",
        "batch-b-progress",
        "batch-b-outputs",
        "batch-b-errors",
    }
    with pytest.raises(ValueError, match="unknown artifact kind"):
        artifact_key("b", "Summary")


def test_summary_names_batch_tier_pool_counts_usage_sla_files_and_engine():
    md = summary_markdown(
        _manifest(), _sla(), manifest_uri="file:///store/batches/b/v1/manifest.json", pool="gpu-spot", engine_requests=42
    )
    assert md.startswith("# Batch `nightly_Reviews.v2`")
    assert "Version `0123456789abcdef`" in md and "42 requests sent to the engine" in md
    assert "**Tier** `premium` on pool `gpu-spot`" in md
    assert "**SLA met** with 3 h 59 min slack" in md
    assert "| 50 | 47 | 3 | 5 | 600 | 376 | 976 |" in md
    assert "- **output** 47 lines, 39.1 KiB, sha256 `abababababab`  \n  `file:///store/batches/b/v1/output.jsonl`\n" in md
    assert "- **errors** 3 lines, 900 B, sha256" in md and "`file:///store/batches/b/v1/errors.jsonl`" in md
    assert "- **manifest**  \n  `file:///store/batches/b/v1/manifest.json`" in md
    assert "**engine** `actor`: device cpu, dtype float32, max_num_seqs 256" in md
    assert "**model** `tiny` (`cdcdcdcdcdcd`) from `/models/tiny`" in md
    assert "**shards** 2 (1 reused" in md and "validate 0.4 s · infer 12.3 s" in md
    assert "lineage" not in md


def test_summary_of_a_late_reused_run_called_directly():
    lineage = Lineage(parent_batch_id="b", parent_version="fedcba9876543210", relation="retry-failed")
    md = summary_markdown(
        _manifest(lineage=lineage, timings={}), _sla(minutes_late=2.5), manifest_uri="m.json", pool=None, reused=True
    )
    assert "**SLA **BREACHED**** with 2 min 30 s late" not in md  # no doubled emphasis
    assert "**SLA BREACHED** 2 min 30 s late" in md
    assert "pool `none (called directly)`" in md
    assert "reused: this version was already published, nothing ran" in md
    assert "**lineage** retry-failed of `b` version `fedcba9876543210`" in md
    assert "stages" not in md


def test_format_duration():
    assert [format_duration(s) for s in (0, 42.4, 65, 3600, 14_340, -150)] == [
        "0 s",
        "42 s",
        "1 min 5 s",
        "1 h 0 min",
        "3 h 59 min",
        "-2 min 30 s",
    ]


def test_output_rows_take_the_first_answers_on_one_line_with_tokens():
    lines = [_ok(f"req-{i:03d}", f"answer {i}\nsecond line " + "w" * 100) for i in range(15)]
    lines.insert(1, _err("bad", "invalid_request", 2))  # error lines are not outputs
    rows = output_rows(lines, limit=10, width=80)
    assert [r["custom_id"] for r in rows] == [f"req-{i:03d}" for i in range(10)]
    first = rows[0]
    assert len(first["answer"]) == 80 and first["answer"].startswith("answer 0 second line w") and first["answer"][-1] == "…"
    assert first | {"answer": None} == {
        "custom_id": "req-000",
        "answer": None,
        "finish_reason": "length",
        "prompt_tokens": 12,
        "completion_tokens": 8,
    }
    assert output_rows([_ok("short", "hi")])[0]["answer"] == "hi"


def test_output_rows_of_completions_and_embeddings():
    completion = BatchRequestOutput(
        custom_id="c",
        response=BatchResponse(
            status_code=200, request_id="r", body={"choices": [{"text": "once upon", "finish_reason": "stop"}]}
        ),
        error=None,
    )
    embedding = BatchRequestOutput(
        custom_id="e",
        response=BatchResponse(status_code=200, request_id="r", body={"data": [{"embedding": [0.1] * 576}], "usage": {}}),
        error=None,
    )
    rows = output_rows([completion, embedding])
    assert [(r["answer"], r["finish_reason"]) for r in rows] == [("once upon", "stop"), ("[embedding, 576 dims]", None)]
    assert rows[1]["prompt_tokens"] is None


def test_error_rows_count_by_code_most_frequent_first_with_an_example():
    lines = [
        _err(None, "invalid_json", 4, "line 4 is not JSON: Expecting value"),
        _err("bad-url", "invalid_url", 11, "url /v1/images/generations is not served"),
        _err("a", "context_length_exceeded", 20, "prompt has 2400 tokens, " + "x" * 200),
        _err("b", "context_length_exceeded", 31, "prompt has 2500 tokens"),
    ]
    rows = error_rows(lines)
    assert [(r["error_code"], r["count"], r["first_line"]) for r in rows] == [
        ("context_length_exceeded", 2, 20),
        ("invalid_json", 1, 4),
        ("invalid_url", 1, 11),
    ]
    assert rows[0]["example"].startswith("prompt has 2400 tokens") and len(rows[0]["example"]) == 80
    assert sum(r["count"] for r in rows) == len(lines)


def test_no_errors_read_as_none_not_as_an_empty_table():
    assert error_rows([]) == [{"error_code": "none", "count": 0, "first_line": None, "example": ""}]


def test_summary_shows_the_estimate_beside_the_actual_cost():
    from nightshift.core.catalogue import EngineHourPrices
    from nightshift.core.cost import engine_cost
    from nightshift.core.estimate import count_lines, estimate_batch, throughput_basis
    from nightshift.core.placement import Placement, PoolThroughput
    from tests.core.test_cost_estimate import CATALOGUE, _line

    count = count_lines([_line({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8})] * 50, default_max_tokens=1,
                        max_model_len=64)  # fmt: skip
    basis = throughput_basis(PoolThroughput(pool="gpu-spot"), model="small", default_rps=5.0, default_setting="pools.x")
    placement = Placement(pool="gpu-spot", kind="spot", reason="slack", estimated_seconds=10, remaining_seconds=3600)
    estimate = estimate_batch(count, model="small", catalogue=CATALOGUE, placement=placement, basis=basis, replicas=1, made_at=T0)
    cost = engine_cost(engine_seconds=12.0, model="small", pool="spot", prices=EngineHourPrices(spot=0.10, dedicated=0.40))
    md = summary_markdown(_manifest(estimate=estimate, cost=cost), _sla(), manifest_uri="m.json", pool="gpu-spot")
    assert f"**Cost** ${12 / 3600 * 0.10:.6f} on spot capacity" in md and f"spot saving ${12 / 3600 * 0.30:.6f}" in md
    assert "| estimate (default) | 50 | ~" in md and "| ≤400 | 10 s | 0.0028 | spot |" in md
    assert "| actual | 50 | 600 | 376 | 12 s | 0.0033 | spot |" in md
    assert "Estimate basis: no history of small on gpu-spot: default pools.x = 5 req/s" in md
    before_costs = summary_markdown(_manifest(), _sla(), manifest_uri="m.json", pool=None)
    assert "Cost" not in before_costs and "estimate" not in before_costs  # a version recorded before costs shows none
