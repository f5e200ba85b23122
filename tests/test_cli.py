"""The nightshift command line against the session's Prefect server."""

import pytest
from typer.testing import CliRunner

from nightshift.cli import app


@pytest.mark.usefixtures("prefect_api")
def test_cleanup_dry_run_on_an_empty_store(prefect_api, tmp_path):
    env = {"PREFECT_API_URL": prefect_api, "NIGHTSHIFT_STORAGE_ROOT": str(tmp_path / "store")}
    result = CliRunner().invoke(app, ["cleanup", "--dry-run", "--older-than-hours", "0"], env=env)
    assert result.exit_code == 0, result.output
    assert "would delete 0 versions and 0 cache entries; kept 0" in result.output


def test_retry_of_an_unknown_batch_fails_with_a_clear_message(prefect_api, tmp_path):
    env = {"PREFECT_API_URL": prefect_api, "NIGHTSHIFT_STORAGE_ROOT": str(tmp_path / "store")}
    result = CliRunner().invoke(app, ["retry-failed", "nope"], env=env)
    assert result.exit_code != 0
    assert "no published version of batch 'nope'" in str(result.exception)


def test_estimate_prints_the_forecast_and_starts_nothing(tmp_path):
    import json

    from tests.batchfiles import write_batch

    src = tmp_path / "b.jsonl"
    write_batch(src, 6, max_tokens=10)
    # No Prefect server to ask (none configured, no `nightshift up` in this home): pools are assumed free.
    env = {"NIGHTSHIFT_HOME": str(tmp_path / "home"), "PREFECT_API_URL": None}
    result = CliRunner().invoke(app, ["estimate", str(src), "--tier", "free", "--json"], env=env)
    assert result.exit_code == 0, result.output
    est = json.loads(result.output)
    assert est["requests"] == 6 and est["completion_tokens"] == 60 and est["prompt_tokens"] > 0
    assert est["placement"]["kind"] == "spot" and est["confidence"] == "default" and est["basis_batches"] == 0
    assert "pools.spot_requests_per_second" in est["basis"]
    assert est["cost"]["usd"] > 0 and est["cost"]["spot_saving_usd"] > 0
    assert not (tmp_path / "home" / "store").exists()  # nothing ran, nothing was written

    human = CliRunner().invoke(app, ["estimate", str(src), "--tier", "enterprise"], env=env)
    assert human.exit_code == 0, human.output
    assert "engine-hours" in human.output and "confidence" in human.output and "assumed online" in human.output

    missing = CliRunner().invoke(app, ["estimate", str(tmp_path / "nope.jsonl")], env=env)
    assert missing.exit_code == 1 and "batch file not found" in missing.output
