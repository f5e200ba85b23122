"""Listing and deleting batch versions on real filesystems: local disk, memory:// and loopback S3."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from nightshift.core.retention import expired
from nightshift.settings import StorageConfig
from nightshift.storage import ArtifactStore
from nightshift.storage.retention import delete_cache_entries, delete_version, expired_cache_entries, list_versions


@pytest.fixture(params=["local", "memory", "s3"])
def store(request, tmp_path) -> ArtifactStore:
    if request.param == "local":
        return ArtifactStore(str(tmp_path / "store"))
    if request.param == "memory":
        return ArtifactStore(f"memory://retention-{uuid.uuid4().hex[:8]}")
    bucket, endpoint = request.getfixturevalue("s3_bucket"), request.getfixturevalue("s3_endpoint")
    return ArtifactStore.from_config(StorageConfig(root=f"{bucket}/store", endpoint_url=endpoint))


def _fake_version(store: ArtifactStore, batch_id: str, version: str) -> None:
    paths = store.batch(batch_id, version)
    store.write_bytes(paths.input, b"{}\n")
    store.write_bytes(paths.shard_results("shard-00000"), b"{}\n")
    store.write_bytes(paths.manifest, b"{}")


def test_list_and_delete_versions(store):
    # S3 keeps LastModified to the second, and the loopback server's clock is ours.
    before = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    for batch_id, version in [("a", "v1"), ("a", "v2"), ("b", "v1")]:
        _fake_version(store, batch_id, version)
    store.write_bytes(f"{store.root}/batches/README.txt", b"not a version")
    after = datetime.now(UTC) + timedelta(seconds=1)

    versions = list_versions(store)
    assert [(v.batch_id, v.version) for v in versions] == [("a", "v1"), ("a", "v2"), ("b", "v1")]
    assert all(v.path == store.batch(v.batch_id, v.version).root for v in versions)
    assert all(before <= v.last_modified <= after for v in versions)
    assert expired(versions, after, timedelta(hours=1)) == []
    assert expired(versions, after + timedelta(days=8), timedelta(days=7)) == versions

    a1, a2, b1 = versions
    delete_version(store, a1)
    assert not store.exists(store.batch("a", "v1").manifest) and store.exists(store.batch("a", "v2").manifest)
    assert [v.version for v in list_versions(store) if v.batch_id == "a"] == ["v2"]
    delete_version(store, a2)  # the last version of "a": its batch folder goes too
    assert not store.exists(f"{store.root}/batches/a")
    assert [(v.batch_id, v.version) for v in list_versions(store)] == [("b", "v1")]
    delete_version(store, a2)  # already gone: nothing to do
    assert store.exists(store.batch("b", "v1").shard_results("shard-00000"))


def test_expired_cache_entries(store):
    keys = ["ab" + "0" * 62, "cd" + "1" * 62]
    for key in keys:
        store.write_bytes(f"{store.root}/cache/{key[:2]}/{key}.json", b"{}")
    now = datetime.now(UTC)
    assert expired_cache_entries(store, now, timedelta(hours=1)) == []
    gone = expired_cache_entries(store, now, timedelta(0))
    assert [p.rsplit("/", 1)[1] for p in gone] == [f"{k}.json" for k in keys]
    assert delete_cache_entries(store, gone) == 2
    assert expired_cache_entries(store, now, timedelta(0)) == []
    assert not store.exists(f"{store.root}/cache/ab")
    assert delete_cache_entries(store, []) == 0


def test_a_version_is_dated_by_its_newest_file(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    _fake_version(store, "b", "old")
    _fake_version(store, "b", "used")
    ten_days_ago = (datetime.now(UTC) - timedelta(days=10)).timestamp()
    for path in (tmp_path / "store/batches/b").rglob("*"):
        if path.is_file():
            os.utime(path, (ten_days_ago, ten_days_ago))
    store.write_bytes(store.batch("b", "used").sla, b"{}")  # a re-run rewrites sla.json

    old, used = list_versions(store)
    assert expired([old, used], datetime.now(UTC), timedelta(days=7)) == [old]
    assert abs(old.last_modified.timestamp() - ten_days_ago) < 1
