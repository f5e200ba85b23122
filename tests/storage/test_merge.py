"""merge_results: the rows of any number of unsorted sources, in input order, in bounded memory,
written atomically; equal byte for byte to sorting every row in memory (what publish did before)."""

from __future__ import annotations

import hashlib
import random
import tracemalloc
from collections.abc import Iterator

import pytest

from nightshift.core.artifacts import ResultRow, encode_rows, to_output_line, total_usage
from nightshift.core.protocol import BatchError, Usage
from nightshift.settings import StorageConfig
from nightshift.storage import ArtifactStore
from nightshift.storage.merge import AtomicWriter, line_of, merge_results

VERSION = "0123456789abcdef"


def _row(line: int, *, ok: bool = True, custom_id: str | None = None) -> ResultRow:
    cid = custom_id or f"req-{line}"
    if ok:
        body = {"object": "chat.completion", "choices": [{"index": 0, "message": {"content": f"answer {line}"}}]}
        return ResultRow(line=line, custom_id=cid, body=body, usage=Usage(prompt_tokens=line % 7 + 1, completion_tokens=2))
    return ResultRow(line=line, custom_id=cid, error=BatchError(code="engine_error", message=f"failed {line}", line=line))


def _sorted_in_memory(sources: list[list[ResultRow]]) -> tuple[bytes, bytes, tuple[int, int, int], Usage]:
    """The reference: every row in one list, stably sorted by line, encoded at once."""
    rows = [r for source in sources for r in source]
    rows.sort(key=lambda r: r.line)
    lines = [to_output_line(r, version=VERSION) for r in rows]
    ok, failed = [x for x in lines if x.ok], [x for x in lines if not x.ok]
    return encode_rows(ok), encode_rows(failed), (len(lines), len(ok), len(failed)), total_usage(rows)


def _scattered_batch(n: int, shard_size: int, seed: int = 7) -> list[list[ResultRow]]:
    """Invalid rows, cache hits (in order) and shards of scattered lines, each shard shuffled."""
    rng = random.Random(seed)
    invalid = [_row(i, ok=False) for i in range(1, n + 1) if i % 11 == 0]
    cached = [_row(i) for i in range(1, n + 1) if i % 7 == 0 and i % 11]
    rest = [i for i in range(1, n + 1) if i % 7 and i % 11]
    rng.shuffle(rest)  # shards hold no contiguous line range
    shards = [[_row(i, ok=i % 5 != 0) for i in rest[s : s + shard_size]] for s in range(0, len(rest), shard_size)]
    # The same line answered twice, in two sources: a stable sort keeps their source order.
    shards[0].append(_row(cached[0].line, custom_id="twice"))
    return [invalid, cached, *shards]


def _read(store: ArtifactStore, path: str) -> bytes:
    return store.read_bytes(path)


@pytest.mark.parametrize(("run_rows", "fan_in"), [(8192, 64), (5, 2), (9, 3)])
def test_merge_equals_a_stable_sort_of_every_row(tmp_path, run_rows, fan_in):
    sources = _scattered_batch(300, shard_size=13)
    store = ArtifactStore(str(tmp_path / "store"))
    paths = store.batch("b", VERSION)
    merged = merge_results(
        store,
        [encode_rows(s).splitlines() for s in sources],
        version=VERSION,
        output_path=paths.output,
        errors_path=paths.errors,
        run_rows=run_rows,
        fan_in=fan_in,
    )
    out, err, (total, completed, failed), usage = _sorted_in_memory(sources)
    assert _read(store, paths.output) == out and _read(store, paths.errors) == err
    assert (merged.request_counts.total, merged.request_counts.completed, merged.request_counts.failed) == (
        total,
        completed,
        failed,
    )
    assert merged.usage == usage and usage.total_tokens > 0
    for record, data, path in ((merged.output_file, out, paths.output), (merged.error_file, err, paths.errors)):
        assert record.path == store.uri(path)
        assert (record.sha256, record.bytes, record.lines) == (hashlib.sha256(data).hexdigest(), len(data), data.count(b"\n"))
    # Nothing is left beside the two files (no temp file, no spill).
    assert sorted(p.rsplit("/", 1)[1] for p in store.fs.ls(paths.root, detail=False)) == ["errors.jsonl", "output.jsonl"]


def test_fallback_rows_fill_only_the_lines_nothing_answered(tmp_path):
    store = ArtifactStore("memory://merge-fallback")
    paths = store.batch("b", VERSION)
    answered = [_row(i) for i in (9, 2, 5)]
    stopped = [_row(i, ok=False, custom_id=f"stopped-{i}") for i in range(1, 11)]
    merged = merge_results(
        store,
        [encode_rows(answered).splitlines()],
        version=VERSION,
        output_path=paths.output,
        errors_path=paths.errors,
        fallback=encode_rows(stopped).splitlines(),
    )
    out, err, *_ = _sorted_in_memory([answered, [r for r in stopped if r.line not in (2, 5, 9)]])
    assert _read(store, paths.output) == out and _read(store, paths.errors) == err
    assert merged.request_counts.model_dump() == {"total": 10, "completed": 3, "failed": 7}


def test_line_of_reads_the_line_without_parsing_and_falls_back_to_json():
    assert line_of(_row(1234).model_dump_json().encode()) == 1234
    assert line_of(b'{"custom_id": "a", "line": 17}') == 17


