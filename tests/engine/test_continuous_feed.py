"""The vLLM engine fed continuously: groups join a running engine, ranked by deadline, and the
prefix order changes speed, never answers (real vLLM on the tiny model, in a clean process)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

#: Runs in a clean process (a vLLM engine holds its KV cache for the life of the process).
SCRIPT = r"""
import json, random, sys, threading, time
from nightshift.core.protocol import Endpoint, ValidRequest
from nightshift.core.sharding import prefix_order
from nightshift.engine.base import EngineSpec
from nightshift.engine.vllm_engine import VLLMEngine
from nightshift.settings import EngineConfig

model = sys.argv[1]
config = EngineConfig(max_model_len=512, max_num_seqs=8)
engine = VLLMEngine(EngineSpec(model_path=model, served_model_name="tiny", endpoint=Endpoint.CHAT_COMPLETIONS, config=config))


def chat(line, content, max_tokens):
    body = {"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens, "temperature": 0}
    return ValidRequest(line=line, custom_id=f"r{line}", url=Endpoint.CHAT_COMPLETIONS, body=body)


def answers(rows):
    return {r.custom_id: r.body["choices"][0]["message"]["content"] for r in rows}


out = {}
# 1. Earliest deadline first: a small urgent group sent after a large lax one finishes first.
lax = [chat(i, f"Write about the river, part {i}.", 24) for i in range(1, 161)]
urgent = [chat(1000 + i, f"Name a colour, number {i}.", 24) for i in range(8)]
finished = {}
def run(name, requests, priority):
    rows = engine.run(requests, priority=priority)
    finished[name] = (time.perf_counter(), rows)
started = time.perf_counter()
t = threading.Thread(target=run, args=("lax", lax, 100))
t.start()
while engine.client.engine.get_num_unfinished_requests() < 8:  # the lax group is in the engine
    time.sleep(0.005)
run("urgent", urgent, 1)
t.join()
out["urgent_s"] = finished["urgent"][0] - started
out["lax_s"] = finished["lax"][0] - started
out["urgent_answers"] = answers(finished["urgent"][1])
out["lax_answers"] = answers(finished["lax"][1])
alone = engine.run(urgent, priority=1)
out["urgent_alone_answers"] = answers(alone)
out["errors"] = sum(r.error is not None for rows in (finished["urgent"][1], finished["lax"][1]) for r in rows)

# 2. Shared-prefix order: same answers as input order, and the prefix cache serves the shared part.
docs = [
    "The lighthouse keeper logs every ship that passes the cape. " * 12,
    "The orchard grows pears, plums and a single fig tree. " * 12,
]
qa = [(d, q) for d in range(2) for q in range(6)]
random.Random(3).shuffle(qa)
lines = [chat(2000 + i, docs[d] + f"Question {q}: what is this about?", 6) for i, (d, q) in enumerate(qa)]
in_order = engine.run(lines)
engine.llm.reset_prefix_cache()
grouped = engine.run(prefix_order(lines))
out["input_order_answers"] = answers(in_order)
out["prefix_order_answers"] = answers(grouped)
out["prefix_cached_tokens"] = sum(r.prefix_cached_tokens for r in grouped)
out["prompt_tokens"] = sum(r.usage.prompt_tokens for r in grouped)
print("RESULT " + json.dumps(out))
"""


@pytest.fixture(scope="module")
def feed(tiny_model: Path) -> dict:
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_model)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


def test_an_urgent_group_sent_later_finishes_before_a_large_lax_one(feed):
    assert feed["errors"] == 0
    assert feed["urgent_s"] < feed["lax_s"] / 2, feed  # it did not wait for the 160 requests ahead of it
    assert len(feed["lax_answers"]) == 160 and len(feed["urgent_answers"]) == 8
    # Joining a busy engine changes when a request runs, not what it answers.
    assert feed["urgent_answers"] == feed["urgent_alone_answers"]


def test_prefix_order_keeps_greedy_answers_and_the_prefix_cache_serves_the_shared_documents(feed):
    assert feed["prefix_order_answers"] == feed["input_order_answers"]
    assert len(set(feed["input_order_answers"].values())) > 1  # a real model answered
    # Two documents of ~150 tokens, six questions each: all but the first of each reuse it.
    assert feed["prefix_cached_tokens"] > 0.5 * feed["prompt_tokens"], feed
