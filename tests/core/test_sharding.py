"""Shard planning rules: prefix order, adaptive size, shard identity, and the engine's deadline rank."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from nightshift.core.protocol import Endpoint, ValidRequest
from nightshift.core.sharding import adaptive_shard_size, plan_shards, prefix_key, prefix_order
from nightshift.core.sla import Tier, engine_priority
from nightshift.settings import StorageConfig


def _qa(line: int, doc: int, question: int, system: str = "Answer from the document.") -> ValidRequest:
    content = f"Document {doc}: " + f"fact {doc} " * 40 + f"\n\nQuestion {question}: what is fact {doc}?"
    body = {"model": "m", "messages": [{"role": "system", "content": system}, {"role": "user", "content": content}]}
    return ValidRequest(line=line, custom_id=f"d{doc}-q{question}", url=Endpoint.CHAT_COMPLETIONS, body=body)


def _shuffled_qa(docs: int, questions: int, seed: int = 7) -> list[ValidRequest]:
    pairs = [(d, q) for d in range(docs) for q in range(questions)]
    random.Random(seed).shuffle(pairs)
    return [_qa(i + 1, d, q) for i, (d, q) in enumerate(pairs)]


def test_prefix_order_puts_each_documents_questions_together_and_keeps_every_request():
    requests = _shuffled_qa(docs=6, questions=5)
    ordered = prefix_order(requests)
    assert sorted(r.line for r in ordered) == [r.line for r in requests]  # a permutation: nothing lost or added
    assert _document_runs(ordered) == 6  # one contiguous run per document...
    assert _document_runs(requests) > 20  # ...where the shuffled file had them scattered


def _document_runs(requests: list[ValidRequest]) -> int:
    """How many runs of consecutive requests about the same document."""
    docs = [r.custom_id.split("-")[0] for r in requests]
    return sum(1 for i, d in enumerate(docs) if i == 0 or docs[i - 1] != d)


def test_prefix_order_keeps_input_order_among_equal_prompts_and_is_deterministic():
    same = [_qa(line, 1, 1) for line in (5, 2, 9)]
    assert [r.line for r in prefix_order(same)] == [2, 5, 9]
    requests = _shuffled_qa(docs=3, questions=4)
    assert [r.line for r in prefix_order(requests)] == [r.line for r in prefix_order(list(reversed(requests)))]


def test_prefix_key_follows_the_prompt_not_other_fields():
    a, b = _qa(1, 1, 1), _qa(2, 1, 1)
    b.body["max_tokens"], b.body["temperature"] = 3, 0.5
    assert prefix_key(a) == prefix_key(b)
    assert prefix_key(_qa(3, 1, 1, system="Be brief.")) != prefix_key(a)
    assert len(prefix_key(_qa(4, 2, 2), limit=64)) == 64


def test_shards_of_reordered_requests_name_their_line_span_and_continue_numbering():
    ordered = prefix_order(_shuffled_qa(docs=2, questions=5))
    shards = plan_shards(ordered, 4, first_index=3)
    assert [s.name for s, _ in shards] == ["shard-00003", "shard-00004", "shard-00005"]
    for (spec, _), chunk in zip(shards, (ordered[0:4], ordered[4:8], ordered[8:10]), strict=True):
        assert (spec.first_line, spec.last_line) == (min(r.line for r in chunk), max(r.line for r in chunk))
        assert spec.num_requests == len(chunk)


@pytest.mark.parametrize(
    ("rps", "expected"),
    [
        (None, 256),  # nothing measured yet: the configured size
        (0.0, 256),
        (7.0, 420),  # 7 req/s × 60 s
        (0.1, 32),  # a slow engine still gets a useful shard
        (500.0, 4096),  # a fast one is bounded by memory
    ],
)
def test_adaptive_shard_size_follows_throughput_within_bounds(rps, expected):
    assert adaptive_shard_size(rps, checkpoint_seconds=60, minimum=32, maximum=4096, default=256) == expected
    assert StorageConfig().shard_size_for(rps) == expected  # the settings' defaults are these
    assert StorageConfig(shard_size=10).shard_size_for(rps) == 10  # a size set by the operator is fixed


def test_without_a_measurement_the_first_size_holds_even_below_the_adaptive_bounds():
    assert StorageConfig(first_shard_size=10).shard_size_for(None) == 10
    assert StorageConfig(first_shard_size=10).shard_size_for(7.0) == 420


def test_adaptive_shard_size_refuses_impossible_bounds():
    with pytest.raises(ValueError, match="bounds"):
        adaptive_shard_size(1.0, checkpoint_seconds=1, minimum=10, maximum=5, default=8)


def test_engine_priority_is_earliest_deadline_first_and_the_tier_breaks_ties():
    now = datetime(2026, 11, 29, 12, tzinfo=UTC)
    free_early = engine_priority(now + timedelta(hours=1), Tier.FREE)
    enterprise_late = engine_priority(now + timedelta(hours=6), Tier.ENTERPRISE)
    assert free_early < enterprise_late  # a free batch due first is served first: no starvation
    same = [engine_priority(now, tier) for tier in Tier]
    assert same == sorted(same) and len(set(same)) == 4  # enterprise, premium, basic, free
    assert engine_priority(now + timedelta(seconds=1), Tier.ENTERPRISE) > engine_priority(now, Tier.FREE)
