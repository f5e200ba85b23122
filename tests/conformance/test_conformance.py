"""Every case of the conformance table, two ways on the tiny model: nightshift's batch path and
vLLM's own OpenAI serving layer. Same body (ids and timestamps aside), or the refusal the table names.

nightshift's path is the one a batch line takes from parsed line to output row: ``validate_lines``
(with the batch's served model and token counter), then ``VLLMEngine.run`` on the valid requests,
one engine per endpoint, every case of an endpoint in one batch. The reference is vLLM's server
stack as ``vllm run_batch`` builds it: ``AsyncLLM`` (its own engine process) under the serving
objects ``init_app_state`` creates, a body parsed by vLLM's request model and answered by
``create_chat_completion`` / ``create_completion`` / ``ServingEmbedding``. Both are configured from
the same ``EngineConfig`` (engine arguments, ``vllm serve`` arguments, the chat default budget).
"""

from __future__ import annotations

import asyncio
import copy
import gc
import json
from pathlib import Path
from typing import Any

import pytest

from nightshift.core.protocol import Endpoint
from nightshift.settings import EngineConfig
from tests.conformance.conformance_cases import (
    ANSWERED,
    CASES,
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    REFUSED,
    RESPONSES,
    SERVED_MODEL,
    Case,
)

#: The flow tests' engine settings: a 512-token context, an 8-token chat default.
CONFIG = EngineConfig(max_model_len=512, default_max_tokens=8)

#: Per-response values that differ between any two runs (random ids, clocks, the build fingerprint).
VOLATILE = {"id", "created", "created_at", "system_fingerprint"}


