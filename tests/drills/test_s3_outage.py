"""Drill: the S3 store unreachable mid-batch (moto's S3 server on loopback behind a TCP gate).

For 30 s: every storage call retries with backoff (tenacity, ``storage.retry_seconds``) and the
batch completes as if nothing happened. For good: the run fails with a clear error, and the next
run resumes from the shards finished before the outage.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import s3fs

from tests.batchfiles import write_batch
from tests.drills.faults import TcpGate, answers, undisturbed

pytestmark = pytest.mark.usefixtures("ray_session", "prefect_api")

N, SHARD = 20, 5  # four shards


@pytest.fixture
def gate(s3_endpoint: str) -> Iterator[TcpGate]:
    g = TcpGate(int(s3_endpoint.rsplit(":", 1)[1]))
    yield g
    g.close()


def _run(src, slow: float | None = None):
    from flows.batch import BatchRunParameters, process_batch
    from nightshift.core.runs import BatchRunContext, FaultInjection

    context = BatchRunContext(drill=FaultInjection(slow_shards_seconds=slow)) if slow else None
    return process_batch(BatchRunParameters(input_uri=str(src), shard_size=SHARD), context)


def _on_s3(monkeypatch, bucket: str, gate: TcpGate, retry_seconds: float) -> None:
    monkeypatch.setenv("NIGHTSHIFT_STORAGE_ROOT", f"{bucket}/store")
    monkeypatch.setenv("NIGHTSHIFT_STORAGE_ENDPOINT_URL", gate.url)
    monkeypatch.setenv("NIGHTSHIFT_STORAGE_RETRY_SECONDS", str(retry_seconds))


def _cut_after_first_shard(s3_endpoint: str, bucket: str, gate: TcpGate, outage: float | None) -> threading.Thread:
    """Once the first shard's results are on S3 (seen past the gate), cut the gate; restore it
    after ``outage`` seconds (None: never)."""
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True, use_listings_cache=False)

    def drill() -> None:
        deadline = time.monotonic() + 120
        while not fs.glob(f"{bucket}/store/batches/*/*/shards/*.results.jsonl"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        gate.cut()
        if outage is not None:
            time.sleep(outage)
            gate.restore()

    thread = threading.Thread(target=drill, daemon=True)
    thread.start()
    return thread


def test_a_30_second_s3_outage_mid_batch_is_ridden_out(tmp_path, engine_env, monkeypatch, s3_endpoint, s3_bucket, gate):
    src = tmp_path / "drill.jsonl"
    write_batch(src, N)
    expected = undisturbed(src, SHARD)

    _on_s3(monkeypatch, s3_bucket, gate, retry_seconds=120)
    started = time.monotonic()
    drill = _cut_after_first_shard(s3_endpoint, s3_bucket, gate, outage=30)
    result = _run(src, slow=1.5)  # the engine holds the next shards until the driver books the last
    drill.join()

    assert gate.refused > 0 and time.monotonic() - started > 30  # the outage hit the run, which waited it out
    assert answers(result, _s3_reader(s3_endpoint)) == expected
    assert (result.engine_requests, result.reused_shards) == (N, 0)  # every request computed once


def test_s3_gone_for_good_fails_clearly_and_the_next_run_resumes(tmp_path, engine_env, monkeypatch, s3_endpoint, s3_bucket, gate):
    src = tmp_path / "drill.jsonl"
    write_batch(src, N)
    expected = undisturbed(src, SHARD)

    _on_s3(monkeypatch, s3_bucket, gate, retry_seconds=3)
    drill = _cut_after_first_shard(s3_endpoint, s3_bucket, gate, outage=None)
    with pytest.raises(Exception) as failed:
        _run(src, slow=1.5)
    drill.join()
    message = str(failed.value)
    assert "the artifact store did not answer for 3 s" in message, message
    for leak in ("127.0.0.1", "botocore", "Traceback", "s3fs", "EndpointConnection"):
        assert leak not in message, message

    gate.restore()
    resumed = _run(src)
    assert resumed.reused_shards >= 1  # the shards finished before the outage are kept...
    assert resumed.engine_requests == N - SHARD * resumed.reused_shards  # ...and not computed again
    assert answers(resumed, _s3_reader(s3_endpoint)) == expected


def _s3_reader(s3_endpoint: str):
    import json

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": s3_endpoint}, skip_instance_cache=True, use_listings_cache=False)
    return lambda uri: [json.loads(line) for line in fs.cat_file(uri).splitlines() if line.strip()]
