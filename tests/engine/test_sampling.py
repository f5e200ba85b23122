import pytest

from nightshift.core.errors import UnsupportedRequestError
from nightshift.core.protocol import ChatCompletionRequest, CompletionRequest
from nightshift.engine.sampling import chat_completion, refuse_unmatched, sampling_kwargs


def _chat(**body):
    return ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "hi"}], **body})


def test_openai_fields_map_to_vllm_sampling():
    kw = sampling_kwargs(_chat(temperature=0.3, top_p=0.9, seed=7, stop=["\n"], n=2, max_tokens=5), default_max_tokens=100)
    assert kw == {"n": 2, "temperature": 0.3, "max_tokens": 5, "top_p": 0.9, "seed": 7, "stop": ["\n"]}


def test_defaults_follow_openai_and_fit_the_context():
    kw = sampling_kwargs(_chat(), default_max_tokens=100, prompt_tokens=450, max_model_len=512)
    assert kw["temperature"] == 1.0 and kw["max_tokens"] == 62
    assert sampling_kwargs(_chat(max_completion_tokens=9, max_tokens=3), default_max_tokens=100)["max_tokens"] == 9
    assert sampling_kwargs(CompletionRequest(prompt="Once"), default_max_tokens=100)["max_tokens"] == 16


def test_response_format_becomes_structured_output():
    schema = {"type": "object", "properties": {"score": {"type": "integer"}}}
    kw = sampling_kwargs(
        _chat(response_format={"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}), default_max_tokens=8
    )
    assert kw["structured_outputs"] == {"json": schema}
    assert sampling_kwargs(_chat(response_format={"type": "json_object"}), default_max_tokens=8)["structured_outputs"] == {
        "json_object": True
    }


def test_chat_completion_body_counts_tokens_and_maps_abort():
    body = chat_completion(model="m", prompt_tokens=4, choices=[("a", 2, "length"), ("b", 3, "abort")])
    assert body.usage.model_dump() == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}
    assert [c.finish_reason for c in body.choices] == ["length", None]


def test_fields_without_a_faithful_mapping_are_refused_naming_the_field():
    tool = {"type": "function", "function": {"name": "f"}}
    cases = {
        "tools": _chat(tools=[tool], tool_choice="none"),
        "tool_choice": _chat(tool_choice="required"),
        "logprobs": _chat(logprobs=True, top_logprobs=2),
        "top_logprobs": _chat(top_logprobs=1),
        "logit_bias": CompletionRequest(prompt="Once", logit_bias={"5": 1.0}),
    }
    for field, body in cases.items():
        with pytest.raises(UnsupportedRequestError) as info:
            refuse_unmatched(body, "this engine")
        assert (info.value.code, info.value.param) == ("unsupported_parameter", field)
    with pytest.raises(UnsupportedRequestError, match="logprobs"):
        refuse_unmatched(CompletionRequest(prompt="Once", logprobs=0), "this engine")  # 0 still asks for logprobs
    refuse_unmatched(_chat(tool_choice="none", logprobs=False, top_logprobs=0, logit_bias={}), "this engine")
