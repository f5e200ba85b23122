"""Drill: the store's disk fills up while the engine writes a shard (a real ENOSPC from a
size-limited tmpfs): the run fails clearly, nothing partial is published, and once space is back
the next run resumes from the shards finished before.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.batchfiles import write_batch
from tests.drills.faults import answers, undisturbed

pytestmark = pytest.mark.usefixtures("ray_session", "prefect_api")

N, SHARD = 20, 5  # four shards


@pytest.fixture
def small_disk() -> Iterator[Path]:
    """A 4 MiB tmpfs: a disk that really fills up (mounting needs root)."""
    if os.geteuid() != 0:
        pytest.skip("a size-limited disk needs root to mount a tmpfs (`mount -t tmpfs -o size=4m`)")
    folder = Path(tempfile.mkdtemp(prefix="ns-full-"))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        folder.rmdir()
        pytest.skip(f"cannot mount a tmpfs here (no CAP_SYS_ADMIN?): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
        folder.rmdir()


def _fill(disk: Path) -> Path:
    """Fill ``disk`` until it has no byte left; returns the ballast file."""
    ballast = disk / "ballast"
    with open(ballast, "wb", buffering=0) as f:
        for size in (1 << 16, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * size)
    with pytest.raises(OSError) as full:
        (disk / "probe").write_bytes(b"x")
    assert full.value.errno == errno.ENOSPC
    return ballast


def _run(src, slow: float | None = None):
    from flows.batch import BatchRunParameters, process_batch
    from nightshift.core.runs import BatchRunContext, FaultInjection

    context = BatchRunContext(drill=FaultInjection(slow_shards_seconds=slow)) if slow else None
    return process_batch(BatchRunParameters(input_uri=str(src), shard_size=SHARD), context)


def test_a_full_disk_fails_the_run_cleanly_and_the_run_resumes_once_space_is_back(tmp_path, engine_env, monkeypatch, small_disk):
    src = tmp_path / "drill.jsonl"
    write_batch(src, N)
    expected = undisturbed(src, SHARD)

    store = small_disk / "store"
    monkeypatch.setenv("NIGHTSHIFT_STORAGE_ROOT", str(store))
    ballast: list[Path] = []

    def fill_after_first_shard() -> None:
        deadline = time.monotonic() + 120
        while not list(store.glob("batches/*/*/shards/*.results.jsonl")):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ballast.append(_fill(small_disk))

    filler = threading.Thread(target=fill_after_first_shard, daemon=True)
    filler.start()
    with pytest.raises(Exception) as failed:
        _run(src, slow=1.5)  # the engine holds the next shards until the driver books the last
    filler.join()
    message = str(failed.value)
    assert "the artifact store is full" in message, message
    for leak in (str(small_disk), "Errno", "Traceback"):
        assert leak not in message, message

    # Nothing partial is published: no temp file left, no output or manifest, and every shard
    # results file there is whole.
    (version,) = (store / "batches").glob("*/*")
    files = [p for p in version.rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.endswith(".tmp")], files
    assert not (version / "manifest.json").exists() and not (version / "output.jsonl").exists()
    finished = sorted(version.glob("shards/*.results.jsonl"))
    assert 1 <= len(finished) < N // SHARD
    assert all(len(p.read_text().splitlines()) == SHARD for p in finished)

    ballast[0].unlink()  # space is back
    resumed = _run(src)
    assert resumed.reused_shards == len(finished)  # the finished shards are kept...
    assert resumed.engine_requests == N - SHARD * len(finished)  # ...and not computed again
    assert answers(resumed) == expected
