from datetime import UTC, datetime, timedelta

import fsspec
import pytest

from nightshift.core.artifacts import ResultRow, compute_version, to_output_line
from nightshift.core.hashing import sha256_bytes, sha256_tree
from nightshift.core.protocol import BatchError, BatchRequestOutput, Endpoint, ValidRequest
from nightshift.core.sharding import decode_shard, plan_shards
from nightshift.core.sla import Tier, deadline_for, sla_report


def _requests(n):
    return [ValidRequest(line=i + 1, custom_id=f"r{i}", url=Endpoint.CHAT_COMPLETIONS, body={"messages": []}) for i in range(n)]


def test_shards_are_deterministic_and_cover_every_request_once():
    a, b = plan_shards(_requests(25), 10), plan_shards(_requests(25), 10)
    assert [s.sha256 for s, _ in a] == [s.sha256 for s, _ in b]
    assert [s.num_requests for s, _ in a] == [10, 10, 5]
    assert [s.name for s, _ in a] == ["shard-00000", "shard-00001", "shard-00002"]
    back = [r.custom_id for _, data in a for r in decode_shard(data)]
    assert back == [f"r{i}" for i in range(25)]
    assert all(sha256_bytes(data) == spec.sha256 for spec, data in a)
    with pytest.raises(ValueError):
        plan_shards(_requests(3), 0)


def test_version_changes_with_any_input():
    base = dict(
        input_sha256="a" * 64, model_sha256="b" * 64, engine_params={"dtype": "float32"}, endpoint=Endpoint.CHAT_COMPLETIONS
    )
    v = compute_version(**base)
    assert v == compute_version(**base) and len(v) == 16
    for change in (
        {"input_sha256": "c" * 64},
        {"model_sha256": "d" * 64},
        {"engine_params": {"dtype": "bfloat16"}},
        {"endpoint": Endpoint.COMPLETIONS},
    ):
        assert compute_version(**{**base, **change}) != v


def test_output_lines_have_stable_ids_and_the_right_file():
    ok = to_output_line(ResultRow(line=3, custom_id="a", body={"x": 1}), version="v1")
    again = to_output_line(ResultRow(line=3, custom_id="a", body={"x": 1}), version="v1")
    bad = to_output_line(ResultRow(line=4, custom_id="b", error=BatchError(code="engine_error", message="boom")), version="v1")
    assert ok.id == again.id and ok.response.request_id == again.response.request_id
    assert ok.ok and not bad.ok and bad.response is None
    assert BatchRequestOutput.model_validate_json(bad.model_dump_json()).error.code == "engine_error"


def test_tree_hash_sees_content_and_names(tmp_path):
    fs = fsspec.filesystem("file")
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    (tmp_path / "m" / "w.bin").write_bytes(b"1234")
    h = sha256_tree(fs, str(tmp_path / "m"))
    (tmp_path / "m" / "w.bin").write_bytes(b"1235")
    assert sha256_tree(fs, str(tmp_path / "m")) != h


@pytest.mark.parametrize(("tier", "hours"), [(Tier.ENTERPRISE, 6), (Tier.PREMIUM, 12), (Tier.BASIC, 24), (Tier.FREE, 72)])
def test_tier_deadlines(tier, hours):
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    assert deadline_for(t0, tier) == t0 + timedelta(hours=hours)


def test_sla_report_met_and_breached():
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    met = sla_report(
        tier=Tier.ENTERPRISE, submitted_at=t0, finished_at=t0 + timedelta(hours=5), requests=100, tokens=1000, busy_seconds=50
    )
    assert met.met and met.slack_seconds == 3600 and met.requests_per_second == 2 and met.tokens_per_second == 20
    late = sla_report(tier=Tier.ENTERPRISE, submitted_at=t0, finished_at=t0 + timedelta(hours=7), requests=0, tokens=0)
    assert not late.met and late.slack_seconds == -3600 and late.requests_per_second == 0
    custom = sla_report(
        tier=Tier.FREE, submitted_at=t0, finished_at=t0 + timedelta(hours=2), requests=1, tokens=1, tier_hours={"free": 1.0}
    )
    assert not custom.met


def test_a_manifest_shard_without_a_worker_still_loads():
    from nightshift.core.artifacts import ShardRecord, WorkerRecord

    old = {"name": "shard-00000", "index": 0, "num_requests": 2, "input": {"path": "p", "sha256": "0" * 64, "bytes": 9}}
    assert ShardRecord.model_validate(old).worker is None  # written before shard records named their worker
    new = ShardRecord.model_validate({**old, "worker": {"node_id": "ab12", "hostname": "h", "pid": 7, "actor": "engine-x-1"}})
    assert new.worker == WorkerRecord(node_id="ab12", hostname="h", pid=7, actor="engine-x-1")
