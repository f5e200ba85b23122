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
    "unknown_model": json.dumps(
        {
            "custom_id": "other-model",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "NonExistModel", "messages": [{"role": "user", "content": "hi"}]},
        }
    ),
    "stream": json.dumps(
        {
            "custom_id": "streamed",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": "True"},
        }
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


def check_mixed_batch(result: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The invariants of the 50-line mixed batch (``write_batch(src, 47, ["invalid_json",
    "unknown_url", "bad_body"])``, 8 tokens each) on a run's real output and error files:
    47 outputs in input order, 3 error lines naming their lines, every custom_id exactly once."""
    from nightshift.core.protocol import BatchRequestOutput, ChatCompletion

    out, err = read_jsonl(result.output_uri), read_jsonl(result.error_uri)
    assert (len(out), len(err)) == (47, 3)
    assert result.request_counts.model_dump() == {"total": 50, "completed": 47, "failed": 3}
    parsed = [BatchRequestOutput.model_validate(o) for o in out + err]
    ids = [p.custom_id for p in parsed]
    assert sorted(i for i in ids if i) == sorted([f"req-{i:03d}" for i in range(47)] + ["bad-url", "bad-body"])
    assert ids.count(None) == 1  # the line that is not JSON has no readable custom_id
    assert {e["error"]["line"] for e in err} == {4, 11, 18}
    for line in parsed[:47]:
        body = ChatCompletion.model_validate(line.response.body)
        assert body.usage.completion_tokens == 8 and body.usage.prompt_tokens > 0
    assert out == sorted(out, key=lambda o: int(o["custom_id"][4:]))  # input order
    return out, err
