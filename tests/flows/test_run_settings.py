"""process-batch reads its settings when a run starts, not when flows/batch.py is imported: the
default task runner (a deployment's run, a subflow) and the overrides a caller passes in ``context``."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from nightshift.core.runs import BatchRunContext, RunOverrides
from nightshift.settings import Settings


def test_the_default_task_runner_is_built_from_the_environment_of_the_run(monkeypatch):
    from prefect_ray.task_runners import RayTaskRunner

    from flows.batch import process_batch  # imported first: the address is set only afterwards

    monkeypatch.setenv("NIGHTSHIFT_RAY_ADDRESS", "127.0.0.1:6390")
    runner = process_batch.task_runner.duplicate()  # what Prefect enters for each run
    assert isinstance(runner, RayTaskRunner) and runner.address == "127.0.0.1:6390"
    monkeypatch.delenv("NIGHTSHIFT_RAY_ADDRESS")
    assert process_batch.task_runner.duplicate().address is None  # a local Ray, on loopback
    assert process_batch.task_runner.duplicate().init_kwargs["_node_ip_address"] == "127.0.0.1"


def test_overrides_win_over_the_environment_and_keep_the_rest(monkeypatch, tmp_path):
    monkeypatch.setenv("NIGHTSHIFT_ENGINE_KIND", "vllm")
    monkeypatch.setenv("NIGHTSHIFT_ENGINE_MAX_NUM_SEQS", "7")
    context = BatchRunContext(overrides=RunOverrides(engine="transformers", store_root=str(tmp_path / "out")))
    # The form a deployment's run gets its parameters in: the overrides survive the JSON round trip.
    again = BatchRunContext.model_validate_json(context.model_dump_json(exclude_none=True))
    settings = Settings(**again.settings_kwargs())
    assert (settings.engine.kind, settings.engine.max_num_seqs) == ("transformers", 7)
    assert settings.storage.root == str(tmp_path / "out")
    assert Settings(**BatchRunContext().settings_kwargs()).engine.kind == "vllm"  # no overrides: the environment


def test_a_bad_override_is_refused_naming_the_field(monkeypatch):
    with pytest.raises(ValidationError, match="engine"):
        RunOverrides(engine="onnx")
    monkeypatch.setenv("NIGHTSHIFT_ENGINE_BACKEND", "ray-data-llm")
    with pytest.raises(ValidationError, match="backend"):  # the settings tree's own checks still apply
        Settings(**RunOverrides(engine="transformers").settings_kwargs())
