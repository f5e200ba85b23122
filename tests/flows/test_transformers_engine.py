"""The real flow on the transformers engine: same rows, same invariants, same version as on vLLM.

Each test starts from a cluster without engine actors: this Ray has 2 CPUs, an engine actor
reserves 1, and a warm vLLM actor left by another module would leave too little for a second
engine and the flow's tasks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from nightshift.core.artifacts import compute_version
from nightshift.core.protocol import Endpoint
from nightshift.settings import EngineConfig
from tests.batchfiles import check_mixed_batch, write_batch
from tests.flows.test_process_batch import _manifest, _run, run_against_raw_llm_chat

pytestmark = pytest.mark.usefixtures("ray_session", "prefect_api")


@pytest.fixture(autouse=True)
def _no_engine_actors() -> Iterator[None]:
    from nightshift.engine.runner import release_all_engines

    release_all_engines()
    yield
    release_all_engines()


@pytest.fixture
def transformers_env(engine_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """conftest's engine_env with the transformers engine chosen, as a deployment would choose it."""
    monkeypatch.setenv("NIGHTSHIFT_ENGINE_KIND", "transformers")
    return {**engine_env, "NIGHTSHIFT_ENGINE_KIND": "transformers"}


def test_mixed_batch_on_transformers_gives_47_outputs_and_3_errors(tmp_path, transformers_env):
    src = tmp_path / "mixed.jsonl"
    write_batch(src, 47, ["invalid_json", "unknown_url", "bad_body"])
    result = _run(src, tier="premium")

    out, err = check_mixed_batch(result)

    manifest = _manifest(result)
    assert manifest["request_counts"] == {"total": 50, "completed": 47, "failed": 3}
    assert manifest["usage"]["completion_tokens"] == 47 * 8 and len(manifest["shards"]) == 5
    assert manifest["engine"]["kind"] == "transformers"
    assert manifest["engine"]["used"] == "transformers" and manifest["engine"]["fallback_reason"] is None
    # The engine is not part of the version: vLLM would have published this batch as the same version.
    vllm_config = EngineConfig(kind="vllm", max_model_len=512, default_max_tokens=8)
    assert "kind" not in manifest["engine_params_in_version"]
    assert result.version == compute_version(
        input_sha256=manifest["input"]["sha256"],
        model_sha256=manifest["model"]["sha256"],
        engine_params=vllm_config.output_params(),
        endpoint=Endpoint.CHAT_COMPLETIONS,
    )
    assert result.sla.met


def test_transformers_flow_outputs_equal_raw_llm_chat(tmp_path, transformers_env, tiny_model):
    result = run_against_raw_llm_chat(tmp_path, tiny_model)
    assert _manifest(result)["engine"]["used"] == "transformers"


def test_cli_engine_option_runs_the_transformers_engine(tmp_path, engine_env, store_root, prefect_api, monkeypatch):
    from typer.testing import CliRunner

    from nightshift.cli import app

    monkeypatch.setenv("PREFECT_API_URL", prefect_api)
    monkeypatch.setenv("NIGHTSHIFT_ENGINE_KIND", "vllm")  # the option wins; monkeypatch restores it afterwards
    src = tmp_path / "cli.jsonl"
    write_batch(src, 5, ["bad_body"])
    run = CliRunner().invoke(app, ["run", str(src), "--engine", "transformers"])
    assert run.exit_code == 0, run.output
    (manifest_path,) = Path(store_root).glob("batches/cli/*/manifest.json")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["engine"]["kind"] == manifest["engine"]["used"] == "transformers"
    assert manifest["request_counts"] == {"total": 6, "completed": 5, "failed": 1}

    refused = CliRunner().invoke(app, ["run", str(src), "--engine", "onnx"])
    assert refused.exit_code == 2


def test_auto_falls_back_to_transformers_in_the_actor_and_the_manifest_says_why(
    tmp_path, engine_env, head_dim_16_model, monkeypatch
):
    monkeypatch.setenv("NIGHTSHIFT_ENGINE_MODEL", str(head_dim_16_model))
    monkeypatch.setenv("NIGHTSHIFT_ENGINE_KIND", "auto")
    src = tmp_path / "fallback.jsonl"
    write_batch(src, 6)
    result = _run(src)
    assert result.request_counts.model_dump() == {"total": 6, "completed": 6, "failed": 0}
    engine = _manifest(result)["engine"]
    assert engine["kind"] == "auto" and engine["used"] == "transformers"
    assert "head_dim=16" in engine["fallback_reason"]  # vLLM loaded it, then its probe request failed
