"""Retention end to end: the real cleanup flow on a batch the real process-batch flow published."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.batchfiles import write_batch
from tests.flows.test_process_batch import _engine_requests_served, _run

pytestmark = pytest.mark.usefixtures("ray_session", "prefect_api")


def _cleanup(**kw):
    from flows.cleanup import CleanupParameters, cleanup

    return cleanup(CleanupParameters(**kw))


def _markdown(flow_run_id: str) -> str:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    assert [a.type for a in arts] == ["markdown"]
    return str(arts[0].data)


def test_cleanup_lists_then_deletes_and_the_next_run_recomputes(tmp_path, engine_env, store_root):
    from nightshift.storage import ArtifactStore
    from nightshift.storage.retention import delete_version, list_versions

    src = tmp_path / "old.jsonl"
    write_batch(src, 12)
    first = _run(src)
    assert first.engine_requests == 12
    batch_dir = Path(store_root, "batches", "old")
    version_uri = f"file://{batch_dir / first.version}"

    def cache_entries() -> list[Path]:
        return sorted(Path(store_root).glob("cache/*/*.json"))

    entries = cache_entries()
    assert len(entries) == 12

    # The default retention (7 days) keeps a fresh batch.
    kept = _cleanup()
    assert (kept.deleted, kept.cache_entries_deleted, kept.kept, kept.max_age_hours) == ([], 0, 1, 7 * 24)

    # A dry run names what would go and touches nothing.
    dry = _cleanup(dry_run=True, max_age_hours=0)
    assert dry.dry_run and dry.deleted == [version_uri]
    assert (dry.cache_entries_deleted, dry.kept) == (12, 0)
    assert (batch_dir / first.version / "manifest.json").exists() and cache_entries() == entries
    markdown = _markdown(dry.flow_run_id)
    assert "Would delete 1 version(s) and 12 cache entries" in markdown and first.version in markdown

    # Results gone while the cache still points at them: every lookup is a miss, not an error.
    store = ArtifactStore(store_root)
    delete_version(store, list_versions(store)[0])
    served = _engine_requests_served()
    again = _run(src)
    assert again.version == first.version and not again.reused
    assert (again.cache_hits, again.engine_requests, _engine_requests_served() - served) == (0, 12, 12)

    # The real thing: the batch folder and the cache entries go.
    done = _cleanup(max_age_hours=0)
    assert not done.dry_run and done.deleted == [version_uri]
    assert (done.cache_entries_deleted, done.kept) == (12, 0)
    assert not batch_dir.exists() and cache_entries() == []
    assert "Deleted 1 version(s)" in _markdown(done.flow_run_id)

    # The same requests again are computed afresh.
    served = _engine_requests_served()
    third = _run(src)
    assert third.version == first.version and not third.reused
    assert (third.cache_hits, third.engine_requests, _engine_requests_served() - served) == (0, 12, 12)
    assert third.request_counts.completed == 12 and len(cache_entries()) == 12
