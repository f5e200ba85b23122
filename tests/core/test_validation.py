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


def _catalogue():
    from nightshift.core.catalogue import Catalogue

    return Catalogue.model_validate(
        {
            "default": "tiny",
            "models": {
                "tiny": {"source": "/srv/m", "adapters": {"tiny-sql": {"source": "/srv/l"}}},
                "other": {"source": "/srv/o"},
            },
        }
    )


def test_a_batch_runs_the_model_its_first_line_names_and_refuses_others_per_line():
    def line(i, model):
        obj = chat_line(i)
        if model is None:
            obj["body"].pop("model")
        else:
            obj["body"]["model"] = model
        return obj

    lines = _lines(line(0, "gpt-4o"), line(1, "tiny-sql"), line(2, None), line(3, "tiny"), line(4, "tiny-sql"))
    result = validate_lines(lines, catalogue=_catalogue())
    assert [r.custom_id for r in result.valid] == ["req-001", "req-002", "req-004"]
    # A line naming no model runs on the batch's (the engine answers as the id in its body).
    assert {r.body["model"] for r in result.valid} == {"tiny-sql"}
    unknown, mixed = result.errors
    assert (unknown.line, unknown.code, unknown.param) == (1, "model_not_found", "model")
    assert "GET /v1/models" in unknown.message and "/srv" not in unknown.message  # ids only, never a source
    assert (mixed.line, mixed.code) == (4, "model_mismatch") and "one model" in mixed.message


def test_the_batch_model_is_the_first_known_id_and_the_default_without_one():
    from nightshift.core.validation import batch_model

    catalogue = _catalogue()
    assert batch_model(_lines("not json", chat_line(0, model="nope"), chat_line(1, model="other")), catalogue) == "other"
    assert batch_model(_lines(chat_line(0, model="nope")), catalogue) is None
    result = validate_lines(
        _lines(chat_line(0, model="nope"), {**chat_line(1), "body": {"messages": [{"role": "user", "content": "hi"}]}}),
        catalogue=catalogue,
    )
    assert [r.body["model"] for r in result.valid] == ["tiny"]  # the default


def _windowed(lines, *, window, endpoint=None, catalogue=None, **kwargs):
    """``validate_windows`` after ``survey_lines``, its windows joined into one result."""
    from nightshift.core.validation import ValidationResult, survey_lines, validate_windows

    survey = survey_lines(iter(lines), uri="x", max_lines=len(lines), endpoint=endpoint, catalogue=catalogue)
    joined = ValidationResult(endpoint=survey.endpoint)
    for result in validate_windows(iter(lines), survey=survey, window=window, catalogue=catalogue, **kwargs):
        assert result.total_lines <= window and result.endpoint is survey.endpoint
        assert [e.line for e in result.errors] == sorted(e.line for e in result.errors)
        joined.valid += result.valid
        joined.errors += result.errors
        joined.total_lines += result.total_lines
    return joined


def _mixed():
    """Bad lines before the first good one, duplicates near and far, another endpoint, models."""
    not_post = {**chat_line(9), "custom_id": "req-000", "method": "GET"}  # its id, once valid, is a duplicate
    completion = {"custom_id": "c1", "method": "POST", "url": "/v1/completions", "body": {"model": "tiny", "prompt": "x"}}
    numbered = {**chat_line(8), "custom_id": 17}
    return _lines(
        "not json",
        not_post,
        BAD_LINES["unknown_url"],
        chat_line(0),  # a duplicate of line 2's id: not the line the endpoint comes from
        completion,  # the first well-formed line: the batch endpoint is /v1/completions
        chat_line(1),
        {**completion, "custom_id": "c2"},
        {**completion, "custom_id": "c1"},  # duplicate of line 5, in the next window for small windows
        numbered,
        chat_line(2, model="other"),
        {**completion, "custom_id": "c3", "body": {"prompt": "y"}},
        {**completion, "custom_id": "c2"},  # duplicate of line 7, far away
        BAD_LINES["invalid_json"],
        {**completion, "custom_id": "c4"},
    )


@pytest.mark.parametrize("window", [1, 2, 3, 5, 100])
def test_validation_in_windows_says_what_the_whole_file_validated_at_once_says(window):
    lines = _mixed()
    whole = validate_lines(lines, served_model="tiny")
    assert whole.endpoint is Endpoint.COMPLETIONS
    assert [e.line for e in whole.errors if e.code == "duplicate_custom_id"] == [4, 8, 12]
    windowed = _windowed(lines, window=window, served_model="tiny")
    assert windowed.endpoint is whole.endpoint
    assert windowed.valid == whole.valid and [r.line for r in windowed.valid] == [5, 7, 11, 14]
    assert [vars(e) for e in windowed.errors] == [vars(e) for e in whole.errors]
    assert windowed.counts == whole.counts == {"total": 14, "valid": 4, "invalid": 10}


def test_a_duplicate_custom_id_in_a_later_window_is_an_error_the_first_stays_valid():
    lines = _lines(chat_line(0), chat_line(1), chat_line(2), chat_line(0), chat_line(1))
    result = _windowed(lines, window=2)
    assert [r.line for r in result.valid] == [1, 2, 3]
    assert [(e.line, e.code, e.custom_id) for e in result.errors] == [
        (4, "duplicate_custom_id", "req-000"),
        (5, "duplicate_custom_id", "req-001"),
    ]
    assert result.errors[0].message == validate_lines(lines).errors[0].message


def test_the_survey_takes_the_model_from_the_first_line_naming_a_catalogue_id():
    unnamed = chat_line(1)
    unnamed["body"].pop("model")
    lines = _lines(chat_line(0, model="nope"), unnamed, chat_line(2, model="tiny-sql"), chat_line(3, model="other"))
    whole = validate_lines(lines, catalogue=_catalogue())
    windowed = _windowed(lines, window=1, catalogue=_catalogue())
    assert {r.body["model"] for r in windowed.valid} == {"tiny-sql"}
    assert windowed.valid == whole.valid and [vars(e) for e in windowed.errors] == [vars(e) for e in whole.errors]


def test_the_survey_enforces_the_file_limits_as_it_reads():
    from nightshift.core.validation import survey_lines

    def lines(n):
        for i in range(n):
            if i == 3:
                raise AssertionError("read past the limit")
            yield i + 1, "{}"

    with pytest.raises(BatchFileError, match="more than 2 request lines") as info:
        survey_lines(lines(10), uri="x.jsonl", max_lines=2)
    assert info.value.line == 3
    with pytest.raises(BatchFileError, match="empty"):
        survey_lines(iter([]), uri="x.jsonl", max_lines=2)
    with pytest.raises(BatchFileError, match="not a JSONL file") as info:
        survey_lines(iter([(2, "id,prompt"), (3, "1,hello")]), uri="data.csv", max_lines=10)
    assert info.value.line == 2 and "invalid JSON" in str(info.value)
