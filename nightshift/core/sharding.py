"""Deterministic shards: the same valid requests and shard size always give the same shards.

A shard is the unit of work that is written as soon as it finishes, so a crash loses at most
the shards in flight, and a re-run of the same version recomputes only the missing ones.

Shards need not hold consecutive lines: requests that share a prompt prefix (a system prompt, a
document, a few-shot block) are put next to each other (``prefix_order``) so that the engine's
prefix cache serves the shared part once while it is still cached. Output files are written in
input order whatever the shard order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from pydantic import BaseModel, Field

from nightshift.core.hashing import sha256_bytes
from nightshift.core.protocol import ValidRequest


class ShardSpec(BaseModel):
    """A shard's identity: its index, its lines, and the SHA-256 of its serialized requests."""

    index: int = Field(ge=0)
    name: str = Field(description="File stem, e.g. 'shard-00003'.")
    first_line: int = Field(description="Smallest input line in the shard.")
    last_line: int = Field(description="Largest input line in the shard.")
    num_requests: int
    sha256: str
    bytes: int


def shard_name(index: int) -> str:
    """The file stem of shard ``index`` (zero-padded so names sort in order)."""
    return f"shard-{index:05d}"


def encode_shard(requests: Sequence[ValidRequest]) -> bytes:
    """Serialize a shard's requests as JSONL, byte-stable for hashing."""
    return b"".join(r.model_dump_json().encode() + b"\n" for r in requests)


def decode_shard(data: bytes) -> list[ValidRequest]:
    """Read a shard file written by ``encode_shard``."""
    return [ValidRequest.model_validate_json(line) for line in data.splitlines() if line.strip()]


def shard_bounds(total: int, shard_size: int) -> list[tuple[int, int]]:
    """The ``[start, stop)`` request positions of each shard of ``total`` requests, in order: full
    shards of ``shard_size`` and a shorter last one. A resumed run redoes only the shards missing."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size}")
    return [(start, min(start + shard_size, total)) for start in range(0, total, shard_size)]


#: Request body fields the prompt is rendered from, in the order they appear in it.
PROMPT_FIELDS = ("instructions", "messages", "prompt", "input")


def prefix_key(request: ValidRequest, limit: int = 8192) -> str:
    """A text that sorts requests sharing a prompt prefix next to each other.

    The prompt-bearing fields as JSON, in prompt order: two requests whose rendered prompts share
    a system prompt or a leading document share the start of this text. Cut at ``limit``
    characters (prefix caches reuse whole blocks of the prompt's start; the tail does not matter).
    """
    fields = [request.body.get(name) for name in PROMPT_FIELDS if name in request.body]
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"))[:limit]


def prefix_order(requests: Sequence[ValidRequest]) -> list[ValidRequest]:
    """``requests`` with those sharing a prompt prefix next to each other (ties in input order)."""
    return sorted(requests, key=lambda r: (prefix_key(r), r.line))


def adaptive_shard_size(
    requests_per_second: float | None, *, checkpoint_seconds: float, minimum: int, maximum: int, default: int
) -> int:
    """Requests per shard so that a shard takes about ``checkpoint_seconds`` on the measured engine.

    A shard is what a crash loses and what progress is counted in, so its size follows the time
    it takes rather than a fixed count; ``maximum`` bounds what a worker holds in memory. With
    no measurement yet, ``default`` as configured.
    """
    if minimum < 1 or maximum < minimum:
        raise ValueError(f"shard size bounds must satisfy 1 <= minimum <= maximum, got {minimum}..{maximum}")
    if not requests_per_second or requests_per_second <= 0:
        return default
    return max(minimum, min(maximum, round(requests_per_second * checkpoint_seconds)))


def plan_shards(requests: Sequence[ValidRequest], shard_size: int, *, first_index: int = 0) -> list[tuple[ShardSpec, bytes]]:
    """Cut requests (in the order given) into shards of at most ``shard_size``, with their bytes.

    ``first_index`` numbers the first shard (a batch planned window by window continues the count).
    """
    shards = []
    for offset, (start, stop) in enumerate(shard_bounds(len(requests), shard_size)):
        chunk = requests[start:stop]
        data = encode_shard(chunk)
        lines = [r.line for r in chunk]
        spec = ShardSpec(
            index=first_index + offset,
            name=shard_name(first_index + offset),
            first_line=min(lines),
            last_line=max(lines),
            num_requests=len(chunk),
            sha256=sha256_bytes(data),
            bytes=len(data),
        )
        shards.append((spec, data))
    return shards
