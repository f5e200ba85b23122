import json

import pandas as pd
import pytest

from nightshift.core.errors import ScoringJobError
from nightshift.core.scoring import ScoringJob, parse_answer, plan_increment, render_request, row_hash, validate_table

SCHEMA = {
    "type": "object",
    "properties": {"score": {"type": "integer", "minimum": 0, "maximum": 100}, "reason": {"type": "string", "maxLength": 40}},
    "required": ["score", "reason"],
    "additionalProperties": False,
}


def job(**kw):
    base = {
        "name": "fit",
        "table": "candidates.csv",
        "id_column": "id",
        "columns": {"id": {"type": "str"}, "name": {"type": "str"}, "years": {"type": "int"}, "notes": {"nullable": True}},
        "system": "You score candidates.",
        "prompt": "Candidate {{ name }} has {{ years }} years of experience. Score them.",
        "response_schema": SCHEMA,
        "max_tokens": 48,
    }
    return ScoringJob(**{**base, **kw})


def table(n=6):
    return pd.DataFrame(
        {
            "id": [f"c{i}" for i in range(n)],
            "name": [f"Ann {i}" for i in range(n)],
            "years": pd.Series(range(n), dtype=object),
            "notes": ["x"] * n,
        }
    )


def test_bad_rows_are_reported_not_fatal():
    df = table()
    df.loc[2, "years"] = "many"  # not an int
    df.loc[4, "id"] = "c0"  # duplicate id
    good, errors = validate_table(df, job())
    assert list(good["id"]) == ["c1", "c3", "c5"]  # both copies of the duplicate id are refused
    assert {e.index for e in errors} >= {2} and all(e.code == "invalid_row" for e in errors)
    assert any("years" in e.message and e.row_id == "c2" for e in errors)
    assert any("id" in e.message for e in errors)  # the duplicate is named
    assert good["years"].dtype.kind == "i"  # coerced


def test_missing_column_or_undeclared_prompt_column_fails_the_job():
    with pytest.raises(ScoringJobError, match="no column"):
        validate_table(table().drop(columns=["years"]), job())
    with pytest.raises(ScoringJobError, match="undeclared|not declared"):
        validate_table(table(), job(prompt="{{ salary }}"))


def test_request_asks_for_schema_json_and_renders_the_row():
    line = render_request(table().iloc[3], job())
    assert line["custom_id"] == "c3" and line["url"] == "/v1/chat/completions"
    body = line["body"]
    assert body["messages"][0] == {"role": "system", "content": "You score candidates."}
    assert body["messages"][1]["content"] == "Candidate Ann 3 has 3 years of experience. Score them."
    assert body["response_format"]["json_schema"]["schema"] == SCHEMA and body["temperature"] == 0.0


def test_row_hash_covers_prompt_columns_and_job_not_other_columns():
    j, df = job(), table()
    fp = j.fingerprint("model-a")
    h = row_hash(df.iloc[1], j, fp)
    other = df.iloc[1].copy()
    other["notes"] = "changed"  # not read by the prompt
    assert row_hash(other, j, fp) == h
    other["years"] = 40
    assert row_hash(other, j, fp) != h
    assert row_hash(df.iloc[1], j, j.fingerprint("model-b")) != h
    assert row_hash(df.iloc[1], j, job(prompt="{{ name }} / {{ years }}").fingerprint("model-a")) != h


def test_plan_increment_scores_new_and_changed_and_carries_the_rest():
    score, carry = plan_increment({"a": "1", "b": "2", "c": "3", "d": "4"}, {"a": "1", "b": "x", "c": "3", "z": "9"})
    assert (score, carry) == (["b", "d"], ["a", "c"])


@pytest.mark.parametrize(
    ("text", "ok", "why"),
    [
        (json.dumps({"score": 87, "reason": "fits"}), True, None),
        (json.dumps({"score": 187, "reason": "fits"}), False, "score"),
        (json.dumps({"score": 5}), False, "reason"),
        ('{"score": 5, "reason": "cut off', False, "not JSON"),
        (None, False, "no answer"),
    ],
)
def test_parse_answer(text, ok, why):
    fields, error = parse_answer(text, SCHEMA)
    assert (fields is not None) == ok
    if why:
        assert why in error


def test_job_config_is_checked_when_loaded():
    with pytest.raises(ValueError):
        job(prompt="{{ name ")
    with pytest.raises(ValueError):
        job(response_schema={"type": "no-such-type"})
