from pathlib import Path

import pytest

from nightshift.core.errors import StorageError
from nightshift.storage import ArtifactStore


@pytest.mark.parametrize("root", ["local", "memory://ns-test"])
def test_write_read_and_layout(tmp_path, root):
    store = ArtifactStore(str(tmp_path / "s") if root == "local" else root)
    paths = store.batch("b1", "v1")
    store.write_bytes(paths.manifest, b"{}")
    assert store.read_bytes(paths.manifest) == b"{}" and store.exists(paths.manifest)
    assert paths.manifest.endswith("batches/b1/v1/manifest.json")
    with pytest.raises(StorageError, match="missing artifact"):
        store.read_bytes(paths.output)


def test_local_writes_leave_no_temp_files_and_urls_are_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = ArtifactStore("rel/store")
    assert store.url == f"file://{tmp_path}/rel/store"
    path = store.batch("b", "v").output
    store.write_bytes(path, b"x\n")
    store.write_bytes(path, b"y\n")
    files = [p.name for p in Path(tmp_path, "rel/store/batches/b/v").iterdir()]
    assert files == ["output.jsonl"] and Path(tmp_path, "rel/store/batches/b/v/output.jsonl").read_bytes() == b"y\n"


def test_throughput_is_kept_per_model_and_pool_under_path_safe_names(tmp_path):
    from datetime import UTC, datetime

    from nightshift.core.placement import ThroughputSample
    from nightshift.storage.pools import read_throughput, record_throughput

    store = ArtifactStore(str(tmp_path / "s"))
    at = datetime(2030, 1, 1, tzinfo=UTC)
    record_throughput(store, "gpu-spot", "org/big:7b", ThroughputSample(at=at, requests=10, seconds=10))
    record_throughput(store, "gpu-spot", "org/big:7b", ThroughputSample(at=at, requests=30, seconds=10))
    record_throughput(store, "gpu-spot", "small", ThroughputSample(at=at, requests=90, seconds=10))
    assert read_throughput(store, "gpu-spot", "org/big:7b").requests_per_second() == 2.0
    assert read_throughput(store, "gpu-spot", "small").requests_per_second() == 9.0
    assert read_throughput(store, "gpu-dedicated", "small").requests_per_second() is None  # no history there
    path = store.pool_throughput("gpu-spot", "org/big:7b")
    assert path.startswith(f"{store.root}/pools/gpu-spot/models/org_big_7b-") and path.count("/") == store.root.count("/") + 5
    assert store.pool_throughput("gpu-spot", "org_big_7b") != path  # a folded name never shares a log
    assert store.pool_throughput("gpu-spot", "small").endswith("/pools/gpu-spot/models/small/throughput.json")
