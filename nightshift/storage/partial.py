"""Partial results of a batch stopped before it finished (cancelled, or expired at the end of its
completion window): what finished goes to the output file, every other line to the error file
with the reason, so the two files still hold each input line exactly once."""

from __future__ import annotations

import json

from pydantic import BaseModel

from nightshift.core.artifacts import (
    FileRecord,
    RequestCounts,
    ResultRow,
    decode_results,
    encode_rows,
    to_output_line,
    total_usage,
    unanswered_rows,
)
from nightshift.core.hashing import sha256_bytes
from nightshift.core.jsonl import split_lines
from nightshift.core.protocol import BatchError, Usage
from nightshift.core.sharding import decode_shard
from nightshift.storage.store import ArtifactStore


class PartialResults(BaseModel):
    """Where the partial output and error files are, and what they hold."""

    output_file: FileRecord
    error_file: FileRecord
    request_counts: RequestCounts
    usage: Usage


def publish_partial(store: ArtifactStore, batch_id: str, input_uri: str, *, code: str, message: str) -> PartialResults:
    """Write ``partial.output.jsonl``/``partial.errors.jsonl`` for ``batch_id`` from what is on disk.

    The newest version folder with validated requests is used; a batch stopped before validation
    has none, and then every input line becomes an error line (its ``custom_id`` kept when readable).
    """
    paths = store.newest(batch_id, "requests.jsonl")
    if paths is not None:
        rows: list[ResultRow] = []
        for extra in (paths.invalid, paths.cached):
            if store.exists(extra):
                rows += decode_results(store.read_bytes(extra))
        for path in store.fs.glob(paths.shard_results("*")):
            rows += decode_results(store.read_bytes(path))
        rows += unanswered_rows(decode_shard(store.read_bytes(paths.valid)), rows, code=code, message=message)
    else:
        paths = store.batch(batch_id, "unvalidated")
        rows = []
        for number, text in split_lines(store.read_bytes(input_uri)):
            try:
                custom_id = json.loads(text).get("custom_id")
            except (ValueError, AttributeError):
                custom_id = None
            rows.append(ResultRow(line=number, custom_id=custom_id, error=BatchError(code=code, message=message, line=number)))
    rows.sort(key=lambda r: r.line)
    lines = [to_output_line(r, version=paths.version) for r in rows]
    ok, failed = [x for x in lines if x.ok], [x for x in lines if not x.ok]
    records = []
    for path, chosen in ((paths.partial_output, ok), (paths.partial_errors, failed)):
        data = encode_rows(chosen)
        store.write_bytes(path, data)
        records.append(FileRecord(path=store.uri(path), sha256=sha256_bytes(data), bytes=len(data), lines=len(chosen)))
    return PartialResults(
        output_file=records[0],
        error_file=records[1],
        request_counts=RequestCounts(total=len(lines), completed=len(ok), failed=len(failed)),
        usage=total_usage(r for r in rows if r.error is None),
    )
