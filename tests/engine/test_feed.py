"""The shard feed with replicas that come and go (real Ray, stand-in replicas: no engine is loaded).

A stand-in replica answers ``run_shard`` like the engine actor does (reads the shard, writes one
result row per request) unless told to refuse it as retiring, to die in the middle of it (its
process exits, as when its node is lost) or to fail to start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nightshift.core.artifacts import decode_results
from nightshift.core.errors import EngineError
from nightshift.core.protocol import Endpoint, ValidRequest
from nightshift.core.sharding import encode_shard
from nightshift.engine.runner import EngineSpec, ReplicaFleet, ShardJob, run_shards
from nightshift.settings import EngineConfig, StorageConfig
from nightshift.storage import ArtifactStore

SPEC = EngineSpec(model_path="/m", served_model_name="m", endpoint=Endpoint.CHAT_COMPLETIONS, config=EngineConfig())


def _replica(behaviour: str) -> Any:
    """A stand-in engine replica (defined here so Ray ships it by value)."""
    import os

    import ray

    from nightshift.core.artifacts import ResultRow, encode_rows
    from nightshift.core.sharding import decode_shard
    from nightshift.engine.runner import ReplicaRetired, ShardOutcome

    @ray.remote(num_cpus=0, max_concurrency=4)
    class Replica:
        def __init__(self) -> None:
            if behaviour == "cannot-start":
                raise RuntimeError("no engine here")

        def run_shard(self, storage: StorageConfig, name: str, requests_path: str, results_path: str, priority: int = 0):
            if behaviour == "retiring":
                raise ReplicaRetired("retiring")
            if behaviour == "dies":
                os._exit(1)
            store = ArtifactStore.from_config(storage)
            rows = [
                ResultRow(line=r.line, custom_id=r.custom_id, body={"by": behaviour})
                for r in decode_shard(store.read_bytes(requests_path))
            ]
            data = encode_rows(rows)
            store.write_bytes(results_path, data)
            return ShardOutcome.of(name, results_path, data, rows, 0.0)

    return Replica.remote()


class _Fleet(ReplicaFleet):
    refresh_seconds = 0.2

    def __init__(self, behaviours: dict[str, str]) -> None:
        super().__init__(SPEC)
        self.actors = {name: _replica(b) for name, b in behaviours.items()}
        self.reported: list[int] = []

    def replicas(self) -> dict[str, Any]:
        return dict(self.actors)

    def report(self, remaining: int) -> None:
        self.reported.append(remaining)


def _jobs(root: Path, shards: int = 6, per_shard: int = 3) -> tuple[StorageConfig, list[ShardJob]]:
    storage = StorageConfig(root=str(root))
    store = ArtifactStore.from_config(storage)
    jobs = []
    for s in range(shards):
        requests = [
            ValidRequest(line=s * per_shard + i + 1, custom_id=f"r{s}-{i}", url=Endpoint.CHAT_COMPLETIONS, body={})
            for i in range(per_shard)
        ]
        store.write_bytes(f"{root}/shard-{s}", encode_shard(requests))
        jobs.append(
            ShardJob(name=f"s{s}", requests_path=f"{root}/shard-{s}", results_path=f"{root}/res-{s}", num_requests=per_shard)
        )
    return storage, jobs


@pytest.mark.parametrize("other", ["retiring", "dies"])
def test_a_shard_whose_replica_retires_or_dies_runs_on_another_and_none_is_lost(ray_session, tmp_path, other):
    storage, jobs = _jobs(tmp_path)
    fleet = _Fleet({"good": "good", "other": other})
    outcomes = run_shards(SPEC, storage, jobs, fleet=fleet)
    assert sorted(o.name for o in outcomes) == sorted(j.name for j in jobs)  # each shard once
    store = ArtifactStore.from_config(storage)
    for job in jobs:
        rows = decode_results(store.read_bytes(job.results_path))
        assert len(rows) == 3 and all(r.body == {"by": "good"} for r in rows)
    assert fleet.reported[0] == 18 and fleet.reported[-1] == 0  # the controller heard the work go down to nothing


def test_a_replica_whose_engine_cannot_load_fails_the_run(ray_session, tmp_path):
    storage, jobs = _jobs(tmp_path, shards=1)
    with pytest.raises(Exception, match="no engine here"):
        run_shards(SPEC, storage, jobs, fleet=_Fleet({"broken": "cannot-start"}))


def test_a_shard_that_kills_every_replica_stops_after_a_few_attempts(ray_session, tmp_path):
    storage, jobs = _jobs(tmp_path, shards=1)

    class Deadly(_Fleet):
        def replicas(self) -> dict[str, Any]:
            # A fresh replica each time the last one died, as a fixed fleet or the controller provides.
            import ray

            for name, actor in list(self.actors.items()):
                ready, _ = ray.wait([actor.__ray_ready__.remote()], timeout=0.5)
                if ready:
                    try:
                        ray.get(ready[0])
                    except ray.exceptions.RayActorError:
                        self.actors[name + "'"] = _replica("dies")
                        del self.actors[name]
            return dict(self.actors)

    with pytest.raises(EngineError, match="lost its engine replica"):
        run_shards(SPEC, storage, jobs, fleet=Deadly({"r": "dies"}))
