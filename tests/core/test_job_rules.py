"""The job API's rules, on plain values: URLs, tiers, inline rendering, priority, cost."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from nightshift.core.errors import JobRequestError, TierExceededError
from nightshift.core.jobs import (
    JobCreate,
    Prices,
    Priority,
    check_input_url,
    effective_tier,
    job_cost,
    mean_request_latency,
    render_inline,
)
from nightshift.core.sla import Tier


@pytest.fixture
def roots(tmp_path):
    allowed = tmp_path / "allowed"
    (allowed / "sub").mkdir(parents=True)
    return {"allowed_file_roots": [allowed], "allowed_https_hosts": ["data.example.test"]}


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("s3://bucket/in/batch.jsonl", "s3"),
        ("s3a://bucket/key.jsonl", "s3"),
        ("https://data.example.test/exports/batch.jsonl", "https"),
        ("https://DATA.example.test/x.jsonl", "https"),
    ],
)
def test_allowed_urls(url, kind, roots):
    assert check_input_url(url, **roots).kind == kind


def test_file_urls_inside_the_root_resolve_to_a_path(roots, tmp_path):
    inside = tmp_path / "allowed" / "sub" / "b.jsonl"
    source = check_input_url(f"file://{inside}", **roots)
    assert (source.kind, source.url, source.fetch_by_gateway) == ("file", str(inside), False)


@pytest.mark.parametrize(
    "url",
    [
        "http://data.example.test/x.jsonl",
        "ftp://data.example.test/x.jsonl",
        "gs://bucket/x.jsonl",
        "https://evil.example.test/x.jsonl",
        "https://data.example.test.evil.test/x.jsonl",
        "https://u:p@data.example.test/x.jsonl",
        "/etc/passwd",
        "file:///etc/passwd",
        "file://otherhost/etc/passwd",
        "s3://",
        "s3://bucket",
    ],
)
def test_refused_urls_name_the_field(url, roots):
    with pytest.raises(JobRequestError) as exc:
        check_input_url(url, **roots)
    assert exc.value.field == "input_file_url" and str(exc.value).startswith("input_file_url: ")


def test_file_urls_cannot_climb_out_or_follow_a_symlink_out(roots, tmp_path):
    (tmp_path / "secret.jsonl").write_text("{}\n")
    with pytest.raises(JobRequestError, match="outside the allowed roots"):
        check_input_url(f"file://{tmp_path}/allowed/sub/../../secret.jsonl", **roots)
    (tmp_path / "allowed" / "link.jsonl").symlink_to(tmp_path / "secret.jsonl")
    with pytest.raises(JobRequestError, match="outside the allowed roots"):
        check_input_url(f"file://{tmp_path}/allowed/link.jsonl", **roots)


def test_no_roots_means_no_file_urls(tmp_path):
    with pytest.raises(JobRequestError, match="none are configured"):
        check_input_url(f"file://{tmp_path}/x.jsonl", allowed_file_roots=[], allowed_https_hosts=[])


def test_tier_defaults_to_the_key_and_never_goes_above_it():
    assert effective_tier(None, "premium") is Tier.PREMIUM
    assert effective_tier(Tier.FREE, "premium") is Tier.FREE
    assert effective_tier(Tier.PREMIUM, "premium") is Tier.PREMIUM
    with pytest.raises(TierExceededError):
        effective_tier(Tier.ENTERPRISE, "premium")
    with pytest.raises(TierExceededError):
        effective_tier(Tier.BASIC, "free")


def test_a_job_has_exactly_one_source_and_each_item_one_input():
    with pytest.raises(ValidationError):
        JobCreate()
    with pytest.raises(ValidationError):
        JobCreate(input_file_url="s3://b/k", input=[{"prompt": "x"}])
    with pytest.raises(ValidationError):
        JobCreate(input=[{"prompt": "x", "messages": [{"role": "user", "content": "y"}]}])
    with pytest.raises(ValidationError):
        JobCreate(input=[{}])


def test_priority_comes_from_metadata():
    assert JobCreate(input=[{"prompt": "x"}]).priority() is Priority.NORMAL
    assert JobCreate(input=[{"prompt": "x"}], metadata={"priority": "high"}).priority() is Priority.HIGH
    with pytest.raises(JobRequestError) as exc:
        JobCreate(input=[{"prompt": "x"}], metadata={"priority": "urgent"}).priority()
    assert exc.value.field == "metadata.priority"


def test_inline_items_become_chat_lines_in_order():
    job = JobCreate(
        input=[
            {"prompt": "hello"},
            {"custom_id": "mine", "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]},
            {"prompt": "long one", "max_tokens": 64, "temperature": 0.5},
        ],
        max_tokens=8,
    )
    lines = [json.loads(line) for line in render_inline(job, model="served", max_items=10).decode().splitlines()]
    assert [line["custom_id"] for line in lines] == ["item-0", "mine", "item-2"]
    assert {line["url"] for line in lines} == {"/v1/chat/completions"}
    assert lines[0]["body"] == {
        "model": "served",
        "messages": [{"role": "user", "content": "hello"}],
        "temperature": 0.0,
        "max_tokens": 8,
    }
    assert lines[1]["body"]["messages"][0] == {"role": "system", "content": "be brief"}
    assert (lines[2]["body"]["max_tokens"], lines[2]["body"]["temperature"]) == (64, 0.5)


def test_inline_limits_and_duplicate_ids():
    with pytest.raises(JobRequestError, match="at most 2 inline") as exc:
        render_inline(JobCreate(input=[{"prompt": "x"}] * 3), model="m", max_items=2)
    assert exc.value.field == "input"
    twice = JobCreate(input=[{"custom_id": "a", "prompt": "x"}, {"custom_id": "a", "prompt": "y"}])
    with pytest.raises(JobRequestError, match="used twice") as exc:
        render_inline(twice, model="m", max_items=5)
    assert exc.value.field == "input[1].custom_id"


def test_cost_and_latency():
    prices = Prices(input_per_million=1.0, output_per_million=4.0, spot_discount=0.5)
    usage = {"prompt_tokens": 1_000_000, "completion_tokens": 500_000}
    assert job_cost(usage, pool_kind="dedicated", prices=prices) == 3.0
    assert job_cost(usage, pool_kind="spot", prices=prices) == 1.5
    assert job_cost(None, pool_kind=None, prices=prices) == 0.0
    shards = [{"seconds": 2.0, "num_requests": 10}, {"seconds": 4.0, "num_requests": 30}, {"seconds": None, "num_requests": 5}]
    assert mean_request_latency(shards) == pytest.approx((2 * 10 + 4 * 30) / 40)
    assert mean_request_latency([{"seconds": None, "num_requests": 3}]) is None
