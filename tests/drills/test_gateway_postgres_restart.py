"""Drill: the gateway's PostgreSQL restarted while batches are tracked.

A gateway (`nightshift serve`) on a PostgreSQL of this test's own, in front of a `nightshift up` of
its own (Prefect server, pools, workers) on the session's Ray. Right after two batches are created the
database goes away and comes back on the same data; the gateway answers errors meanwhile (no
hang), then tracks both batches to completed, every custom_id once, as if nothing happened.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.batchfiles import write_batch
from tests.deployments.conftest import nightshift_up
from tests.deployments.gateways import cli, start_gateway
from tests.deployments.stacks import up_env
from tests.pgdatabases import new_postgres_database


@pytest.mark.usefixtures("ray_session")
def test_a_postgres_restart_while_batches_are_tracked_loses_nothing(tiny_model, tmp_path):
    import ray

    from nightshift.services import free_port

    if not (shutil.which("initdb") and shutil.which("postgres")):
        pytest.skip("PostgreSQL server binaries (initdb, postgres) are not on PATH")
    home = tmp_path / "home"
    env = up_env(home, tmp_path / "store", tiny_model, ray.get_runtime_context().gcs_address)
    api_port = free_port()
    api_url = f"http://127.0.0.1:{api_port}/api"
    with nightshift_up(env, home / "up.log", "--port", str(api_port), api_url=api_url):
        _drill({**env, "PREFECT_API_URL": api_url}, tmp_path)


def _drill(stack_env: dict[str, str], tmp_path: Path) -> None:
    from nightshift.services import free_port, local_postgres, stop_process_group

    folder = Path(tempfile.mkdtemp(prefix="ns-pgdrill-"))  # not under pytest's tmp: as root, postgres runs as nobody
    pg_port = free_port()
    database = local_postgres(folder, port=pg_port)
    address = database.__enter__()
    gateway = None
    try:
        env = {
            **stack_env,
            "NIGHTSHIFT_API_DATABASE_URL": new_postgres_database(address, "gwdrill"),
            "NIGHTSHIFT_API_JWT_SECRET": "test-secret-for-hs256-tokens-0123456789",
            "NIGHTSHIFT_API_TRACK_SECONDS": "1",
            "NIGHTSHIFT_API_KEY_CACHE_SECONDS": "60",  # the key stays known while the database is away
        }
        key = cli(env, "keys", "create", "--org", "acme", "--tier", "premium").strip().splitlines()[-1]
        port = free_port()
        gateway = start_gateway(env, port, tmp_path / "gateway.log")
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=30)
        batches = []
        for k in range(2):
            src = tmp_path / f"pgdrill-{k}.jsonl"
            write_batch(src, 6, max_tokens=4 + k)  # two different batches
            uploaded = client.files.create(file=src.open("rb"), purpose="batch")
            batches.append(
                client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h").id
            )

        database.__exit__(None, None, None)  # the database goes away while both are tracked...
        try:  # answered from the gateway's last look, or refused: either way at once, not a hang
            client.batches.retrieve(batches[0])
        except openai.APIStatusError as refused:
            assert refused.status_code >= 500, refused
        time.sleep(3)
        database = local_postgres(folder, port=pg_port)  # ...and comes back on the same data
        database.__enter__()

        # While PostgreSQL replays its log it refuses connections ("starting up"): the gateway answers
        # 5xx then, which the OpenAI client retries by default (here five times, with backoff).
        client = client.with_options(max_retries=5)
        deadline = time.monotonic() + 300
        for batch_id in batches:
            while (b := client.batches.retrieve(batch_id)).status not in ("completed", "failed", "expired", "cancelled"):
                assert time.monotonic() < deadline, b
                time.sleep(1)
            assert b.status == "completed", b
            assert (b.request_counts.total, b.request_counts.completed, b.request_counts.failed) == (6, 6, 0)
            out = [json.loads(line) for line in client.files.content(b.output_file_id).text.splitlines()]
            assert sorted(o["custom_id"] for o in out) == [f"req-{i:03d}" for i in range(6)]
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
    finally:
        if gateway is not None:
            stop_process_group(gateway)
        database.__exit__(None, None, None)
        shutil.rmtree(folder, ignore_errors=True)
