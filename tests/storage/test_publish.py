"""publish-results and partial results, both through merge_results, on shards whose lines are
scattered and shuffled: the files equal a stable sort of every row (what publishing did before)."""

from __future__ import annotations

import hashlib
import json
import random
from datetime import UTC, datetime

from prefect.logging import disable_run_logger

from nightshift.core.artifacts import (
    FileRecord,
    ModelRecord,
    ResultRow,
    encode_rows,
    to_output_line,
    total_usage,
    unanswered_rows,
)
from nightshift.core.jsonl import split_lines
from nightshift.core.protocol import BatchError, Endpoint, Usage, ValidRequest
from nightshift.core.sharding import ShardSpec, shard_name
from nightshift.engine.runner import ShardOutcome
from nightshift.settings import StorageConfig
from nightshift.storage import ArtifactStore
from nightshift.storage.cache import ResultCache
from nightshift.storage.partial import publish_partial
from tasks.infer import InferenceReport
from tasks.publish import PublishRequest, publish_results
from tasks.shard import ShardPlan
from tasks.validate import ValidatedBatch

VERSION = "feedfacecafebeef"
N = 120


def _answer(line: int, *, fails: bool = False, key: str | None = None) -> ResultRow:
    if fails:
        return ResultRow(line=line, custom_id=f"r{line}", error=BatchError(code="engine_error", message="oom", line=line))
    body = {"object": "chat.completion", "choices": [{"index": 0, "message": {"content": f"a{line}"}}]}
    return ResultRow(
        line=line, custom_id=f"r{line}", body=body, usage=Usage(prompt_tokens=4, completion_tokens=line % 3), cache_key=key
    )


def _files(rows: list[ResultRow], version: str) -> tuple[bytes, bytes]:
    """What publishing wrote before merge_results: every row in memory, stably sorted, encoded at once."""
    rows = sorted(rows, key=lambda r: r.line)
    lines = [to_output_line(r, version=version) for r in rows]
    return encode_rows(x for x in lines if x.ok), encode_rows(x for x in lines if not x.ok)


