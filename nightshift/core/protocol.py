"""The OpenAI Batch protocol: one typed model per JSONL line and per response body.

Field names are OpenAI's own (``custom_id``, ``request_counts``, ``finish_reason``...), so files
written here are read by the official ``openai`` client and by anything that reads OpenAI batch
output. Shapes follow https://platform.openai.com/docs/api-reference/batch and vLLM's
``vllm/entrypoints/openai/run_batch.py`` (``BatchRequestInput`` / ``BatchRequestOutput``).
"""

from __future__ import annotations

import enum
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Endpoint(enum.StrEnum):
    """The request URLs a batch line may name; a batch serves exactly one of them."""

    CHAT_COMPLETIONS = "/v1/chat/completions"
    COMPLETIONS = "/v1/completions"
    EMBEDDINGS = "/v1/embeddings"

    @property
    def is_generative(self) -> bool:
        """True for endpoints served by a generating engine (not a pooling one)."""
        return self is not Endpoint.EMBEDDINGS


# --------------------------------------------------------------------------- request bodies


class _Body(BaseModel):
    # Only the fields declared here are honoured; any other top-level field of a body is refused for
    # its line (validation turns pydantic's extra_forbidden into ``unsupported_parameter``), never
    # silently dropped. A declared field with a wrong type or range is an error too.
    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(default=None, description="Model named by the request; must be the batch's served model.")
    user: str | None = Field(default=None, description="End-user id; recorded by OpenAI, no effect on the answer.")


