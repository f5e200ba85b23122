"""Two batches of different tiers on one warm engine: the later, urgent one is not queued behind
the large lax one (real Prefect server, local Ray, real vLLM on the tiny model)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from tests.batchfiles import read_jsonl, write_batch

pytestmark = pytest.mark.usefixtures("ray_session", "prefect_api")


def _manifest(result) -> dict:
    return json.loads(Path(result.manifest_uri.removeprefix("file://")).read_text())


def test_an_enterprise_batch_sent_after_a_large_free_batch_finishes_first(tmp_path, engine_env, store_root):
    from flows.batch import BatchRunParameters, process_batch
    from nightshift.core.runs import BatchRunContext, FaultInjection

    free_src, ent_src = tmp_path / "free-bulk.jsonl", tmp_path / "ent-urgent.jsonl"
    write_batch(free_src, 120, max_tokens=16)
    write_batch(ent_src, 10, max_tokens=16)
    results: dict[str, object] = {}
    errors: list[BaseException] = []

    def run_free() -> None:
        try:
            # The drill knob keeps the free batch going (12 shards, each held back 3 s) far longer
            # than the enterprise batch's own few seconds, even on a loaded machine.
            context = BatchRunContext(drill=FaultInjection(slow_shards_seconds=3.0))
            results["free"] = process_batch(BatchRunParameters(input_uri=str(free_src), tier="free", shard_size=10), context)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread below
            errors.append(exc)

    free = threading.Thread(target=run_free)
    free.start()
    deadline = time.monotonic() + 300
    while not list(Path(store_root).glob("batches/free-bulk/*/shards/*.results.jsonl")):  # the free batch is on the engine
        assert time.monotonic() < deadline and free.is_alive(), errors
        time.sleep(0.2)
    results["enterprise"] = process_batch(BatchRunParameters(input_uri=str(ent_src), tier="enterprise", shard_size=40))
    free.join(timeout=600)
    assert not errors, errors

    ent, bulk = _manifest(results["enterprise"]), _manifest(results["free"])
    assert ent["completed_at"] < bulk["completed_at"]  # sent later, finished first
    assert results["enterprise"].sla.met and results["free"].sla.met  # and the free batch keeps its own deadline
    # Both ran on the same warm engine replica: the order is the engine's, not two engines'.
    actors = {s["worker"]["actor"] for m in (ent, bulk) for s in m["shards"]}
    assert len(actors) == 1
    for result, n in ((results["enterprise"], 10), (results["free"], 120)):
        ids = [o["custom_id"] for o in read_jsonl(result.output_uri)]
        assert ids == [f"req-{i:03d}" for i in range(n)] and not read_jsonl(result.error_uri)
