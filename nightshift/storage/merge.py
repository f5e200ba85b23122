"""Merging result rows into the OpenAI output and error files, in input order, in bounded memory.

A batch's rows come from several files (validation errors, cache hits, one results file per
shard). Shards need not hold contiguous line ranges, and a shard's file may list its lines in
any order (requests sharing a prompt prefix run together), so no source is trusted to be sorted.
Each source is cut into sorted *runs* of at most ``run_rows`` rows, spilled to local temporary
files, and the runs are k-way merged by line number (``heapq.merge``), at most ``fan_in`` files
open at a time. Memory stays at one run plus one buffer per open run, whatever the batch size;
the price is one local copy of the rows while the merge runs.

The output and error files are streamed through ``AtomicWriter`` (readers see a whole file or
none), and their SHA-256, sizes, line counts, request counts and usage are computed on the way.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import re
import tempfile
import uuid
from collections.abc import Callable, Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import IO, Any

from pydantic import BaseModel

from nightshift.core.artifacts import FileRecord, RequestCounts, ResultRow, to_output_line
from nightshift.core.errors import StorageError
from nightshift.core.protocol import Usage
from nightshift.storage.store import ArtifactStore, call_store

#: Read buffer for a stored file (s3fs would read ahead 50 MiB by default).
READ_BLOCK = 4 * 2**20
#: Part size of a streamed object-store upload (S3 takes parts of 5 MiB and more).
WRITE_BLOCK = 8 * 2**20
#: Bytes gathered before one write to the file (few calls, each through the store's error mapping).
FLUSH_BYTES = 256 * 2**10
#: Rows sorted in memory at once: well above a usual shard, so a shard is one run.
RUN_ROWS = 8192
#: Runs merged at once: bounds open files and their read buffers.
FAN_IN = 64

#: ``ResultRow`` JSON starts with its line number (its first field): read it without parsing the row.
_LINE = re.compile(rb'\s*\{\s*"line"\s*:\s*(\d+)\s*[,}]')


def line_of(raw: bytes) -> int:
    """The input line number of one encoded ``ResultRow``."""
    match = _LINE.match(raw)
    if match:
        return int(match.group(1))
    return int(json.loads(raw)["line"])


class MergedFiles(BaseModel):
    """The output and error files a merge wrote, and what they hold."""

    output_file: FileRecord
    error_file: FileRecord
    request_counts: RequestCounts
    usage: Usage


#: Object stores whose uploads commit only when asked (fsspec's ``autocommit=False``).
_UPLOAD_STORES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss"})


def _uploads(store: ArtifactStore) -> bool:
    protocol = store.fs.protocol
    return bool(_UPLOAD_STORES.intersection(protocol if isinstance(protocol, tuple) else (protocol,)))


class AtomicWriter:
    """Streams bytes to ``path`` in ``store``: readers see the whole file after ``commit``, or nothing.

    The streaming twin of ``ArtifactStore.write_bytes``. On a filesystem the bytes go to a hidden
    temp file in the same folder, renamed into place at commit (also the way for ``memory://``,
    whose files are visible while written). On an object store they go to the final key as a
    multipart upload opened without autocommit: the object only appears when the upload is
    completed at commit, and ``abort`` (or a killed process) leaves no object behind (a killed
    process leaves an unfinished upload, invisible to readers, for the bucket's lifecycle rule).
    Used as a context manager it commits on a clean exit and aborts on an exception.

    Writes go through ``call_store`` without retries (a half-sent write is not safely repeated),
    so a full disk or an unreachable store is the same ``StorageError`` as elsewhere.
    """

    def __init__(self, store: ArtifactStore, path: str, *, block_size: int = WRITE_BLOCK) -> None:
        self.store, self.path = store, path
        self.bytes = self.lines = 0
        self._sha = hashlib.sha256()
        fs = store.fs
        parent, name = path.rsplit("/", 1)
        fs.makedirs(parent, exist_ok=True)
        self._tmp: str | None = None
        if _uploads(store):
            self._file: Any = fs.open(path, "wb", autocommit=False, block_size=block_size)
        else:
            self._tmp = f"{parent}/.{name}.{uuid.uuid4().hex}.tmp"
            self._file = fs.open(self._tmp, "wb")
        self._done = False
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def write(self, data: bytes) -> None:
        """Append ``data``."""
        self._pending.append(data)
        self._pending_bytes += len(data)
        self._sha.update(data)
        self.bytes += len(data)
        self.lines += data.count(b"\n")
        if self._pending_bytes >= FLUSH_BYTES:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            call_store(self._file.write, "writing", 0.0, b"".join(self._pending))
            self._pending, self._pending_bytes = [], 0

    def commit(self) -> FileRecord:
        """Publish the file; returns its record (URL, SHA-256, bytes, lines)."""
        try:
            self._flush()
            call_store(self._file.close, "writing", 0.0)
            if self._tmp is not None:
                self.store.fs.mv(self._tmp, self.path)
            else:
                call_store(self._file.commit, "writing", 0.0)
        except BaseException:
            self.abort()
            raise
        self._done = True
        return self.record()

    def abort(self) -> None:
        """Throw the bytes written so far away; the path is left as it was."""
        if self._done:
            return
        self._done = True
        with contextlib.suppress(Exception):
            self._file.close()  # without autocommit, closing an upload does not complete it
        with contextlib.suppress(Exception):
            if self._tmp is not None:
                if self.store.fs.exists(self._tmp):
                    self.store.fs.rm(self._tmp)
            else:
                self._file.discard()  # aborts the multipart upload

    def record(self) -> FileRecord:
        """What was written: the file's URL, SHA-256, bytes and lines."""
        return FileRecord(path=self.store.uri(self.path), sha256=self._sha.hexdigest(), bytes=self.bytes, lines=self.lines)

    def __enter__(self) -> AtomicWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def stored_lines(store: ArtifactStore, path: str) -> Iterator[bytes]:
    """The non-blank lines of a stored JSONL file, read in blocks (never the whole file at once)."""
    try:
        f = store.fs.open(path, "rb", block_size=READ_BLOCK)
    except FileNotFoundError as exc:
        raise StorageError(f"missing artifact: {store.uri(path)}") from exc
    with f:
        for raw in f:
            if raw.strip():
                yield raw


def _lines(source: Iterable[bytes]) -> Iterator[bytes]:
    """Each row once, ending in exactly one newline (blank lines dropped)."""
    for raw in source:
        raw = raw.rstrip(b"\r\n")
        if raw.strip():
            yield raw + b"\n"


class _Runs:
    """Sorted runs of raw rows in a local temporary folder, known by number (a batch may make thousands)."""

    def __init__(self, folder: Path, run_rows: int, fan_in: int) -> None:
        self.folder, self.run_rows, self.fan_in = folder, run_rows, fan_in
        self._count = 0

    def path(self, run: int) -> Path:
        """The file of run number ``run``."""
        return self.folder / f"run-{run:07d}.jsonl"

    def _new(self) -> int:
        self._count += 1
        return self._count

    def cut(self, source: Iterable[bytes]) -> list[int]:
        """Runs holding ``source``'s rows; a source already in line order makes one run."""
        runs: list[int] = []
        out: IO[bytes] | None = None
        last = 0
        rows = _lines(source)
        try:
            while chunk := list(islice(rows, self.run_rows)):
                # sorted() is stable: rows with the same line keep their order, as a list.sort would.
                keyed = sorted(((line_of(raw), raw) for raw in chunk), key=lambda pair: pair[0])
                if out is None or keyed[0][0] < last:
                    if out is not None:
                        out.close()
                    runs.append(self._new())
                    out = self.path(runs[-1]).open("wb")
                out.writelines(raw for _, raw in keyed)
                last = keyed[-1][0]
        finally:
            if out is not None:
                out.close()
        return runs

    def reduce(self, runs: list[int], limit: int) -> list[int]:
        """Merge neighbouring runs (keeping their order for equal lines) until at most ``limit`` are left."""
        limit = max(1, min(limit, self.fan_in))
        while len(runs) > limit:
            merged = []
            for start in range(0, len(runs), self.fan_in):
                group = runs[start : start + self.fan_in]
                if len(group) == 1:
                    merged.append(group[0])
                    continue
                target = self._new()
                with contextlib.ExitStack() as stack:
                    files = [stack.enter_context(self.path(run).open("rb")) for run in group]
                    rows: Iterator[bytes] = heapq.merge(*files, key=line_of)
                    with self.path(target).open("wb") as out:
                        out.writelines(rows)
                for run in group:
                    self.path(run).unlink()
                merged.append(target)
            runs = merged
        return runs


def merge_results(
    store: ArtifactStore,
    sources: Iterable[Iterable[bytes]],
    *,
    version: str,
    output_path: str,
    errors_path: str,
    fallback: Iterable[bytes] | None = None,
    run_rows: int = RUN_ROWS,
    fan_in: int = FAN_IN,
) -> MergedFiles:
    """Write the OpenAI output and error files of ``version`` from encoded ``ResultRow`` sources.

    Rows are written in input-line order; rows with the same line keep the order of their
    sources (then of their position in a source), as a stable sort of all the rows would.

    Args:
        sources: each an iterable of JSONL-encoded ``ResultRow`` lines, in any order. They are
            read one after the other, so a source that loads a file on first use (a shard)
            holds only that file.
        fallback: rows written only for lines no source answered (a stopped batch's
            "not finished" error for each valid request).
        run_rows, fan_in: the memory and open-file bounds (see the module docstring).
    """
    with tempfile.TemporaryDirectory(prefix="nightshift-merge-") as folder:
        runs = _Runs(Path(folder), max(1, run_rows), max(2, fan_in))
        answered: list[int] = []
        for source in sources:
            answered += runs.cut(source)
        filler = runs.reduce(runs.cut(fallback), 1) if fallback is not None else []
        answered = runs.reduce(answered, runs.fan_in - len(filler))
        with contextlib.ExitStack() as stack:
            streams = [_tagged(stack.enter_context(runs.path(run).open("rb")), False) for run in answered]
            streams += [_tagged(stack.enter_context(runs.path(run).open("rb")), True) for run in filler]
            out = stack.enter_context(AtomicWriter(store, output_path))
            err = stack.enter_context(AtomicWriter(store, errors_path))
            counts, usage = _write_lines(heapq.merge(*streams, key=_key), version, out.write, err.write)
        return MergedFiles(output_file=out.record(), error_file=err.record(), request_counts=counts, usage=usage)


def _tagged(rows: Iterable[bytes], filler: bool) -> Iterator[tuple[bytes, bool]]:
    return ((raw, filler) for raw in rows)


def _key(item: tuple[bytes, bool]) -> int:
    return line_of(item[0])


def _write_lines(
    merged: Iterable[tuple[bytes, bool]], version: str, ok: Callable[[bytes], None], failed: Callable[[bytes], None]
) -> tuple[RequestCounts, Usage]:
    """Turn merged rows into output/error lines; a filler row is kept only for a line nothing answered."""
    total = completed = prompt = completion = 0
    last: int | None = None
    for raw, filler in merged:
        if filler and line_of(raw) == last:
            continue  # fillers sort after answers of the same line (their runs come last)
        row = ResultRow.model_validate_json(raw)
        last = row.line
        line = to_output_line(row, version=version)
        data = line.model_dump_json().encode() + b"\n"
        total += 1
        if line.ok:
            completed += 1
            ok(data)
        else:
            failed(data)
        prompt += row.usage.prompt_tokens
        completion += row.usage.completion_tokens
    counts = RequestCounts(total=total, completed=completed, failed=total - completed)
    return counts, Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