class _SamplingBody(_Body):
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = Field(
        default=None, description="Sampling temperature; 0 is greedy. OpenAI's default is 1."
    )
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    n: Annotated[int, Field(ge=1, le=128)] = Field(default=1, description="Choices per request.")
    seed: int | None = Field(default=None, description="Fixes sampling for reproducible output.")
    stop: str | list[str] | None = Field(default=None, description="Up to 4 stop sequences.")
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] | None = None
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = Field(
        default=None, description="Token id (as a string) to a bias added to its logit."
    )

    @field_validator("stop")
    @classmethod
    def _at_most_four_stops(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences")
        return v


class ChatMessage(BaseModel):
    """One chat message. ``content`` is a string or a list of text parts."""

    # tool_calls, tool_call_id and name ride along: the chat template renders them.
    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None

    @field_validator("content")
    @classmethod
    def _text_parts_only(cls, v: str | list[dict[str, Any]] | None) -> str | list[dict[str, Any]] | None:
        if isinstance(v, list):
            for part in v:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ValueError("only text content parts ({'type': 'text', 'text': ...}) are supported")
        return v

    def text(self) -> str:
        """The message's text, with content parts joined."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part["text"] for part in self.content)


class FunctionDefinition(BaseModel):
    """A function the model may call (OpenAI's ``tools[].function``)."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] | None = Field(default=None, description="JSON schema of the arguments.")
    strict: bool | None = None


class ChatTool(BaseModel):
    """One entry of ``tools``."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["function"]
    function: FunctionDefinition


class _FunctionName(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    """``tool_choice`` naming the one function to call."""

    type: Literal["function"]
    function: _FunctionName


class ChatCompletionRequest(_SamplingBody):
    """Body of a ``/v1/chat/completions`` line."""

    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="Deprecated OpenAI name of max_completion_tokens."
    )
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    response_format: dict[str, Any] | None = None
    logprobs: bool | None = Field(default=None, description="Return the log probability of each output token.")
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = Field(
        default=None, description="Most likely alternatives per output token (needs logprobs)."
    )
    tools: Annotated[list[ChatTool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None

    def token_budget(self) -> int | None:
        """The completion token limit the request asks for, if any."""
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_SamplingBody):
    """Body of a ``/v1/completions`` line."""

    prompt: Annotated[str, Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = Field(
        default=16, description="OpenAI's default for completions is 16 tokens."
    )
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = Field(
        default=None, description="Log probabilities of this many most likely tokens per output token."
    )

    def token_budget(self) -> int | None:
        """The completion token limit the request asks for, if any."""
        return self.max_tokens


class EmbeddingRequest(_Body):
    """Body of a ``/v1/embeddings`` line."""

    input: str | Annotated[list[str], Field(min_length=1, max_length=2048)]
    encoding_format: Literal["float"] = "float"

    def inputs(self) -> list[str]:
        """The texts to embed, always as a list."""
        return [self.input] if isinstance(self.input, str) else list(self.input)


RequestBody = ChatCompletionRequest | CompletionRequest | EmbeddingRequest

BODY_MODELS: dict[Endpoint, type[RequestBody]] = {
    Endpoint.CHAT_COMPLETIONS: ChatCompletionRequest,
    Endpoint.COMPLETIONS: CompletionRequest,
    Endpoint.EMBEDDINGS: EmbeddingRequest,
}

#: Why a field of the OpenAI API is refused, where there is more to say than "not supported".
REFUSED_FIELDS: dict[str, str] = {
    "stream": "a batch returns each answer whole; streaming does not apply to batch requests",
    "stream_options": "a batch returns each answer whole; streaming does not apply to batch requests",
    "functions": "deprecated by OpenAI; use tools",
    "function_call": "deprecated by OpenAI; use tool_choice",
}


def refusal_message(field: str) -> str:
    """Why a batch line's ``field`` is refused (for its error row)."""
    reason = REFUSED_FIELDS.get(field, "nightshift does not honour it, and a field is never silently ignored")
    return f"unsupported parameter {field[:64]!r}: {reason}"


# --------------------------------------------------------------------------- request line


class BatchRequestInput(BaseModel):
    """One line of a batch input file."""

    model_config = ConfigDict(extra="forbid")

    custom_id: Annotated[str, Field(min_length=1, max_length=512)] = Field(
        description="Caller's id; appears once in the output or the error file."
    )
    method: Literal["POST"] = Field(description="HTTP method; OpenAI batches only POST.")
    url: Endpoint = Field(description="Endpoint the request is for.")
    body: dict[str, Any] = Field(description="The request body, as sent to the endpoint.")

    def parsed_body(self) -> RequestBody:
        """The body validated against the model of its endpoint (raises pydantic errors)."""
        return BODY_MODELS[self.url].model_validate(self.body)


class ValidRequest(BaseModel):
    """A request line that passed validation, with where it came from.

    This is what shards hold: the line number keeps output order equal to input order.
    """

    line: int = Field(ge=1, description="1-based line number in the input file.")
    custom_id: str
    url: Endpoint
    body: dict[str, Any]
    prompt_tokens: int | None = Field(default=None, description="Counted at validation, if known.")
    cache_key: str | None = Field(default=None, description="Request-cache key, when the request is cacheable.")


# --------------------------------------------------------------------------- output lines


class BatchError(BaseModel):
    """Why one request failed (OpenAI's batch error object, plus the input line number)."""

    code: str
    message: str
    param: str | None = None
    line: int | None = None


class BatchResponse(BaseModel):
    """The HTTP response a request would have had."""

    status_code: int
    request_id: str
    body: dict[str, Any]


class BatchRequestOutput(BaseModel):
    """One line of the output or the error file."""

    id: str = Field(default_factory=lambda: f"batch_req_{uuid.uuid4().hex}")
    custom_id: str | None = Field(description="None only when the input line had no readable id.")
    response: BatchResponse | None
    error: BatchError | None

    @property
    def ok(self) -> bool:
        """True when the line belongs in the output file (a 200 response and no error)."""
        return self.error is None and self.response is not None and self.response.status_code == 200


# --------------------------------------------------------------------------- response bodies


class Usage(BaseModel):
    """Token counts of one response."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatCompletionMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[dict[str, Any]] | None = None


class ChatCompletionChoice(BaseModel):
    index: int
    message: ChatCompletionMessage
    finish_reason: Literal["stop", "length", "content_filter", "tool_calls"] | None
    logprobs: dict[str, Any] | None = None


class ChatCompletion(BaseModel):
    """Body of a ``/v1/chat/completions`` response."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: Literal["stop", "length", "content_filter"] | None
    logprobs: dict[str, Any] | None = None


class Completion(BaseModel):
    """Body of a ``/v1/completions`` response."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float]


class CreateEmbeddingResponse(BaseModel):
    """Body of a ``/v1/embeddings`` response."""

    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: Usage
