"""The job API's rules, on plain values: URLs, tiers, inline rendering, priority, latency (cost: test_cost_estimate.py)."""

from __future__ import annotations

import json
import os

import pytest
from pydantic import ValidationError

from nightshift.core.errors import JobRequestError, TierExceededError
from nightshift.core.jobs import (
    JobCreate,
    Priority,
    check_input_url,
    effective_tier,
    mean_request_latency,
    open_input_file,
    render_inline,
)
from nightshift.core.sla import Tier
from nightshift.settings import ApiConfig, Settings


@pytest.fixture
def roots(tmp_path):
    allowed = tmp_path / "allowed"
    (allowed / "sub").mkdir(parents=True)
    return {
        "allowed_file_roots": [allowed],
        "allowed_https_hosts": ["data.example.test"],
        "s3_prefixes": ["s3://bucket/"],
        "store_root": "s3://store/nightshift",
    }


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
    with pytest.raises(JobRequestError, match="outside the allowed folders") as climbed:
        check_input_url(f"file://{tmp_path}/allowed/sub/../../secret.jsonl", **roots)
    (tmp_path / "allowed" / "link.jsonl").symlink_to(tmp_path / "secret.jsonl")
    with pytest.raises(JobRequestError, match="outside the allowed folders") as linked:
        check_input_url(f"file://{tmp_path}/allowed/link.jsonl", **roots)
    for exc in (climbed, linked):  # neither the resolved path nor the roots are shown
        assert str(exc.value) == "input_file_url: is outside the allowed folders"


def test_no_roots_means_no_file_urls(tmp_path):
    with pytest.raises(JobRequestError, match="not enabled"):
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


def test_mean_request_latency():
    shards = [{"seconds": 2.0, "num_requests": 10}, {"seconds": 4.0, "num_requests": 30}, {"seconds": None, "num_requests": 5}]
    assert mean_request_latency(shards) == pytest.approx((2 * 10 + 4 * 30) / 40)
    assert mean_request_latency([{"seconds": None, "num_requests": 3}]) is None


# -- s3 inputs: only what an operator opened to the org, never the store ----------------------------


def test_s3_inputs_need_a_prefix_opened_to_the_org():
    api = ApiConfig(s3_input_prefixes={"org_a": ["s3://shared/org-a/"], "beta": ["s3://beta-data"]})
    as_a = {"allowed_file_roots": [], "allowed_https_hosts": [], "s3_prefixes": api.s3_prefixes_for("org_a", "alpha")}
    as_b = {"allowed_file_roots": [], "allowed_https_hosts": [], "s3_prefixes": api.s3_prefixes_for("org_b", "beta")}
    assert check_input_url("s3://shared/org-a/in/x.jsonl", **as_a).url == "s3://shared/org-a/in/x.jsonl"
    assert check_input_url("s3a://beta-data/any/x.jsonl", **as_b).url == "s3://beta-data/any/x.jsonl"  # by org name
    for url, caller in (
        ("s3://shared/org-a/in/x.jsonl", as_b),  # another org's prefix
        ("s3://beta-data/x.jsonl", as_a),
        ("s3://shared/org-b/x.jsonl", as_a),
        ("s3://shared/org-a-evil/x.jsonl", as_a),  # a prefix is a folder, not a string prefix
        ("s3://elsewhere/org-a/x.jsonl", as_a),
    ):
        with pytest.raises(JobRequestError, match="not open to your organization") as exc:
            check_input_url(url, **caller)
        assert exc.value.field == "input_file_url" and "s3://" not in str(exc.value)  # no allowed prefix is shown
    with pytest.raises(JobRequestError, match="not open"):
        check_input_url("s3://shared/org-a/x.jsonl", allowed_file_roots=[], allowed_https_hosts=[])  # default: none


@pytest.mark.parametrize("store_root", ["s3://store/nightshift", "s3://store/nightshift/", "s3://store"])
def test_the_store_is_never_an_input_even_when_a_prefix_admits_it(store_root):
    rules = {"allowed_file_roots": [], "allowed_https_hosts": [], "s3_prefixes": ["s3://store/"], "store_root": store_root}
    for url in ("s3://store/nightshift/files/org_b/file-1.jsonl", "s3a://store/nightshift/batches/b/v1/output.jsonl"):
        with pytest.raises(JobRequestError, match="gateway's own store"):
            check_input_url(url, **rules)
    if store_root != "s3://store":
        assert check_input_url("s3://store/nightshift-exports/x.jsonl", **rules).kind == "s3"


@pytest.mark.parametrize(
    "url",
    [
        "s3://bucket/../x.jsonl",
        "s3://bucket/in/../../x.jsonl",
        "s3://bucket/in/./x.jsonl",
        "s3://bucket/in//x.jsonl",
        "s3://bucket//x.jsonl",
        "s3://bucket/in/",
        "s3://bucket/in/%2e%2e/x.jsonl",
        "s3://bucket/in/x%2Ejsonl",
        "s3://bucket/in\\..\\x.jsonl",
        "s3://bucket/in/x.jsonl?versionId=1",
        "s3://bucket/in/x.jsonl#frag",
        "s3://bucket/in/x\x00.jsonl",
        "s3://Bucket/in/x.jsonl",
        "s3://b/in/x.jsonl",
        "s3://user@bucket/in/x.jsonl",
        "s3://bucket:9000/in/x.jsonl",
    ],
)
def test_s3_keys_with_tricks_are_refused(url, roots):
    with pytest.raises(JobRequestError) as exc:
        check_input_url(url, **roots)
    assert exc.value.field == "input_file_url"