def _normalised(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _normalised(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_normalised(v) for v in value]
    return value


def _by_endpoint() -> dict[Endpoint, list[Case]]:
    groups: dict[Endpoint, list[Case]] = {}
    for case in CASES:
        groups.setdefault(Endpoint(case.url), []).append(case)
    return groups


# --------------------------------------------------------------------------- nightshift's path


def _nightshift(model: Path, endpoint: Endpoint, cases: list[Case], kind: str = "vllm") -> dict[str, tuple[Any, ...]]:
    """Each case as a batch line: validation, then the engine adapter (``kind``) on the valid lines."""
    from nightshift.core.validation import validate_lines
    from nightshift.engine.base import EngineSpec
    from nightshift.engine.hf_engine import TransformersEngine
    from nightshift.engine.tokens import build_token_counter
    from nightshift.engine.vllm_engine import VLLMEngine

    lines = [
        (n, json.dumps({"custom_id": c.id, "method": "POST", "url": c.url, "body": c.body})) for n, c in enumerate(cases, start=1)
    ]
    result = validate_lines(
        lines,
        endpoint=endpoint,
        max_model_len=CONFIG.max_model_len,
        count_tokens=build_token_counter(str(model)),
        served_model=SERVED_MODEL,
    )
    out: dict[str, tuple[Any, ...]] = {e.custom_id: ("error", e.code, e.param) for e in result.errors}
    spec = EngineSpec(model_path=str(model), served_model_name=SERVED_MODEL, endpoint=endpoint, config=CONFIG)
    engine = (VLLMEngine if kind == "vllm" else TransformersEngine)(spec)
    try:
        for row in engine.run(result.valid):
            out[row.custom_id] = ("error", row.error.code, row.error.param) if row.error else ("answer", row.body)
    finally:
        del engine
        gc.collect()
    return out


# --------------------------------------------------------------------------- vLLM's reference


async def _reference_answer(state: Any, url: str, body: dict[str, Any]) -> tuple[str, Any]:
    """("answers", body) or ("refuses", error): what vLLM's OpenAI server does with ``body``."""
    body = copy.deepcopy(body)  # vLLM's request validators rewrite the dict (Responses sets tool_choice)
    import pydantic
    from starlette.responses import JSONResponse
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
    from vllm.entrypoints.openai.completion.protocol import CompletionRequest
    from vllm.entrypoints.openai.responses.protocol import ResponsesRequest
    from vllm.entrypoints.pooling.embed.protocol import EmbeddingRequest
    from vllm.entrypoints.serve import create_error_response
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse

    try:
        if url == CHAT:
            response: Any = await state.openai_serving_chat.create_chat_completion(ChatCompletionRequest.model_validate(body))
        elif url == COMPLETIONS:
            response = await state.openai_serving_completion.create_completion(CompletionRequest.model_validate(body))
        elif url == RESPONSES:
            response = await state.openai_serving_responses.create_responses(ResponsesRequest.model_validate(body))
        else:
            response = await state.serving_embedding(pydantic.TypeAdapter(EmbeddingRequest).validate_python(body))
    except pydantic.ValidationError as exc:
        return "refuses", str(exc)  # the server's request parsing: a 400
    except Exception as exc:  # noqa: BLE001 - the server turns any failure into an error response
        response = create_error_response(exc)
    if isinstance(response, JSONResponse):
        data = json.loads(bytes(response.body))
        return ("refuses", data) if "error" in data else ("answers", data)
    if isinstance(response, ErrorResponse):
        return "refuses", response.error.model_dump()
    if not hasattr(response, "model_dump"):
        return "refuses", "stream"  # run_batch: "Request must not be sent in stream mode"
    # vLLM's Responses router serialises by alias (`text.format.schema`); the others need not.
    return "answers", response.model_dump(mode="json", by_alias=url == RESPONSES)


async def _reference_engine(model: Path, endpoint: Endpoint, cases: list[Case]) -> dict[str, tuple[str, Any]]:
    from vllm.config import StructuredOutputsConfig
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.v1.engine.async_llm import AsyncLLM

    from nightshift.engine.vllm_engine import build_serving, engine_kwargs, serving_args

    kwargs = engine_kwargs(str(model), endpoint, CONFIG)
    if "structured_outputs_config" in kwargs:
        kwargs["structured_outputs_config"] = StructuredOutputsConfig(**kwargs["structured_outputs_config"])
    client = AsyncLLM.from_engine_args(AsyncEngineArgs(**kwargs))
    try:
        state = await build_serving(client, serving_args(str(model), SERVED_MODEL, CONFIG), CONFIG)
        answers = await asyncio.gather(*(_reference_answer(state, c.url, c.body) for c in cases))
    finally:
        client.shutdown()
    return {c.id: a for c, a in zip(cases, answers, strict=True)}


def _reference(model: Path) -> dict[str, tuple[str, Any]]:
    groups = _by_endpoint()
    generating = [c for e in (Endpoint.CHAT_COMPLETIONS, Endpoint.COMPLETIONS, Endpoint.RESPONSES) for c in groups.get(e, [])]
    out = asyncio.run(_reference_engine(model, Endpoint.CHAT_COMPLETIONS, generating))  # one engine serves both
    out.update(asyncio.run(_reference_engine(model, Endpoint.EMBEDDINGS, groups.get(Endpoint.EMBEDDINGS, []))))
    return out


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[tuple[Any, ...], tuple[str, Any], tuple[Any, ...]]]:
    """(nightshift's outcome, vLLM's outcome, the transformers engine's outcome) for every case,
    one engine of each kind per endpoint shared across its cases."""
    from nightshift.engine.models import build_tiny_model

    # The folder name is the served model's name, as resolve_model names a batch's model.
    model = build_tiny_model(tmp_path_factory.mktemp("conformance") / SERVED_MODEL)
    reference = _reference(model)
    ours: dict[str, tuple[Any, ...]] = {}
    hf: dict[str, tuple[Any, ...]] = {}
    for endpoint, cases in _by_endpoint().items():
        ours.update(_nightshift(model, endpoint, cases))
        hf.update(_nightshift(model, endpoint, cases, kind="transformers"))
    return {c.id: (ours[c.id], reference[c.id], hf[c.id]) for c in CASES}


# --------------------------------------------------------------------------- the checks


def _sdk_parse(url: str, body: dict[str, Any]) -> Any:
    """The body as the ``openai`` SDK's own response type (raises if it does not fit)."""
    from openai.types import Completion, CreateEmbeddingResponse
    from openai.types.chat import ChatCompletion
    from openai.types.responses import Response

    model = {CHAT: ChatCompletion, COMPLETIONS: Completion, EMBEDDINGS: CreateEmbeddingResponse, RESPONSES: Response}[url]
    return model.model_validate(body, strict=False)


