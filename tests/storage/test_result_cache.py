"""The request cache on a real store, in chunks: every entry written, every live answer found,
each results file read once per lookup, and a deleted batch a miss."""

from __future__ import annotations

from datetime import UTC, datetime

from nightshift.core.artifacts import ResultRow, encode_rows
from nightshift.core.cache import CacheEntry
from nightshift.core.protocol import BatchError, Usage
from nightshift.storage import ArtifactStore
from nightshift.storage.cache import ResultCache

NOW = datetime(2026, 11, 29, tzinfo=UTC)


class _CountingReads:
    """The store, counting reads of each results file."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store, self.reads = store, {}

    def __getattr__(self, name):
        return getattr(self.store, name)

    def read_bytes(self, path):
        self.reads[path] = self.reads.get(path, 0) + 1
        return self.store.read_bytes(path)


def _shard(store: ArtifactStore, name: str, lines: range) -> tuple[str, list[ResultRow]]:
    path = store.batch("b", "v").shard_results(name)
    rows = []
    for i in lines:
        if i % 10 == 0:
            rows.append(ResultRow(line=i, custom_id=f"r{i}", error=BatchError(code="engine_error", message="x", line=i)))
        else:
            rows.append(ResultRow(line=i, custom_id=f"r{i}", body={"n": i}, usage=Usage(prompt_tokens=i)))
    store.write_bytes(path, encode_rows(rows[::-1]))  # any order
    return path, rows


def test_record_and_lookup_in_chunks(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    first, rows_a = _shard(store, "shard-00000", range(1, 41))
    second, rows_b = _shard(store, "shard-00001", range(41, 81))
    entries = [
        CacheEntry(key=f"{r.line:064x}", batch_id="b", version="v", results_path=path, line=r.line, created_at=NOW)
        for path, rows in ((first, rows_a), (second, rows_b))
        for r in rows
    ]
    cache = ResultCache(store, chunk=7)
    assert cache.record(iter(entries)) == 80  # a generator: record never needs the whole list
    assert len(store.fs.find(store.cache_root)) == 80

    counting = _CountingReads(store)
    wanted = [e.key for e in entries] + [e.key for e in entries[:5]] + ["f" * 64]  # repeats and an unknown key
    found = ResultCache(counting, chunk=6).lookup(iter(wanted))  # type: ignore[arg-type]
    good = {f"{r.line:064x}": r for r in rows_a + rows_b if r.error is None}
    assert found == good  # failed answers are never served from the cache
    assert counting.reads == {first: 1, second: 1}

    store.fs.rm(second)  # its batch was deleted: its entries are misses, not errors
    assert ResultCache(store, chunk=3).lookup(good).keys() == {k for k, r in good.items() if r.line <= 40}
