"""Prefect on PostgreSQL: `nightshift up --db postgresql+asyncpg://...` runs its own Prefect server
on a throwaway PostgreSQL, and a real process-batch run goes through the gpu-spot worker on it.

Ray is the session's (the flow run joins it by address, like the `stack`), so the run shares its
warm engine; only Prefect, its database and the workers are this test's own.
"""

from __future__ import annotations

import asyncio
import json
from uuid import UUID

from tests.batchfiles import read_jsonl, write_batch
from tests.deployments.stacks import up_env
from tests.pgdatabases import new_postgres_database


def _flow_run_row(database_url: str, flow_run_id: UUID) -> dict:
    """The flow run as Prefect stored it, read straight from PostgreSQL."""
    import asyncpg

    async def read() -> dict:
        conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            row = await conn.fetchrow(
                "SELECT f.state_type, f.state_name, d.name AS deployment, w.name AS pool FROM flow_run f "
                "JOIN deployment d ON d.id = f.deployment_id JOIN work_queue q ON q.id = f.work_queue_id "
                "JOIN work_pool w ON w.id = q.work_pool_id WHERE f.id = $1",
                flow_run_id,
            )
            return dict(row) if row else {}
        finally:
            await conn.close()

    return asyncio.run(read())


def test_a_deployment_runs_to_completed_on_prefect_over_postgres(run_up, postgres, ray_session, tiny_model, tmp_path):
    import ray
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from nightshift.services import free_port

    database_url = new_postgres_database(postgres, "prefect")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    home, store = tmp_path / "home", tmp_path / "store"
    env = up_env(home, store, tiny_model, ray.get_runtime_context().gcs_address)  # no PREFECT_API_URL: `up` starts a server
    src = tmp_path / "pg.jsonl"
    write_batch(src, 12, ["bad_body"])

    with run_up(env, home / "up.log", "--db", database_url, "--port", str(port), api_url=api_url):
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            run = run_deployment(
                "process-batch/spot", parameters={"params": {"input_uri": str(src), "tier": "free"}}, timeout=300, poll_interval=2
            )
        assert run.state is not None and run.state.is_completed(), run.state
        # The server kept this run in PostgreSQL: the row is there, Completed, on the spot pool.
        assert _flow_run_row(database_url, run.id) == {
            "state_type": "COMPLETED",
            "state_name": "Completed",
            "deployment": "spot",
            "pool": "gpu-spot",
        }
    assert not (home / "prefect" / "prefect.db").exists()  # and no SQLite database beside it

    (manifest,) = store.glob("batches/pg/*/manifest.json")
    published = json.loads(manifest.read_text())
    assert published["request_counts"] == {"total": 13, "completed": 12, "failed": 1}
    out, err = read_jsonl(published["output_file"]["path"]), read_jsonl(published["error_file"]["path"])
    assert (len(out), len(err)) == (12, 1)
    assert sorted(line["custom_id"] for line in out + err) == sorted([f"req-{i:03d}" for i in range(12)] + ["bad-body"])