def test_s3_prefix_settings_are_checked():
    with pytest.raises(ValidationError):
        ApiConfig(s3_input_prefixes={"acme": ["gs://bucket/"]})
    with pytest.raises(ValidationError):
        ApiConfig(s3_input_prefixes={"acme": ["s3://bucket/../other/"]})
    assert ApiConfig().s3_prefixes_for("org_x", "acme") == []


def test_s3_prefixes_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("NIGHTSHIFT_API_S3_INPUT_PREFIXES", '{"acme": ["s3://acme-data/in/"]}')
    assert Settings().api.s3_prefixes_for("org_1", "acme") == ["s3://acme-data/in/"]


# -- file inputs: re-checked at every read, links never followed -----------------------------------


@pytest.fixture
def tree(tmp_path):
    """allowed/sub/b.jsonl under the root, and outside/sub/b.jsonl with other bytes beside it."""
    for top, content in (("allowed", b'{"ok": 1}\n'), ("outside", b'{"secret": 1}\n')):
        (tmp_path / top / "sub").mkdir(parents=True)
        (tmp_path / top / "sub" / "b.jsonl").write_bytes(content)
    return tmp_path


def _read(path, roots):
    with open_input_file(path, allowed_file_roots=roots) as f:
        return f.read()


def test_a_checked_file_is_read_without_following_links(tree):
    roots = [tree / "allowed"]
    source = check_input_url(f"file://{tree}/allowed/sub/b.jsonl", allowed_file_roots=roots, allowed_https_hosts=[])
    assert _read(source.url, roots) == b'{"ok": 1}\n'


def test_a_folder_swapped_for_a_link_after_the_check_is_refused_at_read(tree):
    roots = [tree / "allowed"]
    source = check_input_url(f"file://{tree}/allowed/sub/b.jsonl", allowed_file_roots=roots, allowed_https_hosts=[])
    (tree / "allowed" / "sub").rename(tree / "allowed" / "old")
    (tree / "allowed" / "sub").symlink_to(tree / "outside" / "sub")
    with pytest.raises(JobRequestError, match="links are not followed") as exc:
        _read(source.url, roots)
    assert str(tree) not in str(exc.value) and exc.value.field == "input_file_url"


def test_a_file_swapped_for_a_link_after_the_check_is_refused_at_read(tree):
    roots = [tree / "allowed"]
    source = check_input_url(f"file://{tree}/allowed/sub/b.jsonl", allowed_file_roots=roots, allowed_https_hosts=[])
    (tree / "allowed" / "sub" / "b.jsonl").unlink()
    (tree / "allowed" / "sub" / "b.jsonl").symlink_to(tree / "outside" / "sub" / "b.jsonl")
    with pytest.raises(JobRequestError, match="links are not followed") as exc:
        _read(source.url, roots)
    assert str(tree) not in str(exc.value)


def test_reading_refuses_folders_fifos_missing_files_and_paths_outside(tree):
    roots = [tree / "allowed"]
    os.mkfifo(tree / "allowed" / "pipe.jsonl")
    cases = {
        tree / "allowed" / "sub": "not a regular file",
        tree / "allowed": "not a regular file",
        tree / "allowed" / "pipe.jsonl": "not a regular file",  # opened without blocking, then refused
        tree / "allowed" / "sub" / "gone.jsonl": "no such file",
        tree / "outside" / "sub" / "b.jsonl": "outside the allowed folders",
        f"{tree}/allowed/sub/../../outside/sub/b.jsonl": "outside the allowed folders",
        "relative/b.jsonl": "outside the allowed folders",
    }
    for path, message in cases.items():
        with pytest.raises(JobRequestError, match=message) as exc:
            _read(path, roots)
        assert str(tree) not in str(exc.value)
    with pytest.raises(JobRequestError, match="outside the allowed folders"):
        _read(tree / "allowed" / "sub" / "b.jsonl", [])


def test_the_operators_root_may_itself_be_a_link(tree):
    (tree / "root-link").symlink_to(tree / "allowed")
    roots = [tree / "root-link"]
    source = check_input_url(f"file://{tree}/root-link/sub/b.jsonl", allowed_file_roots=roots, allowed_https_hosts=[])
    assert _read(source.url, roots) == b'{"ok": 1}\n'


def test_file_url_refusals_show_no_server_path(tmp_path):
    roots = {"allowed_file_roots": [tmp_path / "allowed"], "allowed_https_hosts": []}
    (tmp_path / "allowed").mkdir()
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    for url in (f"file://{tmp_path}/loop/x.jsonl", f"file://{tmp_path}/x%00.jsonl", "file://x.jsonl", "file:x.jsonl"):
        with pytest.raises(JobRequestError) as exc:
            check_input_url(url, **roots)
        assert str(tmp_path / "allowed") not in str(exc.value) and exc.value.field == "input_file_url"
