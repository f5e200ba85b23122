"""The transformers engine answers as the vLLM engine does: same rows in, same rows out, no Ray.

vLLM's rows come from ``VLLMEngine`` in a subprocess (one engine per endpoint, freed when it
exits); the transformers engine runs here. Greedy outputs are compared exactly: text, finish
reason and token counts.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from nightshift.core.protocol import BatchRequestInput, Endpoint, ValidRequest
from nightshift.settings import EngineConfig
from tests.batchfiles import BAD_LINES, chat_line

#: The flow tests' engine settings (conftest's engine_env): a 512-token context, 8-token chat default.
TEST_MAX_MODEL_LEN = 512
CONFIG = EngineConfig(max_model_len=TEST_MAX_MODEL_LEN, default_max_tokens=8)

#: A JSON schema both engines enforce with xgrammar.
SCORE_SCHEMA = {"type": "object", "properties": {"score": {"type": "integer"}}, "required": ["score"]}


def _requests(lines: list[dict[str, Any]]) -> list[ValidRequest]:
    out = []
    for i, line in enumerate(lines, start=1):
        req = BatchRequestInput.model_validate(line)
        out.append(ValidRequest(line=i, custom_id=req.custom_id, url=req.url, body=req.body))
    return out


def _chat(custom_id: str, content: str, **body: Any) -> dict[str, Any]:
    b = {"messages": [{"role": "user", "content": content}], "temperature": 0, **body}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": b}


def _completion(custom_id: str, prompt: str, **body: Any) -> dict[str, Any]:
    b = {"prompt": prompt, "temperature": 0, **body}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/completions", "body": b}


CHAT = _requests(
    [chat_line(i) for i in range(12)]  # greedy, max_tokens 8
    + [
        _chat("eos", "Tell me about winter light, item 2.", max_tokens=100),  # ends on EOS at token 60
        _chat("stop-string", "Tell me about the sea, item 0.", max_tokens=24, stop=["e"]),
        _chat(
            "json",
            "Score this answer.",
            max_tokens=30,
            response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": SCORE_SCHEMA}},
        ),
        _chat("near-context", " ".join(["winter light over old trains"] * 65), max_tokens=100),  # capped by the context
        _chat("n-greedy", "Hello", max_tokens=4, n=2),  # vLLM refuses n > 1 when greedy
        json.loads(BAD_LINES["too_long"]),
    ]
)
COMPLETIONS = _requests(
    [_completion(f"cmpl-{i}", p, max_tokens=8) for i, p in enumerate(["The quick brown fox", "Water boils at", "Hello! How"])]
    + [
        _completion("echo", "The train leaves", max_tokens=6, echo=True),
        _completion("default-budget", "Read the file"),  # OpenAI's default of 16 tokens
        _completion("stop-list", "The cat sat on the", max_tokens=24, stop=["o", "a"]),
    ]
)
EMBEDDINGS = _requests(
    [
        {"custom_id": "one", "method": "POST", "url": "/v1/embeddings", "body": {"input": "Tell me about the sea."}},
        {"custom_id": "many", "method": "POST", "url": "/v1/embeddings", "body": {"input": ["bread", "a red fox jumps"]}},
    ]
)

#: VLLMEngine on each endpoint's requests, in a clean process; prints {endpoint: rows}.
VLLM_ROWS = """
import json, sys
from nightshift.core.protocol import Endpoint, ValidRequest
from nightshift.engine.base import EngineSpec
from nightshift.engine.vllm_engine import VLLMEngine
from nightshift.settings import EngineConfig
model, config, batches = sys.argv[1], EngineConfig.model_validate_json(sys.argv[2]), json.load(open(sys.argv[3]))
out = {}
for endpoint, lines in batches.items():
    engine = VLLMEngine(EngineSpec(model_path=model, served_model_name="tiny", endpoint=Endpoint(endpoint), config=config))
    rows = engine.run([ValidRequest.model_validate(r) for r in lines])
    out[endpoint] = [r.model_dump(mode="json") for r in rows]
    del engine
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def vllm_rows(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[Endpoint, list[dict[str, Any]]]:
    """vLLM's result rows for CHAT, COMPLETIONS and EMBEDDINGS."""
    path = tmp_path_factory.mktemp("vllm-ref") / "requests.json"
    batches = {e.value: [r.model_dump(mode="json") for r in reqs] for e, reqs in _BATCHES.items()}
    path.write_text(json.dumps(batches))
    run = subprocess.run(
        [sys.executable, "-c", VLLM_ROWS, str(tiny_model), CONFIG.model_dump_json(), str(path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return {Endpoint(k): v for k, v in json.loads(run.stdout.strip().splitlines()[-1]).items()}


_BATCHES = {Endpoint.CHAT_COMPLETIONS: CHAT, Endpoint.COMPLETIONS: COMPLETIONS, Endpoint.EMBEDDINGS: EMBEDDINGS}


def _hf_rows(tiny_model: Path, endpoint: Endpoint) -> list[dict[str, Any]]:
    from nightshift.engine.base import EngineSpec
    from nightshift.engine.hf_engine import TransformersEngine

    engine = TransformersEngine(
        EngineSpec(model_path=str(tiny_model), served_model_name="tiny", endpoint=endpoint, config=CONFIG)
    )
    assert engine.info()["engine"] == "transformers" and engine.info()["fallback_reason"] is None
    rows = engine.run(_BATCHES[endpoint])
    assert engine.info()["requests_served"] == len(_BATCHES[endpoint])
    return [r.model_dump(mode="json") for r in rows]


def _answers(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each row's answer without the per-response ids and timestamps."""
    out: dict[str, Any] = {}
    for row in rows:
        if row["error"] is not None:
            out[row["custom_id"]] = ("error", row["line"], row["error"]["code"])
            continue
        choices = row["body"]["choices"]
        texts = [(c.get("message") or {}).get("content", c.get("text")) for c in choices]
        out[row["custom_id"]] = (texts, [c["finish_reason"] for c in choices], row["usage"])
    return out


def test_greedy_chat_outputs_equal_vllm(tiny_model, vllm_rows):
    got, want = _answers(_hf_rows(tiny_model, Endpoint.CHAT_COMPLETIONS)), _answers(vllm_rows[Endpoint.CHAT_COMPLETIONS])
    assert got == want
    # The requests exercise what they claim to (on vLLM's side, so the comparison means something).
    assert len({a[0][0] for k, a in want.items() if k.startswith("req-")}) > 1  # different prompts, different answers
    assert want["eos"][1] == ["stop"] and want["eos"][2]["completion_tokens"] < 100  # EOS is counted, not shown
    assert want["stop-string"][1] == ["stop"] and "e" not in want["stop-string"][0][0]
    assert want["json"][0][0].startswith('{"score":')  # the grammar held (compact JSON, no spaces)
    near = want["near-context"][2]
    assert want["near-context"][1] == ["length"] and near["total_tokens"] == TEST_MAX_MODEL_LEN
    assert want["n-greedy"][0] == "error" and want["too-long"][0] == "error"


def test_greedy_completion_outputs_equal_vllm(tiny_model, vllm_rows):
    got, want = _answers(_hf_rows(tiny_model, Endpoint.COMPLETIONS)), _answers(vllm_rows[Endpoint.COMPLETIONS])
    assert got == want
    assert want["echo"][0][0].startswith("The train leaves") and want["default-budget"][2]["completion_tokens"] == 16


def test_refused_requests_give_the_same_error_rows_as_vllm(tiny_model, vllm_rows):
    hf = {r["custom_id"]: r for r in _hf_rows(tiny_model, Endpoint.CHAT_COMPLETIONS)}
    ref = {r["custom_id"]: r for r in vllm_rows[Endpoint.CHAT_COMPLETIONS]}
    for custom_id in ("too-long", "n-greedy"):
        a, b = hf[custom_id]["error"], ref[custom_id]["error"]
        # vLLM's server answers both with a 400: a request error, not an engine failure.
        assert (a["code"], a["line"]) == (b["code"], b["line"]) == ("invalid_request", hf[custom_id]["line"])
    # Same reason; vLLM counts characters first for a prompt this long, this engine counts tokens.
    assert "maximum context length is 512 tokens" in hf["too-long"]["error"]["message"]
    assert "maximum context length is 512 tokens" in ref["too-long"]["error"]["message"]
    assert {hf["too-long"]["error"]["param"], ref["too-long"]["error"]["param"]} <= {"input_tokens", "input_text"}
    msg = [e["error"]["message"] for e in (hf["n-greedy"], ref["n-greedy"])]
    assert msg[0] == msg[1] == "n must be 1 when using greedy sampling, got 2."


def test_embeddings_equal_vllm_to_float_precision(tiny_model, vllm_rows):
    hf, ref = _hf_rows(tiny_model, Endpoint.EMBEDDINGS), vllm_rows[Endpoint.EMBEDDINGS]
    assert [r["usage"] for r in hf] == [r["usage"] for r in ref]
    for a, b in zip(hf, ref, strict=True):
        va = [d["embedding"] for d in a["body"]["data"]]
        vb = [d["embedding"] for d in b["body"]["data"]]
        assert len(va) == len(vb) and all(len(x) == 64 for x in va)
        assert max(abs(x - y) for u, v in zip(va, vb, strict=True) for x, y in zip(u, v, strict=True)) < 1e-5


def test_seeded_sampling_is_reproducible_and_gives_n_choices(tiny_model):
    from nightshift.engine.base import EngineSpec
    from nightshift.engine.hf_engine import TransformersEngine

    engine = TransformersEngine(
        EngineSpec(model_path=str(tiny_model), served_model_name="tiny", endpoint=Endpoint.CHAT_COMPLETIONS, config=CONFIG)
    )
    req = _requests([_chat("s", "Hello", temperature=0.9, seed=7, n=3, max_tokens=6, presence_penalty=0.5)])
    first, again = engine.run(req)[0], engine.run(req)[0]
    texts = [c["message"]["content"] for c in first.body["choices"]]
    assert len(texts) == 3 and len(set(texts)) > 1
    assert texts == [c["message"]["content"] for c in again.body["choices"]]
    assert 3 <= first.usage.completion_tokens <= 18


def test_auto_falls_back_to_transformers_when_vllm_cannot_run_the_model(head_dim_16_model):
    from nightshift.engine.base import EngineSpec, build_engine

    engine = build_engine(
        EngineSpec(
            model_path=str(head_dim_16_model),
            served_model_name="tiny",
            endpoint=Endpoint.CHAT_COMPLETIONS,
            config=CONFIG.model_copy(update={"kind": "auto"}),
        )
    )
    info = engine.info()
    assert info["engine"] == "transformers"
    assert "head_dim=16" in info["fallback_reason"]  # vLLM's own words, from the probe request
    (row,) = engine.run(CHAT[:1])
    assert row.error is None and row.usage.completion_tokens == 8
    assert engine.info()["requests_served"] == 1  # the probe is not counted


def test_embeddings_the_engine_cannot_match_are_error_rows_with_their_own_code(tiny_model, tmp_path):
    from nightshift.engine.base import EngineSpec
    from nightshift.engine.hf_engine import TransformersEngine

    path = tmp_path / "st-model"
    shutil.copytree(tiny_model, path)
    (path / "modules.json").write_text(
        json.dumps([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}])
    )
    engine = TransformersEngine(
        EngineSpec(model_path=str(path), served_model_name="tiny", endpoint=Endpoint.EMBEDDINGS, config=CONFIG)
    )
    rows = engine.run(EMBEDDINGS)
    assert [(r.custom_id, r.error.code, r.error.line) for r in rows] == [
        ("one", "engine_unsupported", 1),
        ("many", "engine_unsupported", 2),
    ]
    assert "sentence-transformers" in rows[0].error.message


def test_ray_data_llm_backend_refuses_the_transformers_engine():
    with pytest.raises(ValueError, match="runs vLLM only"):
        EngineConfig(backend="ray-data-llm", kind="transformers")
    assert "kind" not in EngineConfig(kind="transformers").output_params()
