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
