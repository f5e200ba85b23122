"""The stack `nightshift up` starts, shared by the tests that need pools, workers and automations."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deployments.stacks import up_env

POOLS = ("gpu-spot", "gpu-dedicated", "nightshift-ops")


def _online_workers(pool: str) -> int:
    from prefect import get_client
    from prefect.client.schemas.filters import WorkerFilter, WorkerFilterStatus

    with get_client(sync_client=True) as client:
        online = WorkerFilter(status=WorkerFilterStatus(any_=["ONLINE"]))
        return len(client.read_workers_for_work_pool(pool, worker_filter=online))


@contextlib.contextmanager
def nightshift_up(env: dict[str, str], log: Path, *args: str, api_url: str, timeout: float = 240) -> Iterator[None]:
    """`nightshift up ARGS` as a user runs it, until it says ready and every pool has an online
    worker on the Prefect API at ``api_url``; then SIGTERM (it stops its workers) and its group."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from nightshift.services import start_process, stop_process_group

    proc = start_process([sys.executable, "-m", "nightshift.cli", "up", *args], env, log)
    try:
        deadline = time.monotonic() + timeout
        while not (log.exists() and "ready" in log.read_text()):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(1)
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            while not all(_online_workers(p) for p in POOLS):
                assert time.monotonic() < deadline, "workers never came online: " + log.read_text()
                time.sleep(1)
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)  # `up` stops its workers on SIGTERM
        stop_process_group(proc)


@pytest.fixture(scope="session")
def run_up():
    """``nightshift_up`` for tests that start their own stack (another database, another Ray)."""
    return nightshift_up


@pytest.fixture(scope="session")
def stack(prefect_api, ray_session, tiny_model, s3_endpoint, tmp_path_factory):
    """`nightshift up` as a user runs it, joined to the session's Prefect and Ray; stopped by its pid."""
    import ray

    home = tmp_path_factory.mktemp("up-home")
    store = home / "store"
    env = {
        **up_env(home, store, tiny_model, ray.get_runtime_context().gcs_address),
        "PREFECT_API_URL": prefect_api,
        # The store is local; s3:// inputs (job API) are read from the loopback S3 server.
        "NIGHTSHIFT_STORAGE_ENDPOINT_URL": s3_endpoint,
        # The seconds-scale SLA drills need at-risk to mean "ETA past the deadline", not 6 min past it.
        "NIGHTSHIFT_SLA_AT_RISK_MARGIN_SECONDS": "0",
    }
    log = home / "up.log"
    with nightshift_up(env, log, api_url=prefect_api):
        yield {"env": env, "store": store, "home": home, "log": log}


@pytest.fixture
def settings(stack, monkeypatch):
    """This process's settings pointed at the stack's store (placement reads throughput there)."""
    from nightshift.settings import Settings

    monkeypatch.setenv("NIGHTSHIFT_STORAGE_ROOT", str(stack["store"]))
    return Settings()