def _check_claims(case: Case, body: dict[str, Any]) -> None:
    """The answer shows what the case is about (a case that cannot fail tests nothing)."""
    checks = case.checks
    first = body["choices"][0] if "choices" in body else None
    if case.url == RESPONSES:
        (message,) = body["output"]
        assert message["type"] == "message" and message["role"] == "assistant"
        if "completion_tokens" in checks:
            assert body["usage"]["output_tokens"] == checks["completion_tokens"]
        if "content_starts" in checks:
            assert message["content"][0]["text"].startswith(checks["content_starts"])
        return
    if "completion_tokens" in checks:
        assert body["usage"]["completion_tokens"] == checks["completion_tokens"]
    if "finish_reason" in checks:
        assert first["finish_reason"] == checks["finish_reason"]
    if "choices" in checks:
        assert len(body["choices"]) == checks["choices"]
        assert len({json.dumps(c.get("message") or c.get("text")) for c in body["choices"]}) > 1  # sampled, not copies
    if "data" in checks:
        assert len(body["data"]) == checks["data"]
    if "logprobs" in checks:
        logprobs = first["logprobs"]
        if case.url == CHAT:
            assert len(logprobs["content"]) == body["usage"]["completion_tokens"]
            assert all(len(t["top_logprobs"]) == checks["logprobs"] for t in logprobs["content"])
        else:
            assert len(logprobs["tokens"]) == body["usage"]["completion_tokens"]
            assert all(len(t) == checks["logprobs"] for t in logprobs["top_logprobs"])
    if "tool_call" in checks:
        calls = first["message"]["tool_calls"]
        assert calls and {c["function"]["name"] for c in calls} == {checks["tool_call"]}
    if "content_starts" in checks:
        assert first["message"]["content"].startswith(checks["content_starts"])
    if "text_starts" in checks:
        assert first["text"].startswith(checks["text_starts"])


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case_matches_vllm_openai_server(case: Case, outcomes):
    ours, reference, _ = outcomes[case.id]
    if case.outcome == ANSWERED:
        assert ours[0] == "answer", f"nightshift refused: {ours}"
        assert reference[0] == "answers", f"vLLM refused: {reference[1]}"
        assert _normalised(ours[1]) == _normalised(reference[1])
        sdk = _sdk_parse(case.url, ours[1])
        assert sdk.model == SERVED_MODEL
        _check_claims(case, ours[1])
    else:
        assert case.outcome == REFUSED
        assert ours == ("error", case.code, case.param)
        assert reference[0] == case.vllm, f"vLLM {reference[0]}: {reference[1]}"


def _answer(body: dict[str, Any]) -> tuple[Any, ...]:
    """What both engines must agree on: each choice's text and finish reason, and the token counts."""
    if "data" in body:
        return tuple(len(d["embedding"]) for d in body["data"]), body["usage"]["prompt_tokens"]
    if body.get("object") == "response":
        texts = [part["text"] for item in body["output"] for part in item["content"]]
        usage = {k: body["usage"][k] for k in ("input_tokens", "output_tokens", "total_tokens")}
        return texts, body["status"], body["incomplete_details"], body["max_output_tokens"], usage
    texts = [(c.get("message") or {}).get("content", c.get("text")) for c in body["choices"]]
    usage = {k: body["usage"][k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")}
    return texts, [c["finish_reason"] for c in body["choices"]], usage


#: Fields the transformers engine refuses rather than answer unlike vLLM (see hf_engine's docstring).
TRANSFORMERS_REFUSES = {"tools", "tool_choice", "logprobs", "top_logprobs", "logit_bias"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_transformers_engine_matches_or_refuses_the_same_way(case: Case, outcomes):
    ours, _, hf = outcomes[case.id]
    if case.outcome != ANSWERED:
        assert hf == ours  # validation's refusals, and vLLM's own (greedy n > 1) with the same code
        return
    asked = TRANSFORMERS_REFUSES & {k for k, v in case.body.items() if v not in (None, False, "none")}
    if asked:
        assert hf[:2] == ("error", "unsupported_parameter") and hf[2] in asked
        return
    assert hf[0] == "answer", f"transformers engine refused: {hf}"
    _sdk_parse(case.url, hf[1])
    if case.url == RESPONSES:
        _check_claims(case, hf[1])
    if case.body.get("temperature", 0) == 0:  # greedy: the same answer; seeded sampling draws another stream
        assert _answer(hf[1]) == _answer(ours[1])
    else:
        assert len(hf[1]["choices"]) == len(ours[1]["choices"])


def test_table_covers_the_issue_fields():
    """The table keeps a case for each field the issue names (one line each: easy to drop by mistake)."""
    fields = {c.field for c in CASES}
    assert {"tools", "tool_choice", "logprobs", "n", "stop", "response_format", "stream", "model", "seed"} <= fields
    assert {c.url for c in CASES} == {CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES}
    responses = {c.field for c in CASES if c.url == RESPONSES}
    assert {"input", "instructions", "max_output_tokens", "text", "store", "previous_response_id", "background"} <= responses
    assert any(c.param and c.param.startswith("body.") for c in CASES)  # wrong types
