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
