"""prefect.yaml registers a deployment whose entrypoint loads and whose parameters validate."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_every_deployment_entrypoint_loads_and_its_parameters_validate():
    from prefect.flows import load_flow_from_entrypoint

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert spec["deployments"]
    for dep in spec["deployments"]:
        flow = load_flow_from_entrypoint(str(ROOT / dep["entrypoint"]))
        flow.validate_parameters(dep.get("parameters") or {})


@pytest.mark.usefixtures("prefect_api")
def test_prefect_deploy_registers_the_deployments(prefect_api):
    env = {**os.environ, "PREFECT_API_URL": prefect_api, "NIGHTSHIFT_REPO_DIR": str(ROOT), "COLUMNS": "250"}
    prefect = [sys.executable, "-m", "prefect", "--no-prompt"]
    subprocess.run(
        [*prefect, "work-pool", "create", "nightshift-local", "--type", "process", "--overwrite"],
        env=env,
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    run = subprocess.run([*prefect, "deploy", "--all"], env=env, cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    listed = subprocess.run([*prefect, "deployment", "ls"], env=env, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "process-batch/local" in listed and "cleanup-batches/daily" in listed
