import json

import pytest

from nightshift.core.errors import BatchFileError
from nightshift.core.protocol import Endpoint
from nightshift.core.validation import read_lines, validate_lines
from tests.batchfiles import BAD_LINES, chat_line


def _lines(*objs: object) -> list[tuple[int, str]]:
    return [(i, o if isinstance(o, str) else json.dumps(o)) for i, o in enumerate(objs, start=1)]


def test_good_lines_pass_in_order():
    result = validate_lines(_lines(chat_line(0), chat_line(1), chat_line(2)))
    assert [r.custom_id for r in result.valid] == ["req-000", "req-001", "req-002"]
    assert [r.line for r in result.valid] == [1, 2, 3]
    assert result.endpoint is Endpoint.CHAT_COMPLETIONS
    assert result.errors == []


@pytest.mark.parametrize(
    ("kind", "code", "text"),
    [
        ("invalid_json", "invalid_json", "invalid JSON"),
        ("unknown_url", "invalid_request", "url must be one of"),
        ("bad_body", "invalid_request", "body.messages"),
        ("missing_custom_id", "invalid_request", "custom_id is required"),
    ],
)
def test_each_bad_line_becomes_one_error_naming_line_and_field(kind, code, text):
    result = validate_lines(_lines(chat_line(0), BAD_LINES[kind], chat_line(1)))
    assert [r.custom_id for r in result.valid] == ["req-000", "req-001"]
    assert len(result.errors) == 1
    err = result.errors[0]
    assert err.line == 2 and err.code == code and text in err.message


def test_duplicate_custom_id_keeps_the_first():
    dup = chat_line(0)
    result = validate_lines(_lines(chat_line(0), chat_line(1), dup))
    assert [r.line for r in result.valid] == [1, 2]
    (err,) = result.errors
    assert err.line == 3 and err.code == "duplicate_custom_id" and err.custom_id == "req-000"


def test_wrong_types_fail_the_row_not_the_batch():
    bad = chat_line(1)
    bad["custom_id"] = 17
    worse = chat_line(2)
    worse["method"] = "GET"
    result = validate_lines(_lines(chat_line(0), bad, worse))
    assert [r.custom_id for r in result.valid] == ["req-000"]
    assert {(e.line, e.param) for e in result.errors} == {(2, "custom_id"), (3, "method")}


def test_out_of_range_sampling_field_is_named():
    line = chat_line(0, temperature=7)
    (err,) = validate_lines(_lines(chat_line(1), line)).errors
    assert err.param == "body.temperature" and "less than or equal to 2" in err.message


def test_url_other_than_batch_endpoint_is_an_error():
    completion = {"custom_id": "c1", "method": "POST", "url": "/v1/completions", "body": {"prompt": "Once"}}
    result = validate_lines(_lines(chat_line(0), completion))
    (err,) = result.errors
    assert err.code == "url_mismatch" and err.line == 2
    explicit = validate_lines(_lines(chat_line(0), completion), endpoint=Endpoint.COMPLETIONS)
    assert [r.custom_id for r in explicit.valid] == ["c1"]


def test_prompt_too_long_uses_the_token_counter():
    def count(endpoint, body):
        return len(body["messages"][0]["content"].split())

    long = chat_line(1)
    long["body"]["messages"][0]["content"] = "word " * 600
    result = validate_lines(_lines(chat_line(0), long), max_model_len=512, count_tokens=count)
    (err,) = result.errors
    assert err.code == "context_length_exceeded" and "600 tokens" in err.message and err.line == 2
    assert result.valid[0].prompt_tokens == len(["Tell", "me", "about", "the", "sea,", "item", "0."])


def test_file_level_limits_fail_fast():
    with pytest.raises(BatchFileError, match="empty"):
        read_lines(b"\n\n", uri="x.jsonl", max_lines=10, max_bytes=100)
    with pytest.raises(BatchFileError, match="more than 2 request lines"):
        read_lines(b"{}\n{}\n{}\n", uri="x.jsonl", max_lines=2, max_bytes=100)
    with pytest.raises(BatchFileError, match="over the limit of 10 bytes"):
        read_lines(b"{}\n" * 10, uri="x.jsonl", max_lines=100, max_bytes=10)


def test_a_file_that_is_not_jsonl_fails_as_a_whole():
    lines = read_lines(b"id,prompt\n1,hello\n", uri="data.csv", max_lines=10, max_bytes=1000)
    with pytest.raises(BatchFileError, match="not a JSONL file") as info:
        validate_lines(lines, uri="data.csv")
    assert info.value.line == 1


def test_blank_lines_keep_numbering():
    data = (json.dumps(chat_line(0)) + "\n\n" + BAD_LINES["invalid_json"] + "\n").encode()
    result = validate_lines(read_lines(data, uri="x", max_lines=10, max_bytes=10_000))
    assert result.total_lines == 2 and result.errors[0].line == 3


