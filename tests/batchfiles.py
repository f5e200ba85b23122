"""Batch files for tests: good chat requests plus bad lines of named kinds, written as JSONL."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

TOPICS = ["the sea", "a red fox", "winter light", "old trains", "bread", "a small town", "rain", "the moon", "tea", "bees"]


def chat_line(i: int, *, max_tokens: int | None = 8, **body: Any) -> dict[str, Any]:
    """A valid greedy chat request line with a varied prompt."""
    b: dict[str, Any] = {
        "model": "tiny",
        "messages": [{"role": "user", "content": f"Tell me about {TOPICS[i % len(TOPICS)]}, item {i}."}],
        "temperature": 0,
    }
    if max_tokens is not None:
        b["max_tokens"] = max_tokens
    b.update(body)
    return {"custom_id": f"req-{i:03d}", "method": "POST", "url": "/v1/chat/completions", "body": b}


#: Bad lines, by kind, as raw text (so that invalid JSON can be written too).
BAD_LINES: dict[str, str] = {
    "invalid_json": '{"custom_id": "bad-json", "method": "POST", "url": ',
    "unknown_url": json.dumps(
        {"custom_id": "bad-url", "method": "POST", "url": "/v1/images/generations", "body": {"prompt": "a cat"}}
    ),
    "bad_body": json.dumps(
        {"custom_id": "bad-body", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "tiny", "prompt": "hi"}}
    ),
    "missing_custom_id": json.dumps({"method": "POST", "url": "/v1/chat/completions", "body": {"messages": []}}),
    "too_long": json.dumps(
        {
            "custom_id": "too-long",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": " ".join(["winter light over old trains"] * 400)}]},
        }
    ),
}


def write_batch(path: Path, n_good: int, bad: list[str] = (), *, max_tokens: int | None = 8) -> list[str]:
    """Write ``n_good`` good lines with the ``bad`` kinds spread through them; return all lines."""
    lines = [json.dumps(chat_line(i, max_tokens=max_tokens)) for i in range(n_good)]
    for k, kind in enumerate(bad):
        lines.insert(min(len(lines), 3 + k * 7), BAD_LINES[kind])
    path.write_text("\n".join(lines) + "\n")
    return lines


def read_jsonl(path: str) -> list[dict[str, Any]]:
    """Parse a JSONL file named by a path or a file:// URL."""
    import fsspec

    with fsspec.open(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]
