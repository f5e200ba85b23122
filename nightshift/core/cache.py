"""Request-level result cache: never pay twice for the same deterministic request.

A request's key hashes what decides its answer: the model's content hash, the engine settings
that change output, the endpoint, and the canonical JSON of its body (without the ``model``
name, which the batch's model serves anyway; ``custom_id`` is not part of a body).

Only deterministic requests are cacheable: greedy ones (``temperature`` 0) and ones with a fixed
``seed``. A request that leaves ``temperature`` out samples at OpenAI's default of 1.0 and is
not cacheable unless it sets a ``seed``. Embeddings are always deterministic.

An entry does not copy the answer: it points at the shard results file that holds it. Results
live until their batch's retention ends; after that the entry points at nothing and is a miss.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from nightshift.core.artifacts import ResultRow
from nightshift.core.hashing import sha256_json
from nightshift.core.protocol import Endpoint


def is_cacheable(endpoint: Endpoint, body: Mapping[str, Any]) -> bool:
    """True when the same body always gets the same answer (greedy, seeded, or an embedding)."""
    if endpoint is Endpoint.EMBEDDINGS:
        return True
    return body.get("temperature") == 0 or body.get("seed") is not None


def request_key(*, model_sha256: str, engine_params: Mapping[str, Any], endpoint: Endpoint, body: Mapping[str, Any]) -> str:
    """The content key of one request (hex SHA-256)."""
    canonical = {k: v for k, v in body.items() if k != "model"}
    return sha256_json({"model": model_sha256, "engine": dict(engine_params), "endpoint": endpoint.value, "body": canonical})


class CacheEntry(BaseModel):
    """Where the answer to one request key is stored."""

    key: str
    batch_id: str
    version: str
    results_path: str = Field(description="Shard results file holding the answer.")
    line: int = Field(description="The answer's input line in that batch.")
    created_at: datetime


def entry_path(cache_root: str, key: str) -> str:
    """Path of the entry for ``key`` (fanned out by the first two hex digits)."""
    return f"{cache_root}/{key[:2]}/{key}.json"


def answers_from(wanted: Mapping[str, CacheEntry], results: Mapping[str, Iterable[ResultRow]]) -> dict[str, ResultRow]:
    """The cached answer row for each wanted key whose results file still holds a good answer.

    Args:
        wanted: key → entry, for the keys found in the cache.
        results: results path → the rows read from it (missing files are simply absent).
    """
    by_file: dict[str, dict[int, ResultRow]] = {path: {r.line: r for r in rows} for path, rows in results.items()}
    found = {}
    for key, entry in wanted.items():
        row = by_file.get(entry.results_path, {}).get(entry.line)
        if row is not None and row.error is None and row.body is not None:
            found[key] = row
    return found
