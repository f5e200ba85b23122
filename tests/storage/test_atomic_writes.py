"""Kill the writer: a reader never sees part of an artifact, and the next write is whole."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nightshift.core.errors import StorageError
from nightshift.settings import StorageConfig
from nightshift.storage import ArtifactStore

REPO = Path(__file__).resolve().parents[2]

#: Big enough that writing it takes a while even into the page cache, so the kill can land mid-write.
SIZE = 300 * 1024**2

#: The writer: build the payload, say so, write it through the store. argv: root, path, size.
WRITER = """
import sys
from nightshift.settings import StorageConfig
from nightshift.storage import ArtifactStore
root, path, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
data = (bytes(range(256)) * (size // 256 + 1))[:size]
store = ArtifactStore.from_config(StorageConfig(root=root, endpoint_url=sys.argv[4] if len(sys.argv) > 4 else None))
print("writing", flush=True)
store.write_bytes(path, data)
print("done", flush=True)
"""


def _payload(size: int) -> bytes:
    return (bytes(range(256)) * (size // 256 + 1))[:size]


def _writer(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", WRITER, *args], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _kill_when_temp_file_appears(root: str, folder: Path, target: Path, *, timeout: float = 60.0) -> bool:
    """Start a writer of ``target``, SIGKILL it once its hidden temp file exists.

    Returns True when the kill landed between the start of the write and the rename.
    """
    proc = _writer(root, str(target), str(SIZE))
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            if folder.is_dir() and any(p.name.startswith(f".{target.name}.") for p in folder.iterdir()):
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.001)
    finally:
        _kill(proc)
    return proc.returncode == -signal.SIGKILL and not target.exists()


def test_a_killed_local_writer_leaves_no_partial_file(tmp_path):
    store = ArtifactStore(str(tmp_path / "store"))
    folder = Path(store.batch("b", "v").root)
    target = Path(store.batch("b", "v").output)
    landed = 0
    for _ in range(5):  # the machine may be busy: retry until a kill lands mid-write
        if _kill_when_temp_file_appears(store.url, folder, target):
            landed += 1
            break
        target.unlink(missing_ok=True)
    assert landed, "the writer always finished before it could be killed"

    # What a crash leaves: only a hidden temp file; the artifact itself does not exist.
    leftovers = [p.name for p in folder.iterdir()]
    assert leftovers and all(n.startswith(".output.jsonl.") and n.endswith(".tmp") for n in leftovers)
    assert not store.exists(str(target))
    with pytest.raises(StorageError, match="missing artifact"):
        store.read_bytes(str(target))
    listed = [p.rsplit("/", 1)[1] for p in store.fs.ls(str(folder), detail=False)]
    assert [n for n in listed if not n.startswith(".")] == []

    # The next write of the same path is whole.
    data = _payload(SIZE)
    store.write_bytes(str(target), data)
    assert target.stat().st_size == SIZE
    assert hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(data).digest()
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["output.jsonl"]


def test_an_s3_object_is_absent_or_complete(s3_bucket, s3_endpoint):
    store = ArtifactStore.from_config(StorageConfig(root=f"{s3_bucket}/store", endpoint_url=s3_endpoint))
    size = 64 * 1024**2  # over s3fs's 50 MiB part size: a multipart upload, completed only at the end
    want = hashlib.sha256(_payload(size)).hexdigest()
    absent = 0
    for delay in (0.0, 0.2, 0.5, 1.0):
        path = store.batch("b", f"kill-{delay}").output
        proc = _writer(f"{s3_bucket}/store", path, str(size), s3_endpoint)
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
            time.sleep(delay)
        finally:
            _kill(proc)
        # The server may still be finishing a request the writer sent just before it died.
        time.sleep(0.5)
        if store.fs.find(store.batch("b", f"kill-{delay}").root):  # the upload completed: then it is whole
            data = store.read_bytes(path)
            assert len(data) == size and hashlib.sha256(data).hexdigest() == want
        else:  # killed mid-upload: no object at all, not a short one
            absent += 1
    assert absent, "no kill landed during an upload"

    path = store.batch("b", "whole").output
    store.write_bytes(path, _payload(size))
    assert hashlib.sha256(store.read_bytes(path)).hexdigest() == want
