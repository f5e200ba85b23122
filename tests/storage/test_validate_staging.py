"""validate-input streams: the staged files are what validating the whole file at once gives, in
input order, and a file over a limit or a failure half-way leaves nothing staged."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from nightshift.core.artifacts import compute_version, encode_rows
from nightshift.core.errors import BatchFileError
from nightshift.core.jsonl import split_lines
from nightshift.core.validation import validate_lines
from nightshift.settings import EngineConfig, LimitsConfig, StorageConfig
from tasks.validate import _error_row, stage_input
from tests.batchfiles import BAD_LINES, chat_line

ENGINE = EngineConfig(max_model_len=64)


def _count(endpoint, body):
    return sum(len(m["content"].split()) for m in body["messages"])


def _file(path: Path) -> bytes:
    long = chat_line(5)
    long["body"]["messages"][0]["content"] = "word " * 80
    rows = [chat_line(0), BAD_LINES["invalid_json"], chat_line(1), chat_line(2), "", chat_line(0), long, chat_line(3)]
    rows += [chat_line(4), chat_line(1), BAD_LINES["unknown_url"], chat_line(6)]
    data = "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows).encode() + b"\n"
    path.write_bytes(data)
    return data


def _stage(tmp_path: Path, source: Path | str, *, count=_count, storage: StorageConfig | None = None, **limits):
    return stage_input(
        str(source),
        "b1",
        None,
        model_sha256="m" * 64,
        engine=ENGINE,
        limits=LimitsConfig(**limits),
        storage=storage or StorageConfig(root=str(tmp_path / "store")),
        count_tokens=count,
        served_model="tiny",
    )


def _store_files(tmp_path: Path) -> list[Path]:
    return sorted(p for p in (tmp_path / "store").rglob("*") if p.is_file())


def test_staged_files_are_the_whole_file_validated_at_once_in_input_order(tmp_path):
    source = tmp_path / "in.jsonl"
    data = _file(source)
    whole = validate_lines(list(split_lines(data)), max_model_len=64, count_tokens=_count, served_model="tiny")
    batch = _stage(tmp_path, source, validate_window=2)  # a duplicate id three windows after its first
    assert [(e.line, e.code) for e in whole.errors if e.code != "invalid_json"] == [
        (6, "duplicate_custom_id"),
        (7, "context_length_exceeded"),
        (10, "duplicate_custom_id"),
        (11, "invalid_request"),
    ]
    sha = hashlib.sha256(data).hexdigest()
    assert batch.version == compute_version(
        input_sha256=sha, model_sha256="m" * 64, engine_params=ENGINE.output_params(), endpoint=whole.endpoint
    )
    assert (batch.input.sha256, batch.input.bytes, batch.input.lines) == (sha, len(data), 11)
    assert (batch.total_lines, batch.valid_lines, batch.invalid_lines) == (11, 6, 5)
    assert Path(batch.valid_path).read_bytes() == encode_rows(whole.valid)
    assert Path(batch.invalid_path).read_bytes() == encode_rows(_error_row(e) for e in whole.errors)
    assert Path(batch.input.path.removeprefix("file://")).read_bytes() == data
    assert not [p for p in _store_files(tmp_path) if p.name.endswith(".tmp")]
    again = _stage(tmp_path, source, validate_window=1000)
    assert again == batch and Path(again.valid_path).read_bytes() == encode_rows(whole.valid)


@pytest.mark.parametrize(
    ("limits", "message"),
    [({"max_lines": 10}, "more than 10 request lines"), ({"max_bytes": 100}, "over the limit of 100 bytes")],
)
def test_a_file_over_a_limit_fails_with_nothing_staged(tmp_path, limits, message):
    source = tmp_path / "in.jsonl"
    _file(source)
    with pytest.raises(BatchFileError, match=message):
        _stage(tmp_path, source, validate_window=2, **limits)
    assert _store_files(tmp_path) == []


def test_a_failure_half_way_leaves_no_staged_file(tmp_path):
    source = tmp_path / "in.jsonl"
    _file(source)
    seen = []

    def count(endpoint, body):
        seen.append(body)
        if len(seen) == 4:  # in the third window, after two were written
            raise RuntimeError("tokenizer crashed")
        return _count(endpoint, body)

    with pytest.raises(RuntimeError, match="tokenizer crashed"):
        _stage(tmp_path, source, count=count, validate_window=2)
    assert _store_files(tmp_path) == []


def test_on_s3_the_input_streams_in_and_the_staged_objects_appear_whole_or_not_at_all(tmp_path, s3_bucket, s3_endpoint):
    from nightshift.storage import ArtifactStore

    storage = StorageConfig(root=f"{s3_bucket}/store", endpoint_url=s3_endpoint)
    store = ArtifactStore.from_config(storage)
    data = _file(tmp_path / "in.jsonl")
    source = f"{s3_bucket}/inputs/in.jsonl"
    store.fs.pipe_file(source.removeprefix("s3://"), data)
    whole = validate_lines(list(split_lines(data)), max_model_len=64, count_tokens=_count, served_model="tiny")

    def boom(endpoint, body):
        raise RuntimeError("tokenizer crashed")

    with pytest.raises(RuntimeError):
        _stage(tmp_path, source, count=boom, storage=storage, validate_window=2)
    assert not store.fs.exists(f"{store.root}/batches")
    batch = _stage(tmp_path, source, storage=storage, validate_window=2)
    assert batch.input.sha256 == hashlib.sha256(data).hexdigest() and batch.input.path.startswith("s3://")
    assert store.read_bytes(batch.valid_path) == encode_rows(whole.valid)
    assert store.read_bytes(batch.invalid_path) == encode_rows(_error_row(e) for e in whole.errors)


def test_the_model_is_read_from_the_head_of_an_s3_input_by_the_one_line_rule(tmp_path, s3_bucket, s3_endpoint, monkeypatch):
    """The flow picks the batch's model (and starts its engine) from the file's first lines, before
    validation; on S3 as on disk, by the same rule as validation, and never past ``HEAD_BYTES``."""
    import tasks.model
    from nightshift.core.catalogue import Catalogue, ModelEntry
    from nightshift.core.validation import batch_model
    from nightshift.storage import ArtifactStore
    from tasks.model import _head_lines

    storage = StorageConfig(root=f"{s3_bucket}/store", endpoint_url=s3_endpoint)
    store = ArtifactStore.from_config(storage)
    lines = [{"not": "a request"}, chat_line(0), chat_line(1)]
    lines[1]["body"]["model"], lines[2]["body"]["model"] = "unknown", "tiny-b"
    data = ("\ufeff" + "\n".join(json.dumps(line) for line in lines) + "\n").encode()
    source = f"{s3_bucket}/inputs/head.jsonl"
    store.fs.pipe_file(source.removeprefix("s3://"), data)
    local = tmp_path / "head.jsonl"
    local.write_bytes(data)
    catalogue = Catalogue(default="tiny-a", models={"tiny-a": ModelEntry(source="a"), "tiny-b": ModelEntry(source="b")})

    assert list(_head_lines(source, storage)) == list(split_lines(data)) == list(_head_lines(str(local), StorageConfig()))
    assert batch_model(_head_lines(source, storage), catalogue) == "tiny-b"
    monkeypatch.setattr(tasks.model, "HEAD_BYTES", len(json.dumps(lines[0])) + 10)  # the head ends inside line 2
    assert batch_model(_head_lines(source, storage), catalogue) is None  # not read: the default model serves
