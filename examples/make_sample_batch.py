"""Writes examples/sample_batch.jsonl: 200 chat requests plus 4 bad lines on purpose.

Deterministic (no randomness, no download), so the committed file can be regenerated exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

ROLES = [
    "data engineer",
    "nurse",
    "site reliability engineer",
    "teacher",
    "product designer",
    "accountant",
    "chef",
    "electrician",
]
SKILLS = [
    "Python and SQL",
    "patient care",
    "Kubernetes on call",
    "classroom planning",
    "user research",
    "tax filing",
    "menu costing",
    "wiring",
]
QUESTIONS = [
    "What is the capital of France?",
    "Give one tip for writing clear emails.",
    "Name a fruit that is yellow.",
    "What does a batch job do?",
    "Explain what a GPU is in one sentence.",
]


def requests() -> list[dict]:
    out = []
    for i in range(200):
        if i % 2 == 0:
            role, skill = ROLES[i % len(ROLES)], SKILLS[(i // 2) % len(SKILLS)]
            content = (
                f"Rate from 0 to 10 how well a candidate with {skill} fits a {role} job. Answer with the number and one reason."
            )
        else:
            content = QUESTIONS[i % len(QUESTIONS)]
        out.append(
            {
                "custom_id": f"request-{i:04d}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {
                    "model": "smollm2-135m-instruct",
                    "messages": [
                        {"role": "system", "content": "You are a concise assistant."},
                        {"role": "user", "content": content},
                    ],
                    "max_tokens": 32,
                    "temperature": 0,
                },
            }
        )
    return out


BAD = [
    (10, '{"custom_id": "broken-json", "method": "POST", "url": "/v1/chat/completions", "body": {'),
    (50, json.dumps({"custom_id": "wrong-url", "method": "POST", "url": "/v1/audio/speech", "body": {"input": "hi"}})),
    (90, json.dumps({"custom_id": "no-messages", "method": "POST", "url": "/v1/chat/completions", "body": {"max_tokens": 5}})),
    (
        130,
        json.dumps(
            {
                "custom_id": "request-0007",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"messages": [{"role": "user", "content": "duplicate id"}]},
            }
        ),
    ),
]


def main() -> None:
    lines = [json.dumps(r) for r in requests()]
    for pos, text in BAD:
        lines.insert(pos, text)
    Path(__file__).with_name("sample_batch.jsonl").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
