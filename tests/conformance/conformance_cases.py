"""The conformance table: request bodies, one or more per field, and what each must give.

Every case runs two ways on the tiny model: through nightshift's batch path (validation, then the
engine adapter, as a batch line goes from parsed line to output row) and through vLLM's own OpenAI
serving layer (the reference). ``ANSWERED`` cases must give the same response body (ids and
timestamps aside); ``REFUSED`` cases must be an error line with ``code`` and ``param``, and the
reference's behaviour for that body is recorded (``vllm``: does vLLM's server refuse it too, or
answer while ignoring the field?). Adding a field is one line here; ``docs/request-fields.md`` is
rendered from this table (``request_table.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES = "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"

#: The tiny model's name in the batch (its folder name, as ``resolve_model`` names it).
SERVED_MODEL = "tiny-qwen2"

ANSWERED, REFUSED = "answered", "refused"

MESSAGES = [{"role": "user", "content": "Tell me about the sea."}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
NOW = {"type": "function", "function": {"name": "now", "parameters": {"type": "object", "properties": {}}}}
SCORE_SCHEMA = {"type": "object", "properties": {"score": {"type": "integer"}}, "required": ["score"]}


@dataclass(frozen=True)
class Case:
    """One request body and the outcome nightshift must give."""

    id: str
    url: str
    body: dict[str, Any]
    field: str  # the field the case is about (a row of the docs table)
    outcome: str = ANSWERED
    code: str | None = None  # REFUSED: the error line's code
    param: str | None = None  # REFUSED: the error line's param
    vllm: str | None = None  # REFUSED: "refuses" or "answers" (what vLLM's server does with this body)
    checks: dict[str, Any] = field(default_factory=dict)  # facts the answer must show, so a case tests what it claims
    note: str | None = None  # the docs table's wording of the case, where the field's value alone does not say it


def chat(**body: Any) -> dict[str, Any]:
    """A greedy chat body on the served model."""
    return {"model": SERVED_MODEL, "messages": MESSAGES, "temperature": 0, "max_tokens": 8, **body}


def completion(**body: Any) -> dict[str, Any]:
    """A greedy completions body on the served model."""
    return {"model": SERVED_MODEL, "prompt": "The quick brown fox", "temperature": 0, "max_tokens": 8, **body}


def embedding(**body: Any) -> dict[str, Any]:
    """An embeddings body on the served model."""
    return {"model": SERVED_MODEL, "input": "Tell me about the sea.", **body}


def response(**body: Any) -> dict[str, Any]:
    """A greedy Responses body on the served model."""
    return {"model": SERVED_MODEL, "input": "Tell me about the sea.", "temperature": 0, "max_output_tokens": 8, **body}


def refused(case_id: str, url: str, body: dict[str, Any], param: str, vllm: str, code: str = "unsupported_parameter") -> Case:
    """A case nightshift refuses for its line with ``code`` naming ``param``."""
    return Case(case_id, url, body, param, REFUSED, code=code, param=param, vllm=vllm)


CASES: list[Case] = [
    # --- /v1/chat/completions: honoured as vLLM's server honours them
    Case("chat-plain", CHAT, chat(), "messages"),
    Case("chat-no-model", CHAT, {k: v for k, v in chat().items() if k != "model"}, "model"),
    Case("chat-max-tokens", CHAT, chat(max_tokens=3), "max_tokens", checks={"completion_tokens": 3}),
    Case(
        "chat-max-completion-tokens",
        CHAT,
        chat(max_completion_tokens=5),
        "max_completion_tokens",
        checks={"completion_tokens": 5},
    ),
    Case("chat-default-budget", CHAT, {k: v for k, v in chat().items() if k != "max_tokens"}, "max_tokens"),
    Case("chat-stop", CHAT, chat(max_tokens=24, stop=["e"]), "stop", checks={"finish_reason": "stop"}),
    Case("chat-temperature", CHAT, chat(temperature=0.7, seed=1), "temperature"),
    Case("chat-top-p", CHAT, chat(temperature=1.0, top_p=0.5, seed=2), "top_p"),
    Case("chat-seed-sampled", CHAT, chat(temperature=0.9, top_p=0.9, seed=7), "seed"),
    Case("chat-n", CHAT, chat(temperature=0.8, seed=3, n=2), "n", checks={"choices": 2}),
    Case(
        "chat-n-greedy",
        CHAT,
        chat(n=2),
        "n",
        REFUSED,
        code="invalid_request",
        vllm="refuses",
        note="`n: 2` with `temperature: 0`",
    ),
    Case("chat-penalties", CHAT, chat(presence_penalty=1.5, frequency_penalty=1.0), "presence_penalty"),
    Case("chat-frequency-penalty", CHAT, chat(frequency_penalty=2.0), "frequency_penalty"),
    Case("chat-logit-bias", CHAT, chat(logit_bias={"100": 100}), "logit_bias"),
    Case("chat-logprobs", CHAT, chat(logprobs=True, top_logprobs=2), "logprobs", checks={"logprobs": 2}),
    Case("chat-logprobs-only", CHAT, chat(logprobs=True), "top_logprobs", checks={"logprobs": 0}),
    Case(
        "chat-json-schema",
        CHAT,
        chat(max_tokens=12, response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": SCORE_SCHEMA}}),
        "response_format",
        checks={"content_starts": '{"score":'},
    ),
    Case("chat-json-object", CHAT, chat(max_tokens=12, response_format={"type": "json_object"}), "response_format"),
    Case("chat-tools-auto", CHAT, chat(tools=[WEATHER], tool_choice="auto"), "tool_choice"),
    Case("chat-tools-none", CHAT, chat(tools=[WEATHER], tool_choice="none"), "tool_choice"),
    Case(
        "chat-tools-required",
        CHAT,
        chat(max_tokens=100, tools=[WEATHER], tool_choice="required"),
        "tools",
        checks={"tool_call": "get_weather"},
    ),
    Case(
        "chat-tools-named",
        CHAT,
        chat(max_tokens=100, tools=[WEATHER, NOW], tool_choice={"type": "function", "function": {"name": "now"}}),
        "tool_choice",
        checks={"tool_call": "now"},
    ),
    Case(
        "chat-parallel-tool-calls",
        CHAT,
        chat(max_tokens=100, tools=[NOW], tool_choice="required", parallel_tool_calls=False),
        "parallel_tool_calls",
    ),
    Case("chat-user", CHAT, chat(user="u-1"), "user"),
    # --- /v1/chat/completions: refused for the line
    refused("chat-stream", CHAT, chat(stream="True"), "stream", vllm="refuses"),
    refused("chat-stream-false", CHAT, chat(stream=False), "stream", vllm="answers"),
    refused("chat-stream-options", CHAT, chat(stream_options={"include_usage": True}), "stream_options", vllm="refuses"),
    refused("chat-unknown-field", CHAT, chat(frobnicate=1), "frobnicate", vllm="answers"),
    refused("chat-vllm-extension", CHAT, chat(top_k=5), "top_k", vllm="answers"),
    refused("chat-functions", CHAT, chat(functions=[WEATHER["function"]]), "functions", vllm="answers"),
    refused("chat-metadata", CHAT, chat(metadata={"k": "v"}), "metadata", vllm="answers"),
    refused("chat-unknown-model", CHAT, chat(model="NonExistModel"), "model", vllm="refuses", code="model_not_found"),
    refused("chat-wrong-type", CHAT, chat(temperature="hot"), "body.temperature", vllm="refuses", code="invalid_request"),
    refused("chat-wrong-type-tools", CHAT, chat(tools={"name": "x"}), "body.tools", vllm="refuses", code="invalid_request"),
    # --- /v1/completions
    Case("cmpl-plain", COMPLETIONS, completion(), "prompt"),
    Case(
        "cmpl-default-budget",
        COMPLETIONS,
        {k: v for k, v in completion().items() if k != "max_tokens"},
        "max_tokens",
        checks={"completion_tokens": 16},
    ),
    Case("cmpl-echo", COMPLETIONS, completion(echo=True), "echo", checks={"text_starts": "The quick brown fox"}),
    Case("cmpl-stop", COMPLETIONS, completion(max_tokens=24, stop=["o", "a"]), "stop"),
    Case("cmpl-logprobs", COMPLETIONS, completion(logprobs=2), "logprobs", checks={"logprobs": 2}),
    Case("cmpl-seed-n", COMPLETIONS, completion(temperature=0.7, seed=11, n=2), "n", checks={"choices": 2}),
    Case("cmpl-logit-bias", COMPLETIONS, completion(logit_bias={"100": 100}), "logit_bias"),
    refused("cmpl-stream", COMPLETIONS, completion(stream=True), "stream", vllm="refuses"),
    refused("cmpl-suffix", COMPLETIONS, completion(suffix="end"), "suffix", vllm="refuses"),
    refused("cmpl-best-of", COMPLETIONS, completion(best_of=2), "best_of", vllm="answers"),
    refused(
        "cmpl-unknown-model", COMPLETIONS, completion(model="NonExistModel"), "model", vllm="refuses", code="model_not_found"
    ),
    refused(
        "cmpl-wrong-type", COMPLETIONS, completion(max_tokens="many"), "body.max_tokens", vllm="refuses", code="invalid_request"
    ),
    # --- /v1/embeddings
    Case("embed-one", EMBEDDINGS, embedding(), "input"),
    Case("embed-many", EMBEDDINGS, embedding(input=["bread", "a red fox jumps"]), "input", checks={"data": 2}),
    Case("embed-float", EMBEDDINGS, embedding(encoding_format="float"), "encoding_format"),
    refused("embed-dimensions", EMBEDDINGS, embedding(dimensions=8), "dimensions", vllm="refuses"),
    refused("embed-unknown-model", EMBEDDINGS, embedding(model="NonExistModel"), "model", vllm="refuses", code="model_not_found"),
    # --- /v1/responses: answered by vLLM's Responses serving layer, with no server-side state
    Case("resp-plain", RESPONSES, response(), "input"),
    Case(
        "resp-messages",
        RESPONSES,
        response(input=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}, *MESSAGES]),
        "input",
        note="a list of messages",
    ),
    Case(
        "resp-input-text-parts",
        RESPONSES,
        response(input=[{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Tell me"}]}]),
        "input",
        note="`input_text` content parts",
    ),
    Case("resp-instructions", RESPONSES, response(instructions="Answer in one word."), "instructions"),
    Case(
        "resp-max-output-tokens", RESPONSES, response(max_output_tokens=3), "max_output_tokens", checks={"completion_tokens": 3}
    ),
    Case(
        "resp-default-budget",
        RESPONSES,
        {k: v for k, v in response().items() if k != "max_output_tokens"},
        "max_output_tokens",
        checks={"completion_tokens": 8},
        note="left out: the engine's default budget",
    ),
    Case("resp-top-p", RESPONSES, response(top_p=0.5), "top_p"),
    Case(
        "resp-json-schema",
        RESPONSES,
        response(max_output_tokens=12, text={"format": {"type": "json_schema", "name": "s", "schema": SCORE_SCHEMA}}),
        "text",
        checks={"content_starts": '{"score":'},
    ),
    Case("resp-json-object", RESPONSES, response(max_output_tokens=12, text={"format": {"type": "json_object"}}), "text"),
    Case("resp-store-false", RESPONSES, response(store=False), "store"),
    Case("resp-user", RESPONSES, response(user="u-1"), "user"),
    refused("resp-store", RESPONSES, response(store=True), "store", vllm="answers"),
    refused(
        "resp-previous-response-id", RESPONSES, response(previous_response_id="resp_1"), "previous_response_id", vllm="refuses"
    ),
    refused("resp-background", RESPONSES, response(background=True), "background", vllm="refuses"),
    refused("resp-stream", RESPONSES, response(stream=True), "stream", vllm="refuses"),
    refused(
        "resp-tools",
        RESPONSES,
        response(tools=[{"type": "function", "name": "now", "parameters": {"type": "object", "properties": {}}}]),
        "tools",
        vllm="answers",
    ),
    refused("resp-metadata", RESPONSES, response(metadata={"k": "v"}), "metadata", vllm="answers"),
    refused("resp-unknown-model", RESPONSES, response(model="NonExistModel"), "model", vllm="refuses", code="model_not_found"),
    refused(
        "resp-wrong-type",
        RESPONSES,
        response(max_output_tokens="many"),
        "body.max_output_tokens",
        vllm="refuses",
        code="invalid_request",
    ),
]
