"""``nightshift pools apply``: create or update the work pools declared in ``pools.yaml``.

Idempotent: each pool is created when missing and otherwise brought back to its declaration
(concurrency limit, description, base job template), so running it again is always safe.
A pool's *type* is fixed when Prefect creates it; switching a pool from ``process`` to
``kubernetes`` means deleting it first (``prefect work-pool delete``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field

from nightshift.core.errors import OrchestrationError

ROOT = Path(__file__).resolve().parents[1]
POOLS_FILE = Path(__file__).with_name("pools.yaml")


class PoolDeclaration(BaseModel):
    """One work pool as declared in ``pools.yaml``."""

    name: str
    kind: Literal["spot", "dedicated", "ops"]
    description: str = ""
    concurrency_limit: int | None = Field(default=None, ge=0, description="Flow runs at once; None: no limit.")
    kubernetes_base_job_template: str | None = Field(
        default=None, description="Template file (repo-relative) for --type kubernetes."
    )
    queues: dict[str, int] = Field(
        default_factory=dict, description="Work queue name → priority (1 first); 'default' is the deployments' queue."
    )

    def base_job_template(self, pool_type: str) -> dict[str, Any]:
        """The job template for ``pool_type``: the worker's default for ``process``, ours for Kubernetes."""
        if pool_type == "process":
            from prefect.workers.process import ProcessWorker

            return ProcessWorker.get_default_base_job_template()
        if pool_type == "kubernetes" and self.kubernetes_base_job_template:
            return json.loads((ROOT / self.kubernetes_base_job_template).read_text())
        raise OrchestrationError(f"pool {self.name!r} declares no base job template for type {pool_type!r}")


def load_pools(path: Path = POOLS_FILE) -> list[PoolDeclaration]:
    """The declared pools, in file order."""
    raw = yaml.safe_load(path.read_text())["pools"]
    return [PoolDeclaration(name=name, **spec) for name, spec in raw.items()]


def apply_pools(pools: list[PoolDeclaration], pool_type: str = "process") -> list[str]:
    """Create or update each pool on the Prefect server in ``PREFECT_API_URL``; return their names."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    with get_client(sync_client=True) as client:
        for pool in pools:
            client.create_work_pool(
                WorkPoolCreate(
                    name=pool.name,
                    type=pool_type,
                    description=pool.description,
                    base_job_template=pool.base_job_template(pool_type),
                    concurrency_limit=pool.concurrency_limit,
                ),
                overwrite=True,
            )
            for queue, priority in pool.queues.items():
                _apply_queue(client, pool.name, queue, priority)
    return [p.name for p in pools]


def _apply_queue(client: Any, pool: str, queue: str, priority: int) -> None:
    """Create the pool's work queue, or bring its priority back to the declaration."""
    from prefect.exceptions import ObjectNotFound

    try:
        existing = client.read_work_queue_by_name(queue, work_pool_name=pool)
    except ObjectNotFound:
        client.create_work_queue(name=queue, work_pool_name=pool, priority=priority)
        return
    if existing.priority != priority:
        client.update_work_queue(existing.id, priority=priority)


def deploy_all(env: dict[str, str] | None = None) -> str:
    """``prefect --no-prompt deploy --all`` from the repo root (registers every deployment in
    prefect.yaml; re-running updates them in place). Returns the command's output."""
    run = subprocess.run(
        [sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"],
        cwd=ROOT,
        env={"NIGHTSHIFT_REPO_DIR": str(ROOT), **os.environ, **(env or {}), "COLUMNS": "250"},
        capture_output=True,
        text=True,
    )
    if run.returncode != 0:
        raise OrchestrationError(f"prefect deploy --all failed ({run.returncode}):\n{run.stdout}\n{run.stderr}")
    return run.stdout