def _lazy_shards(n: int, shards: int) -> Iterator[Iterator[bytes]]:
    """``shards`` interleaved shards of ``n`` rows, each backwards, made as the merge reads them.

    Ids are over 64 characters: pydantic-core keeps shorter strings in its own cache (bounded, at
    16,384 entries), which would count here as growth up to that size.
    """
    pad = "-" * 64
    for k in range(shards):
        lines = reversed(range(k + 1, n + 1, shards))
        yield (_row(line, custom_id=f"req-{line}{pad}").model_dump_json().encode() for line in lines)


def _peak_kib(n: int, tmp_path) -> float:
    store = ArtifactStore(str(tmp_path / f"store-{n}"))
    paths = store.batch("b", VERSION)
    tracemalloc.start()
    try:
        sources = _lazy_shards(n, n // 100)
        merged = merge_results(
            store, sources, version=VERSION, output_path=paths.output, errors_path=paths.errors, run_rows=200, fan_in=8
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert merged.request_counts.completed == n
    return peak / 1024


def test_memory_does_not_grow_with_the_number_of_rows(tmp_path):
    # Both sizes have more runs (10, 100) than the fan-in (8) and more output than one write
    # (256 KiB): past those, only disk use grows.
    small, large = _peak_kib(1_000, tmp_path), _peak_kib(10_000, tmp_path)
    assert large < 1.3 * small, (small, large)


def test_a_failed_local_write_leaves_nothing(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    path = store.batch("b", "v").output
    with pytest.raises(RuntimeError, match="stop"), AtomicWriter(store, path) as out:
        out.write(b"x" * 100_000 + b"\n")
        raise RuntimeError("stop")
    assert not store.exists(path)
    assert store.fs.ls(store.batch("b", "v").root, detail=False) == []  # the temp file is gone too

    with AtomicWriter(store, path) as out:
        out.write(b"a\n")
        out.write(b"bc\n")
    assert store.read_bytes(path) == b"a\nbc\n"
    assert out.record().model_dump() == {
        "path": store.uri(path),
        "sha256": hashlib.sha256(b"a\nbc\n").hexdigest(),
        "bytes": 5,
        "lines": 2,
    }


def test_an_s3_upload_appears_whole_at_commit_or_not_at_all(s3_bucket, s3_endpoint):
    store = ArtifactStore.from_config(StorageConfig(root=f"{s3_bucket}/store", endpoint_url=s3_endpoint))
    path = store.batch("b", "v").output
    block = 5 * 2**20  # S3's smallest part: 12 MiB make a three-part upload
    chunk = b"x" * (2**20 - 1) + b"\n"
    with pytest.raises(RuntimeError, match="stop"), AtomicWriter(store, path, block_size=block) as out:
        for _ in range(7):
            out.write(chunk)
        store.fs.invalidate_cache()
        assert not store.fs.exists(path)  # a part is uploaded, the object does not exist yet
        raise RuntimeError("stop")
    store.fs.invalidate_cache()
    assert not store.fs.exists(path)
    bucket = s3_bucket.removeprefix("s3://")
    uploads = store.fs.call_s3("list_multipart_uploads", Bucket=bucket)
    assert not uploads.get("Uploads")  # aborted, not left to linger

    with AtomicWriter(store, path, block_size=block) as out:
        for _ in range(12):
            out.write(chunk)
    data = store.read_bytes(path)
    assert len(data) == 12 * len(chunk) == out.record().bytes
    assert hashlib.sha256(data).hexdigest() == out.record().sha256 and out.record().lines == 12


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs (a real ENOSPC), unmounted after the test; skipped where mounting is not allowed."""
    import subprocess

    folder = tmp_path / "small"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_is_a_storage_error_and_publishes_nothing(full_disk):
    from nightshift.core.errors import StorageError

    store = ArtifactStore(str(full_disk / "store"))
    paths = store.batch("b", VERSION)
    rows = [_row(i, custom_id=f"req-{i}-{'x' * 200}") for i in range(1, 8001)]  # about 3 MB of output
    with pytest.raises(StorageError, match="full"):
        merge_results(
            store, [encode_rows(rows).splitlines()], version=VERSION, output_path=paths.output, errors_path=paths.errors
        )
    assert store.fs.ls(paths.root, detail=False) == []  # neither file, nor a temp file


def test_sources_stream_from_s3_and_the_files_land_there(s3_bucket, s3_endpoint):
    from nightshift.storage.merge import stored_lines

    store = ArtifactStore.from_config(StorageConfig(root=f"{s3_bucket}/store", endpoint_url=s3_endpoint))
    paths = store.batch("b", VERSION)
    sources = _scattered_batch(200, shard_size=17, seed=11)
    stored = [f"{paths.shards}/source-{i}.jsonl" for i in range(len(sources))]
    for path, rows in zip(stored, sources, strict=True):
        store.write_bytes(path, encode_rows(rows))
    merged = merge_results(
        store, [stored_lines(store, p) for p in stored], version=VERSION, output_path=paths.output, errors_path=paths.errors
    )
    out, err, *_ = _sorted_in_memory(sources)
    assert store.read_bytes(paths.output) == out and store.read_bytes(paths.errors) == err
    assert merged.output_file.path == store.uri(paths.output) and merged.output_file.sha256 == hashlib.sha256(out).hexdigest()
