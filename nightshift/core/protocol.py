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
    RESPONSES = "/v1/responses"

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


class ResponseInputText(BaseModel):
    """One text part of a Responses input message (``input_text``; ``output_text`` in an assistant turn)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["input_text", "output_text"]
    text: str


class ResponseInputMessage(BaseModel):
    """One message of a Responses ``input`` list (OpenAI's ``EasyInputMessage`` / input ``message`` item)."""

    # id and status ride along when a caller replays an earlier response's output message.
    model_config = ConfigDict(extra="allow")

    type: Literal["message"] | None = None
    role: Literal["user", "assistant", "system", "developer"]
    content: list[ResponseInputText] = Field(description="Text parts; a string is read as one text part.")

    @field_validator("content", mode="before")
    @classmethod
    def _string_is_one_part(cls, v: Any) -> Any:
        # One shape for both forms, so an error names the field, not a member of a union.
        return [{"type": "input_text", "text": v}] if isinstance(v, str) else v

    def text(self) -> str:
        """The message's text, with content parts joined."""
        return "".join(part.text for part in self.content)


class ResponseFormatText(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["text"]


class ResponseFormatJSONObject(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["json_object"]


class ResponseFormatJSONSchema(BaseModel):
    """``text.format`` asking for JSON that fits ``schema`` (OpenAI's flat shape, not chat's nested one)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    type: Literal["json_schema"]
    name: Annotated[str, Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
    schema_: dict[str, Any] = Field(alias="schema", description="JSON schema the output must fit.")
    description: str | None = None
    strict: bool | None = None


class ResponseTextConfig(BaseModel):
    """``text``: the output's format."""

    model_config = ConfigDict(extra="forbid")

    format: (
        Annotated[ResponseFormatText | ResponseFormatJSONObject | ResponseFormatJSONSchema, Field(discriminator="type")] | None
    ) = None


class ResponsesRequest(_Body):
    """Body of a ``/v1/responses`` line (OpenAI's Responses API, answered without server-side state)."""

    input: Annotated[list[ResponseInputMessage], Field(min_length=1)] = Field(
        description="The prompt: a string (one user message) or a list of messages."
    )
    instructions: str | None = Field(default=None, description="A system message put before the input.")
    max_output_tokens: Annotated[int, Field(ge=1)] | None = Field(default=None, description="Limit on generated tokens.")
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = Field(
        default=None, description="Sampling temperature; 0 is greedy. OpenAI's default is 1."
    )
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    text: ResponseTextConfig | None = None
    # Only `false` is accepted: a batch line's answer lives in the output file, never in a response store.
    store: Literal[False] | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _string_is_one_user_message(cls, v: Any) -> Any:
        # The parsed form only; the line's body goes to the engine as written.
        if isinstance(v, str):
            return [{"role": "user", "content": v}]
        if not isinstance(v, list):
            raise ValueError("input must be a string or a list of messages")
        return v

    def token_budget(self) -> int | None:
        """The output token limit the request asks for, if any."""
        return self.max_output_tokens

    def chat_messages(self) -> list[dict[str, str]]:
        """The conversation the model sees, as chat messages (instructions first, as a system message)."""
        messages = [{"role": "system", "content": self.instructions}] if self.instructions is not None else []
        return [*messages, *({"role": m.role, "content": m.text()} for m in self.input)]


RequestBody = ChatCompletionRequest | CompletionRequest | EmbeddingRequest | ResponsesRequest

BODY_MODELS: dict[Endpoint, type[RequestBody]] = {
    Endpoint.CHAT_COMPLETIONS: ChatCompletionRequest,
    Endpoint.COMPLETIONS: CompletionRequest,
    Endpoint.EMBEDDINGS: EmbeddingRequest,
    Endpoint.RESPONSES: ResponsesRequest,
}

_STATELESS = "batch lines are independent and nothing is stored between them; send the whole conversation in input"

#: Why a field of the OpenAI API is refused, where there is more to say than "not supported".
REFUSED_FIELDS: dict[str, str] = {
    "stream": "a batch returns each answer whole; streaming does not apply to batch requests",
    "stream_options": "a batch returns each answer whole; streaming does not apply to batch requests",
    "functions": "deprecated by OpenAI; use tools",
    "function_call": "deprecated by OpenAI; use tool_choice",
    "store": "a batch line's response is never stored server-side; it is in the batch's output file (store may only be false)",
    "previous_response_id": _STATELESS,
    "conversation": _STATELESS,
    "background": "a batch line already runs in the background, and its answer is in the batch's output file",
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


class ResponseOutputText(BaseModel):
    """One text part of a Responses output message."""

    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[dict[str, Any]] = Field(default_factory=list)
    logprobs: list[dict[str, Any]] | None = None


class ResponseOutputMessage(BaseModel):
    """The assistant message of a Responses answer (an ``output[]`` item)."""

    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: Literal["completed", "incomplete"] = "completed"
    content: list[ResponseOutputText]


class ResponseUsage(BaseModel):
    """Token counts of a Responses answer (OpenAI's names: input/output tokens)."""

    input_tokens: int
    input_tokens_details: dict[str, int] = Field(default_factory=lambda: {"cached_tokens": 0, "cache_write_tokens": 0})
    output_tokens: int
    output_tokens_details: dict[str, int] = Field(default_factory=lambda: {"reasoning_tokens": 0})
    total_tokens: int


class ResponseObject(BaseModel):
    """Body of a ``/v1/responses`` answer: OpenAI's ``response`` object."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    model: str
    status: Literal["completed", "incomplete"]
    incomplete_details: dict[str, str] | None = Field(default=None, description='{"reason": "max_output_tokens"} when cut short.')
    instructions: str | None = None
    output: list[ResponseOutputMessage]
    parallel_tool_calls: bool = True
    tool_choice: Literal["none"] = "none"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    temperature: float
    top_p: float
    max_output_tokens: int
    text: dict[str, Any] | None = None
    user: str | None = None
    usage: ResponseUsage

    def as_usage(self) -> Usage:
        """The answer's token counts under nightshift's (chat) names."""
        u = self.usage
        return Usage(prompt_tokens=u.input_tokens, completion_tokens=u.output_tokens, total_tokens=u.total_tokens)
