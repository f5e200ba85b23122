"""Lineage between batch versions: re-runs of a batch and retries of its failed lines."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Literal

from pydantic import BaseModel, Field

from nightshift.core.jsonl import BOM


class Lineage(BaseModel):
    """The version a batch version was derived from, and how."""

    parent_batch_id: str = Field(description="Batch id of the parent version.")
    parent_version: str = Field(description="The parent's version id (16 hex characters).")
    relation: Literal["rerun", "retry-failed"] = Field(
        description="'rerun': the same batch with another input, model or settings; "
        "'retry-failed': a new batch of the parent's error lines."
    )


def failed_lines(error_file: bytes) -> list[int]:
    """Input line numbers named by an error file's lines, in order, without repeats."""
    numbers: list[int] = []
    for raw in error_file.splitlines():
        if raw.strip():
            line = (json.loads(raw).get("error") or {}).get("line")
            if isinstance(line, int) and line not in numbers:
                numbers.append(line)
    return numbers


def select_lines(data: bytes, numbers: Iterable[int]) -> bytes:
    """The given 1-based physical lines of ``data``, in file order, as a new JSONL file."""
    wanted = set(numbers)
    # Bytes as they were (core.jsonl's rule: lines end at \n only; a CRLF's \r is dropped).
    raw_lines = data.removeprefix(BOM).split(b"\n")
    return b"".join(raw.removesuffix(b"\r") + b"\n" for n, raw in enumerate(raw_lines, start=1) if n in wanted)
