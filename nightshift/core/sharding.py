"""Deterministic shards: the same valid requests and shard size always give the same shards.

A shard is the unit of work that is written as soon as it finishes, so a crash loses at most
the shards in flight, and a re-run of the same version recomputes only the missing ones.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, Field

from nightshift.core.hashing import sha256_bytes
from nightshift.core.protocol import ValidRequest


class ShardSpec(BaseModel):
    """A shard's identity: its index, its lines, and the SHA-256 of its serialized requests."""

    index: int = Field(ge=0)
    name: str = Field(description="File stem, e.g. 'shard-00003'.")
    first_line: int
    last_line: int
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


def plan_shards(requests: Sequence[ValidRequest], shard_size: int) -> list[tuple[ShardSpec, bytes]]:
    """Cut requests (in input order) into shards of at most ``shard_size``, with their bytes."""
    shards = []
    for index, (start, stop) in enumerate(shard_bounds(len(requests), shard_size)):
        chunk = requests[start:stop]
        data = encode_shard(chunk)
        spec = ShardSpec(
            index=index,
            name=shard_name(index),
            first_line=chunk[0].line,
            last_line=chunk[-1].line,
            num_requests=len(chunk),
            sha256=sha256_bytes(data),
            bytes=len(data),
        )
        shards.append((spec, data))
    return shards
