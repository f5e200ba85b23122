"""A model catalogue through the real flow: two models on two warm engines, LoRA adapters on their
base model's engine answering as vLLM's own LoRA path does (real Prefect, Ray, vLLM on the tiny model)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.batchfiles import chat_line, read_jsonl
from tests.loras import build_tiny_lora, vllm_lora_answers

pytestmark = pytest.mark.usefixtures("ray_session", "prefect_api")


@pytest.fixture(scope="module")
def catalogue_file(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory, ray_session: None) -> Iterator[Path]:
    """``tiny`` with two adapters and ``tiny-short`` (the same weights, a 3-token default budget);
    the engines this module starts are stopped at its end (they hold CPU reservations)."""
    import ray

    from nightshift.engine.runner import NAMESPACE

    folder = tmp_path_factory.mktemp("catalogue")
    adapters = {name: build_tiny_lora(tiny_model, folder / name, seed=seed) for name, seed in (("tiny-a", 1), ("tiny-b", 2))}
    path = folder / "models.yaml"
    small = {"num_cpus": 0.1}  # beside the session's other warm engines on a 2-CPU Ray
    path.write_text(
        json.dumps(  # JSON is YAML
            {
                "default": "tiny",
                "models": {
                    "tiny": {
                        "source": str(tiny_model),
                        "engine": small,
                        "adapters": {k: {"source": str(v)} for k, v in adapters.items()},
                    },
                    "tiny-short": {"source": str(tiny_model), "engine": {**small, "default_max_tokens": 3}},
                },
            }
        )
    )
    before = {a["name"] for a in ray.util.list_named_actors(all_namespaces=True)}
    yield path
    for entry in ray.util.list_named_actors(all_namespaces=True):
        if entry["namespace"] == NAMESPACE and entry["name"].startswith("engine-") and entry["name"] not in before:
            ray.kill(ray.get_actor(entry["name"], namespace=NAMESPACE))


def _run(src: Path, lines: list[dict], **kw):
    from flows.batch import BatchRunParameters, process_batch

    src.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return process_batch(BatchRunParameters(input_uri=str(src), tier="premium", **kw))


def _actors(result) -> set[str]:
    """The engine actors that answered a run's shards (the manifest's worker records)."""
    manifest = json.loads(Path(result.manifest_uri.removeprefix("file://")).read_text())
    return {shard["worker"]["actor"] for shard in manifest["shards"] if shard.get("worker")}


def _lines(model: str | None, n: int = 4, **body) -> list[dict]:
    lines = [chat_line(i, **body) for i in range(n)]
    for line in lines:
        if model is None:
            line["body"].pop("model")
        else:
            line["body"]["model"] = model
    return lines


def test_two_models_run_on_their_own_warm_engines_and_a_batch_runs_one_model(tmp_path, engine_env, monkeypatch, catalogue_file):
    monkeypatch.setenv("NIGHTSHIFT_ENGINE_CATALOGUE", str(catalogue_file))
    # The first line names tiny-short: the batch runs on it; a line naming none runs on it too.
    lines = _lines("tiny-short", max_tokens=None) + _lines(None, 1, max_tokens=None)
    lines[-1]["custom_id"] = "no-model"
    lines += [{**_lines("tiny", 1)[0], "custom_id": "other"}, {**_lines("nope", 1)[0], "custom_id": "unknown"}]
    short = _run(tmp_path / "short.jsonl", lines)
    assert short.request_counts.model_dump() == {"total": 7, "completed": 5, "failed": 2}
    out = read_jsonl(short.output_uri)
    assert {o["response"]["body"]["model"] for o in out} == {"tiny-short"}
    assert {o["response"]["body"]["usage"]["completion_tokens"] for o in out} <= {1, 2, 3}  # its own default budget
    errors = {e["custom_id"]: e["error"] for e in read_jsonl(short.error_uri)}
    assert errors["other"]["code"] == "model_mismatch" and "one model" in errors["other"]["message"]
    assert errors["unknown"]["code"] == "model_not_found" and errors["unknown"]["param"] == "model"
    assert str(catalogue_file.parent) not in json.dumps(errors)  # no server path in a tenant's error

    base = _run(tmp_path / "base.jsonl", _lines("tiny", 2))
    assert {o["response"]["body"]["model"] for o in read_jsonl(base.output_uri)} == {"tiny"}
    assert {o["response"]["body"]["usage"]["completion_tokens"] for o in read_jsonl(base.output_uri)} == {8}
    assert len(_actors(short)) == len(_actors(base)) == 1 and _actors(short) != _actors(base)


def test_lora_batches_answer_as_vllm_does_and_share_the_base_models_engine(tmp_path, engine_env, monkeypatch, catalogue_file):
    monkeypatch.setenv("NIGHTSHIFT_ENGINE_CATALOGUE", str(catalogue_file))
    runs = {model: _run(tmp_path / f"{model}.jsonl", _lines(model, 4, max_tokens=10)) for model in ("tiny", "tiny-a", "tiny-b")}
    answers = {}
    for model, result in runs.items():
        assert result.request_counts.failed == 0
        out = read_jsonl(result.output_uri)
        assert {o["response"]["body"]["model"] for o in out} == {model}
        answers[model] = [o["response"]["body"]["choices"][0]["message"]["content"] for o in out]
    # One engine: the base model's, with both adapters loaded (vLLM's OpenAIServingModels picks them by id).
    assert _actors(runs["tiny"]) == _actors(runs["tiny-a"]) == _actors(runs["tiny-b"])
    assert len({r.version for r in runs.values()}) == 3  # the adapter's weights are in the version

    prompts = [line["body"]["messages"][0]["content"] for line in _lines("tiny", 4)]
    folder = catalogue_file.parent
    reference = vllm_lora_answers(
        Path(engine_env["NIGHTSHIFT_ENGINE_MODEL"]), {a: folder / a for a in ("tiny-a", "tiny-b")}, prompts, 10
    )
    assert answers["tiny-a"] == reference["tiny-a"] and answers["tiny-b"] == reference["tiny-b"]
    assert (
        answers["tiny-a"] != answers["tiny"] and answers["tiny-b"] != answers["tiny"] and answers["tiny-a"] != answers["tiny-b"]
    )