def test_a_field_nightshift_does_not_honour_is_refused_for_its_line_only():
    lines = _lines(
        chat_line(0, stream="True"),
        chat_line(1, frobnicate=1),
        chat_line(2, user="u-1", logprobs=True, top_logprobs=2, seed=3),
        chat_line(3, stream=False),
    )
    result = validate_lines(lines)
    assert [r.custom_id for r in result.valid] == ["req-002"]  # user, logprobs, seed: honoured
    got = [(e.line, e.code, e.param, e.custom_id) for e in result.errors]
    assert got == [
        (1, "unsupported_parameter", "stream", "req-000"),
        (2, "unsupported_parameter", "frobnicate", "req-001"),
        (4, "unsupported_parameter", "stream", "req-003"),  # any value: a batch never streams
    ]
    assert "stream" in result.errors[0].message and "batch" in result.errors[0].message


def test_a_refused_field_name_is_cut_short_in_the_error():
    (err,) = validate_lines(_lines(chat_line(0, **{"x" * 500: 1}))).errors
    assert err.code == "unsupported_parameter" and len(err.param) == 64 and len(err.message) < 200


def test_a_line_for_another_model_is_an_error_line_never_answered():
    lines = _lines(chat_line(0), chat_line(1, model="NonExistModel"), chat_line(2, model=None))
    result = validate_lines(lines, served_model="tiny")
    assert [r.custom_id for r in result.valid] == ["req-000", "req-002"]  # its own name, or none: the batch's model
    (err,) = result.errors
    assert (err.line, err.code, err.param, err.custom_id) == (2, "model_not_found", "model", "req-001")
    assert "NonExistModel" in err.message and "'tiny'" in err.message
    assert validate_lines(lines).errors == []  # no served model given: no check


def test_wrong_types_of_honoured_fields_name_the_field():
    tools = chat_line(0, tools={"name": "x"})
    choice = chat_line(1, tools=[{"type": "function", "function": {"name": "f"}}], tool_choice="sometimes")
    top = chat_line(2, logprobs=True, top_logprobs=21)
    result = validate_lines(_lines(tools, choice, top))
    assert [(e.code, e.param.split(".")[:2]) for e in result.errors] == [
        ("invalid_request", ["body", "tools"]),
        ("invalid_request", ["body", "tool_choice"]),
        ("invalid_request", ["body", "top_logprobs"]),
    ]


def _response_line(n: int, **body: object) -> dict:
    return {"custom_id": f"resp-{n}", "method": "POST", "url": "/v1/responses", "body": {"input": "Hello", **body}}


def test_responses_lines_take_a_string_or_messages_and_openais_fields():
    messages = [
        {"role": "user", "content": "Hi"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello"}]},
        {"role": "user", "content": [{"type": "input_text", "text": "Score this"}]},
    ]
    schema = {"type": "json_schema", "name": "score", "schema": {"type": "object"}, "strict": True}
    result = validate_lines(
        _lines(
            _response_line(0),
            _response_line(1, input=messages, instructions="Be brief", max_output_tokens=16, temperature=0, store=False),
            _response_line(2, text={"format": schema}, top_p=0.5, user="u"),
        )
    )
    assert result.endpoint is Endpoint.RESPONSES and result.errors == []
    assert [r.custom_id for r in result.valid] == ["resp-0", "resp-1", "resp-2"]


@pytest.mark.parametrize(
    ("body", "code", "param", "text"),
    [
        ({"store": True}, "unsupported_parameter", "store", "never stored"),
        ({"previous_response_id": "resp_1"}, "unsupported_parameter", "previous_response_id", "send the whole conversation"),
        ({"conversation": "conv_1"}, "unsupported_parameter", "conversation", "send the whole conversation"),
        ({"background": True}, "unsupported_parameter", "background", "already runs in the background"),
        ({"stream": True}, "unsupported_parameter", "stream", "streaming does not apply"),
        ({"tools": []}, "unsupported_parameter", "tools", "never silently ignored"),
        ({"max_output_tokens": 0}, "invalid_request", "body.max_output_tokens", "greater than or equal to 1"),
        ({"input": []}, "invalid_request", "body.input", "at least 1 item"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "invalid_request", None, ""),
        ({"text": {"format": {"type": "json_schema", "schema": {}}}}, "invalid_request", "body.text.format.json_schema.name", ""),
    ],
)
def test_responses_lines_that_need_server_state_or_other_fields_are_refused_per_line(body, code, param, text):
    result = validate_lines(_lines(_response_line(0), _response_line(1, **body)))
    assert [r.custom_id for r in result.valid] == ["resp-0"]
    (err,) = result.errors
    assert (err.line, err.code, err.custom_id) == (2, code, "resp-1")
    assert err.param == param or (param is None and err.param.startswith("body.input.0.content"))
    assert text in err.message


def test_responses_prompt_length_counts_the_rendered_conversation():
    seen = []

    def count(endpoint: Endpoint, body: dict) -> int:
        seen.append((endpoint, body))
        return 10 * len(body["messages"])

    lines = _lines(_response_line(0, instructions="Be brief"), _response_line(1, max_output_tokens=100))
    result = validate_lines(lines, max_model_len=100, count_tokens=count)
    assert seen[0] == (
        Endpoint.CHAT_COMPLETIONS,
        {"messages": [{"role": "system", "content": "Be brief"}, {"role": "user", "content": "Hello"}]},
    )
    assert [(r.custom_id, r.prompt_tokens) for r in result.valid] == [("resp-0", 20)]
    (err,) = result.errors
    assert (err.code, err.param) == ("context_length_exceeded", "body.input")
    assert "plus 100 completion tokens" in err.message
