from datetime import UTC, datetime

from nightshift.core.artifacts import ResultRow
from nightshift.core.cache import CacheEntry, answers_from, is_cacheable, request_key
from nightshift.core.protocol import BatchError, Endpoint

CHAT = Endpoint.CHAT_COMPLETIONS


def test_only_deterministic_requests_are_cacheable():
    assert is_cacheable(CHAT, {"temperature": 0})
    assert is_cacheable(CHAT, {"temperature": 0.8, "seed": 3})
    assert not is_cacheable(CHAT, {"temperature": 0.8})
    assert not is_cacheable(CHAT, {})  # OpenAI's default temperature is 1.0
    assert is_cacheable(Endpoint.EMBEDDINGS, {"input": "x"})


def test_key_covers_what_decides_the_answer_and_nothing_else():
    base = dict(model_sha256="m", engine_params={"dtype": "float32"}, endpoint=CHAT, body={"messages": [1], "temperature": 0})
    k = request_key(**base)
    assert request_key(**{**base, "body": {"temperature": 0, "messages": [1], "model": "other-name"}}) == k
    for change in ({"model_sha256": "n"}, {"engine_params": {"dtype": "bfloat16"}}, {"endpoint": Endpoint.COMPLETIONS}):
        assert request_key(**{**base, **change}) != k
    assert request_key(**{**base, "body": {"messages": [1], "temperature": 0, "max_tokens": 5}}) != k


def test_answers_need_a_live_good_row():
    now = datetime.now(UTC)
    entries = {
        "a": CacheEntry(key="a", batch_id="b", version="v", results_path="r1", line=1, created_at=now),
        "gone": CacheEntry(key="gone", batch_id="b", version="v", results_path="deleted", line=1, created_at=now),
        "bad": CacheEntry(key="bad", batch_id="b", version="v", results_path="r1", line=2, created_at=now),
    }
    rows = [
        ResultRow(line=1, custom_id="x", body={"ok": 1}),
        ResultRow(line=2, custom_id="y", error=BatchError(code="engine_error", message="boom")),
    ]
    found = answers_from(entries, {"r1": rows})
    assert list(found) == ["a"] and found["a"].body == {"ok": 1}
