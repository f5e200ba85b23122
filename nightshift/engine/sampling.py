"""OpenAI request bodies → sampling arguments, and generated text → OpenAI response bodies, for
the engines that do not run vLLM's OpenAI serving layer (the transformers engine, the
``ray-data-llm`` backend).

A ``/v1/responses`` body is answered as the chat request it stands for (``chat_request_for``) and
shaped as OpenAI's ``response`` object (``response_object``).

``VLLMEngine`` does not use this module: vLLM's own request models and serving classes translate
its bodies, so it honours every field as vLLM's server does. The mapping here follows vLLM's
rules for the fields it covers, and ``refuse_unmatched`` names the fields it cannot honour that
way, so an engine using it refuses them for the line rather than answer differently. Kept free of
vLLM imports (plain dicts in, plain models out) so it is unit-tested without an engine.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from nightshift.core.errors import UnsupportedRequestError
from nightshift.core.protocol import (
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionMessage,
    ChatCompletionRequest,
    Completion,
    CompletionChoice,
    CompletionRequest,
    CreateEmbeddingResponse,
    EmbeddingData,
    ResponseFormatJSONObject,
    ResponseFormatJSONSchema,
    ResponseObject,
    ResponseOutputMessage,
    ResponseOutputText,
    ResponsesRequest,
    ResponseUsage,
    Usage,
)

#: OpenAI's defaults where a body leaves a field out (vLLM's differ: temperature 1.0 is OpenAI's).
OPENAI_DEFAULT_TEMPERATURE = 1.0


def refuse_unmatched(body: ChatCompletionRequest | CompletionRequest, engine: str) -> None:
    """Raise ``UnsupportedRequestError`` (``unsupported_parameter``, naming the field) for a field of
    ``body`` that ``sampling_kwargs`` does not carry: tool calls, logprobs, logit bias."""
    tool_choice = getattr(body, "tool_choice", None)
    asked = {
        "tools": bool(getattr(body, "tools", None)),
        "tool_choice": tool_choice not in (None, "none"),
        # A completions body's logprobs=0 still asks for the chosen tokens' logprobs.
        "logprobs": body.logprobs is not None and body.logprobs is not False,
        "top_logprobs": bool(getattr(body, "top_logprobs", None)),
        "logit_bias": bool(body.logit_bias),
    }
    field = next((name for name, wanted in asked.items() if wanted), None)
    if field is not None:
        raise UnsupportedRequestError(
            f"unsupported parameter {field!r}: {engine} cannot answer it as vLLM does; run this batch on the vLLM engine",
            code="unsupported_parameter",
            param=field,
        )


def sampling_kwargs(
    body: ChatCompletionRequest | CompletionRequest,
    *,
    default_max_tokens: int,
    prompt_tokens: int | None = None,
    max_model_len: int | None = None,
) -> dict[str, Any]:
    """The ``SamplingParams`` keyword arguments for one request body.

    A chat request with no token limit gets ``default_max_tokens``, shortened to what still fits
    the context after the prompt, as vLLM's OpenAI server does.
    """
    max_tokens = body.token_budget()
    if max_tokens is None:
        max_tokens = default_max_tokens
        if prompt_tokens is not None and max_model_len is not None:
            max_tokens = max(1, min(max_tokens, max_model_len - prompt_tokens))
    kwargs: dict[str, Any] = {
        "n": body.n,
        "temperature": OPENAI_DEFAULT_TEMPERATURE if body.temperature is None else body.temperature,
        "max_tokens": max_tokens,
    }
    for name in ("top_p", "seed", "stop", "presence_penalty", "frequency_penalty"):
        value = getattr(body, name)
        if value is not None:
            kwargs[name] = value
    fmt = getattr(body, "response_format", None)
    if fmt:
        kind = fmt.get("type")
        # (Whitespace inside the JSON is an engine setting in this vLLM: EngineConfig.compact_json.)
        if kind == "json_schema":
            schema = (fmt.get("json_schema") or {}).get("schema")
            kwargs["structured_outputs"] = {"json": schema if schema is not None else {}}
        elif kind == "json_object":
            kwargs["structured_outputs"] = {"json_object": True}
    return kwargs


def chat_request_for(body: ResponsesRequest) -> ChatCompletionRequest:
    """The chat request a Responses body asks for, as vLLM renders it: ``instructions`` as a system
    message before the input messages, ``max_output_tokens`` as the completion budget, and
    ``text.format`` as the ``response_format`` of the same kind."""
    fmt = body.text.format if body.text is not None else None
    response_format: dict[str, Any] | None = None
    if isinstance(fmt, ResponseFormatJSONSchema):
        response_format = {"type": "json_schema", "json_schema": {"name": fmt.name, "schema": fmt.schema_}}
    elif isinstance(fmt, ResponseFormatJSONObject):
        response_format = {"type": "json_object"}
    return ChatCompletionRequest(
        model=body.model,
        messages=body.chat_messages(),  # type: ignore[arg-type]  # validated into ChatMessage
        max_completion_tokens=body.max_output_tokens,
        temperature=body.temperature,
        top_p=body.top_p,
        response_format=response_format,
    )


def response_object(
    *, model: str, body: ResponsesRequest, prompt_tokens: int, choice: tuple[str, int, str | None], max_tokens: int
) -> ResponseObject:
    """A ``response`` body from (text, output tokens, finish reason), cut short (``incomplete``) at the budget."""
    text, tokens, reason = choice
    complete = reason != "length"
    return ResponseObject(
        id=f"resp_{uuid.uuid4().hex}",
        created_at=int(time.time()),
        model=model,
        status="completed" if complete else "incomplete",
        incomplete_details=None if complete else {"reason": "max_output_tokens"},
        instructions=body.instructions,
        output=[ResponseOutputMessage(id=f"msg_{uuid.uuid4().hex}", content=[ResponseOutputText(text=text)])],
        temperature=OPENAI_DEFAULT_TEMPERATURE if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        max_output_tokens=max_tokens,
        text=None if body.text is None else body.text.model_dump(mode="json", by_alias=True),
        user=body.user,
        usage=ResponseUsage(input_tokens=prompt_tokens, output_tokens=tokens, total_tokens=prompt_tokens + tokens),
    )


def _finish_reason(reason: str | None) -> str | None:
    # vLLM reports "stop" (EOS or a stop string), "length", or "abort"; OpenAI has no "abort".
    return reason if reason in ("stop", "length") else None


def _usage(prompt_tokens: int, choices: list[tuple[str, int, str | None]]) -> Usage:
    completion_tokens = sum(c[1] for c in choices)
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens)


def chat_completion(*, model: str, prompt_tokens: int, choices: list[tuple[str, int, str | None]]) -> ChatCompletion:
    """A chat.completion body from (text, completion tokens, finish reason) per choice."""
    return ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=model,
        choices=[
            ChatCompletionChoice(
                index=i,
                message=ChatCompletionMessage(content=text),
                finish_reason=_finish_reason(reason),  # type: ignore[arg-type]
            )
            for i, (text, _, reason) in enumerate(choices)
        ],
        usage=_usage(prompt_tokens, choices),
    )


def completion(*, model: str, prompt_tokens: int, choices: list[tuple[str, int, str | None]]) -> Completion:
    """A text_completion body from (text, completion tokens, finish reason) per choice."""
    return Completion(
        id=f"cmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=model,
        choices=[
            CompletionChoice(index=i, text=text, finish_reason=_finish_reason(reason))  # type: ignore[arg-type]
            for i, (text, _, reason) in enumerate(choices)
        ],
        usage=_usage(prompt_tokens, choices),
    )


def embedding_response(*, model: str, embeddings: list[list[float]], prompt_tokens: int) -> CreateEmbeddingResponse:
    """An embeddings list body."""
    return CreateEmbeddingResponse(
        data=[EmbeddingData(index=i, embedding=e) for i, e in enumerate(embeddings)],
        model=model,
        usage=Usage(prompt_tokens=prompt_tokens, total_tokens=prompt_tokens),
    )