def _scattered(lines: list[int], shard_size: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    lines = list(lines)
    rng.shuffle(lines)
    return [lines[s : s + shard_size] for s in range(0, len(lines), shard_size)]


def test_publish_results_streams_scattered_shards_into_input_order(tmp_path):
    storage = StorageConfig(root=str(tmp_path / "store"))
    store = ArtifactStore.from_config(storage)
    paths = store.batch("batch_pub", VERSION)
    invalid = [
        ResultRow(line=i, custom_id=None, error=BatchError(code="invalid_json", message="bad", line=i)) for i in (3, 50, 51)
    ]
    cached = [
        ResultRow(line=i, custom_id=f"r{i}", body={"cached": i}, usage=Usage(prompt_tokens=1), cached=True) for i in (7, 8, 90)
    ]
    store.write_bytes(paths.invalid, encode_rows(invalid))
    store.write_bytes(paths.cached, encode_rows(cached))
    rest = [i for i in range(1, N + 1) if i not in {3, 50, 51, 7, 8, 90}]
    specs, outcomes, shard_rows = [], [], []
    for index, lines in enumerate(_scattered(rest, 25, seed=3)):
        rows = [_answer(i, fails=i % 9 == 0, key=f"{i:064x}" if i % 2 else None) for i in lines]
        name, data = shard_name(index), encode_rows(rows)
        store.write_bytes(paths.shard_results(name), data)
        digest = hashlib.sha256(data).hexdigest()
        specs.append(
            ShardSpec(
                index=index,
                name=name,
                first_line=min(lines),
                last_line=max(lines),
                num_requests=len(rows),
                sha256="0" * 64,
                bytes=1,
            )
        )
        outcome = ShardOutcome(
            name=name,
            results_path=paths.shard_results(name),
            results_sha256=digest,
            results_bytes=len(data),
            num_requests=len(rows),
            num_errors=sum(r.error is not None for r in rows),
            usage=total_usage(rows),
            seconds=1.5,
        )
        outcomes.append(outcome)
        shard_rows += rows
    batch = ValidatedBatch(
        batch_id="batch_pub",
        version=VERSION,
        endpoint=Endpoint.CHAT_COMPLETIONS,
        input=FileRecord(path=store.uri(paths.input), sha256="1" * 64, bytes=10, lines=N),
        valid_path=paths.valid,
        invalid_path=paths.invalid,
        total_lines=N,
        valid_lines=N - 3,
        invalid_lines=3,
        published=False,
    )
    request = PublishRequest(
        storage=storage,
        batch=batch,
        plan=ShardPlan(shards=specs, cached_path=paths.cached, cacheable=60, cache_hits=3),
        inference=InferenceReport(outcomes=outcomes[::-1], reused_shards=[specs[1].name], engine_requests=90, seconds=4.0),
        model=ModelRecord(name="tiny", source="/models/tiny", sha256="2" * 64),
        engine={"kind": "vllm"},
        engine_params_in_version={"dtype": "float32"},
        created_at=datetime(2026, 11, 29, tzinfo=UTC),
        timings={"infer_s": 4.0},
    )
    with disable_run_logger():
        manifest = publish_results.fn(request)

    out, err = _files(invalid + cached + shard_rows, VERSION)
    assert store.read_bytes(paths.output) == out and store.read_bytes(paths.errors) == err
    for record, data in ((manifest.output_file, out), (manifest.error_file, err)):
        assert (record.sha256, record.bytes, record.lines) == (hashlib.sha256(data).hexdigest(), len(data), data.count(b"\n"))
    every = invalid + cached + shard_rows
    completed = sum(r.error is None for r in every)
    assert manifest.request_counts.model_dump() == {"total": N, "completed": completed, "failed": N - completed}
    assert manifest.usage == total_usage(every)
    assert [s.name for s in manifest.shards] == [s.name for s in specs]  # plan order, not outcome order
    assert [s.reused for s in manifest.shards] == [i == 1 for i in range(len(specs))]
    assert all(s.results.sha256 == o.results_sha256 for s, o in zip(manifest.shards, outcomes, strict=True))
    assert json.loads(store.read_bytes(paths.manifest))["request_counts"]["total"] == N
    # Every good answer with a key went to the request cache, pointing at its shard's results.
    keyed = {r.cache_key: r for r in shard_rows if r.cache_key and r.error is None}
    hits = ResultCache(store).lookup(keyed)
    assert hits.keys() == keyed.keys() and all(hits[k].body == keyed[k].body for k in keyed)


def _valid(line: int) -> ValidRequest:
    return ValidRequest(line=line, custom_id=f"r{line}", url=Endpoint.CHAT_COMPLETIONS, body={"messages": []})


def test_partial_results_keep_every_line_once_with_scattered_finished_shards(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    paths = store.batch("batch_stop", VERSION)
    invalid = [ResultRow(line=i, custom_id=None, error=BatchError(code="invalid_json", message="bad", line=i)) for i in (1, 60)]
    valid = [_valid(i) for i in range(2, N + 1) if i != 60]
    store.write_bytes(paths.valid, encode_rows(valid))
    store.write_bytes(paths.invalid, encode_rows(invalid))
    finished: list[ResultRow] = []
    for index, lines in enumerate(_scattered([v.line for v in valid], 20, seed=5)[:3]):  # 3 of 6 shards finished
        rows = [_answer(i, fails=i % 13 == 0) for i in lines]
        store.write_bytes(paths.shard_results(shard_name(index)), encode_rows(rows))
        finished += rows

    partial = publish_partial(store, "batch_stop", "unused", code="batch_cancelled", message="cancelled")

    rows = invalid + finished
    rows += unanswered_rows(valid, rows, code="batch_cancelled", message="cancelled")
    out, err = _files(rows, VERSION)
    assert store.read_bytes(paths.partial_output) == out and store.read_bytes(paths.partial_errors) == err
    completed = sum(r.error is None for r in finished)
    assert partial.request_counts.model_dump() == {"total": N, "completed": completed, "failed": N - completed}
    assert partial.usage == total_usage(r for r in rows if r.error is None)
    assert partial.output_file.sha256 == hashlib.sha256(out).hexdigest() and partial.error_file.lines == N - completed


def test_partial_results_of_an_unvalidated_batch_number_lines_like_validation(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    data = (
        b'\xef\xbb\xbf{"custom_id": "a"}\r\n'
        b"\n"
        b'{"custom_id": "b", "x": "\xe2\x80\xa8"}\n'
        b"not json\n"
        b"   \n"
        b'\xff{"custom_id": "c"}\n'
        b'["custom_id"]\n'
        b'{"custom_id": "d"}'
    )
    store.write_bytes(f"{store.root}/files/org/file-1.jsonl", data)
    partial = publish_partial(store, "batch_early", f"{store.root}/files/org/file-1.jsonl", code="batch_expired", message="late")

    expected = []
    for number, text in split_lines(data):
        try:
            custom_id = json.loads(text).get("custom_id")
        except (ValueError, AttributeError):
            custom_id = None
        expected.append(
            ResultRow(line=number, custom_id=custom_id, error=BatchError(code="batch_expired", message="late", line=number))
        )
    paths = store.batch("batch_early", "unvalidated")
    assert store.read_bytes(paths.partial_errors) == _files(expected, "unvalidated")[1]
    assert store.read_bytes(paths.partial_output) == b""
    assert [json.loads(x)["custom_id"] for x in store.read_bytes(paths.partial_errors).splitlines()] == [
        "a",
        "b",
        None,
        None,
        None,
        "d",
    ]
    assert partial.request_counts.model_dump() == {"total": 6, "completed": 0, "failed": 6}
