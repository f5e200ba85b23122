"""Partial results of a batch stopped before it finished (cancelled, or expired at the end of its
completion window): what finished goes to the output file, every other line to the error file
with the reason, so the two files still hold each input line exactly once."""

from __future__ import annotations

import json
from collections.abc import Iterator

from nightshift.core.artifacts import ResultRow
from nightshift.core.errors import StorageError
from nightshift.core.jsonl import BOM, decode_line
from nightshift.core.protocol import BatchError, ValidRequest
from nightshift.storage.merge import MergedFiles, merge_results, stored_lines
from nightshift.storage.store import ArtifactStore


class PartialResults(MergedFiles):
    """Where the partial output and error files are, and what they hold."""


def _not_finished(line: int, custom_id: str | None, code: str, message: str) -> bytes:
    row = ResultRow(line=line, custom_id=custom_id, error=BatchError(code=code, message=message, line=line))
    return row.model_dump_json().encode()


def _unanswered(store: ArtifactStore, valid_path: str, code: str, message: str) -> Iterator[bytes]:
    """An error row for every valid request (the merge keeps it only where no result exists)."""
    for raw in stored_lines(store, valid_path):
        request = ValidRequest.model_validate_json(raw)
        yield _not_finished(request.line, request.custom_id, code, message)


def _unvalidated(store: ArtifactStore, input_uri: str, code: str, message: str) -> Iterator[bytes]:
    """An error row for every line of an input never validated, its ``custom_id`` kept when readable.

    Lines are split and numbered by the rule of ``nightshift.core.jsonl.split_lines``, reading the
    file in blocks instead of whole.
    """
    try:
        f = store.fs.open(input_uri, "rb")
    except FileNotFoundError as exc:
        raise StorageError(f"missing artifact: {store.uri(input_uri)}") from exc
    with f:
        for number, raw in enumerate(f, start=1):
            if number == 1 and raw.startswith(BOM):
                raw = raw[len(BOM) :]
            raw = raw.removesuffix(b"\n")
            if not raw.strip():
                continue
            try:
                custom_id = json.loads(decode_line(raw)).get("custom_id")
            except (ValueError, AttributeError):
                custom_id = None
            yield _not_finished(number, custom_id, code, message)


def publish_partial(store: ArtifactStore, batch_id: str, input_uri: str, *, code: str, message: str) -> PartialResults:
    """Write ``partial.output.jsonl``/``partial.errors.jsonl`` for ``batch_id`` from what is on disk.

    The newest version folder with validated requests is used; a batch stopped before validation
    has none, and then every input line becomes an error line (its ``custom_id`` kept when readable).
    """
    paths = store.newest(batch_id, "requests.jsonl")
    if paths is not None:
        found = [extra for extra in (paths.invalid, paths.cached) if store.exists(extra)]
        found += store.fs.glob(paths.shard_results("*"))
        merged = merge_results(
            store,
            [stored_lines(store, path) for path in found],
            version=paths.version,
            output_path=paths.partial_output,
            errors_path=paths.partial_errors,
            fallback=_unanswered(store, paths.valid, code, message),
        )
    else:
        paths = store.batch(batch_id, "unvalidated")
        merged = merge_results(
            store,
            [_unvalidated(store, input_uri, code, message)],
            version=paths.version,
            output_path=paths.partial_output,
            errors_path=paths.partial_errors,
        )
    return PartialResults.model_validate(merged.model_dump())
