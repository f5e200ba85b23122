"""score-table on the real stack (tiny model): structured answers, bad rows, incremental runs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.engines import engine_requests_served

pytestmark = pytest.mark.usefixtures("ray_session", "prefect_api")

SCHEMA = {
    "type": "object",
    "properties": {
        "score": {"type": "integer", "enum": list(range(11))},
        "verdict": {"type": "string", "enum": ["yes", "no", "maybe"]},
    },
    "required": ["score", "verdict"],
    "additionalProperties": False,
}


def _table(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "id": [f"cand-{i:03d}" for i in range(n)],
            "name": [f"Person {i}" for i in range(n)],
            "years": [str(i % 15) for i in range(n)],
            "skills": [["python", "sql", "go", "rust"][i % 4] for i in range(n)],
            "office": ["remote"] * n,  # not read by the prompt
        }
    )


def _job(
    tmp_path: Path, table: pd.DataFrame, prompt: str = "{{ name }}: {{ years }} years, {{ skills }}. Fit for a data role?"
) -> Path:
    table.to_csv(tmp_path / "candidates.csv", index=False)
    job = {
        "name": "fit",
        "table": "candidates.csv",
        "id_column": "id",
        "columns": {"id": {}, "name": {}, "years": {"type": "int"}, "skills": {}},
        "prompt": prompt,
        "response_schema": SCHEMA,
        "max_tokens": 40,
    }
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    return path


def _run(path: Path):
    from flows.score_table import ScoreParameters, score_table

    return score_table(ScoreParameters(job=str(path)))


def _results(manifest) -> pd.DataFrame:
    return pd.read_parquet(io.BytesIO(Path(manifest.results).read_bytes()))


def test_scores_valid_rows_reports_bad_ones_and_rescoring_is_incremental(tmp_path, engine_env):
    table = _table(40)
    table.loc[7, "years"] = "seven"  # not an int
    table.loc[21, "name"] = None  # required
    first = _run(_job(tmp_path, table))
    assert (first.rows, first.scored, first.carried) == (38, 38, 0) and first.errors == 2
    results = _results(first)
    assert len(results) == 38 and results["id"].is_unique
    assert results["score"].between(0, 10).all() and set(results["verdict"]) <= {"yes", "no", "maybe"}
    assert {"office", "_row_hash", "_model", "_version"} <= set(results.columns)
    errors = [json.loads(line) for line in Path(first.errors_file).read_text().splitlines()]
    assert sorted(e["row_id"] for e in errors) == ["cand-007", "cand-021"]

    # Change 5 rows' prompt columns, 1 unrelated column, add 3 rows: exactly 8 requests reach the engine.
    table.loc[7, "years"] = "7"  # fixed: now valid, so it is new to the results
    for i in (1, 2, 3, 4):
        table.loc[i, "skills"] = "cobol"
    table.loc[30, "office"] = "berlin"
    table = pd.concat([table, _table(43).iloc[40:]], ignore_index=True)
    served = engine_requests_served()
    second = _run(_job(tmp_path, table))
    assert engine_requests_served() - served == 8
    assert (second.scored, second.carried, second.rows, second.parent_version) == (8, 34, 42, first.version)
    results = _results(second)
    assert results["id"].is_unique and len(results) == 42
    assert sorted(results["id"]) == sorted(i for i in table["id"] if i != "cand-021")
    assert set(results.loc[results["_scored_in"] == second.version, "id"]) == {
        "cand-001", "cand-002", "cand-003", "cand-004", "cand-007", "cand-040", "cand-041", "cand-042"
    }  # fmt: skip

    # The same table again: the published version is reused, nothing is sent.
    served = engine_requests_served()
    assert _run(_job(tmp_path, table)).version == second.version and engine_requests_served() == served

    # A new prompt template re-scores every valid row.
    third = _run(_job(tmp_path, table, prompt="Rate {{ name }} ({{ skills }}, {{ years }}y) for a data role."))
    assert (third.scored, third.carried) == (42, 0)
