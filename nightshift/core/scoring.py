"""Recurring scoring jobs: a table in, one structured chat request per row, a scored table out.

Pure pieces the scoring flow is wired from: the job's config, table validation (pandera, from the
config; bad rows are reported, not fatal), prompt rendering, the per-row content hash that makes
runs incremental, and parsing a model's JSON answer against the job's schema.

A row's hash covers the columns its prompt reads plus the template, the system prompt, the
schema, the sampling settings and the model: change any of them and the row is scored again;
change an unrelated column and it is carried over from the previous version.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import jsonschema
import pandas as pd
import pandera.pandas as pa
from jinja2 import StrictUndefined, meta
from jinja2.sandbox import SandboxedEnvironment
from pydantic import BaseModel, Field, field_validator

from nightshift.core.errors import ScoringJobError
from nightshift.core.hashing import sha256_json
from nightshift.core.sla import Tier

ColumnType = Literal["str", "int", "float", "bool"]
_DTYPES: dict[str, Any] = {"str": str, "int": int, "float": float, "bool": bool}
#: Template variables the row does not provide.
_RESERVED = {"row"}

_env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)  # user templates: sandboxed


class ColumnSpec(BaseModel):
    """One column the table must have."""

    type: ColumnType = "str"
    nullable: bool = False
    unique: bool = False


class ScoringJob(BaseModel):
    """A scoring job's config (``examples/*.yaml``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Store name of the job's results.")
    table: str = Field(description="CSV or Parquet table (path or URL).")
    id_column: str = Field(description="Column that identifies a row; must be unique.")
    columns: dict[str, ColumnSpec] = Field(description="Required columns and their types.")
    system: str | None = Field(default=None, description="System message of every request.")
    prompt: str = Field(description="Jinja2 template of the user message; columns are variables.")
    response_schema: dict[str, Any] = Field(description="JSON Schema every answer must fit (structured output).")
    max_tokens: int = Field(default=128, ge=1, le=32_768)
    temperature: float = Field(default=0.0, ge=0, le=2)
    model: str | None = Field(default=None, description="Model folder or embedded name; defaults to settings.")
    tier: Tier = Field(default=Tier.BASIC)

    @field_validator("prompt")
    @classmethod
    def _parses(cls, value: str) -> str:
        from jinja2 import TemplateSyntaxError

        try:
            _env.parse(value)  # a syntax error fails when the job is loaded, not on row 1
        except TemplateSyntaxError as exc:
            raise ValueError(f"prompt template, line {exc.lineno}: {exc.message}") from exc
        return value

    @field_validator("response_schema")
    @classmethod
    def _is_schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            jsonschema.Draft202012Validator.check_schema(value)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"response_schema is not a JSON Schema: {exc.message}") from exc
        return value

    def prompt_columns(self) -> list[str]:
        """The columns the prompt reads (what a row's hash covers)."""
        names = meta.find_undeclared_variables(_env.parse(self.prompt)) - _RESERVED
        return sorted(names)

    def fingerprint(self, model_sha256: str) -> str:
        """Everything besides the row that changes an answer."""
        return sha256_json(
            {
                "prompt": self.prompt,
                "system": self.system,
                "schema": self.response_schema,
                "max_tokens": self.max_tokens,
                "temperature": self.temperature,
                "model": model_sha256,
            }
        )


class RowError(BaseModel):
    """A row that could not be scored, and why."""

    row_id: str | None
    index: int = Field(description="0-based position in the table.")
    code: str
    message: str
    raw: str | None = Field(default=None, description="The model's raw answer, when it did not parse.")


def table_schema(job: ScoringJob) -> pa.DataFrameSchema:
    """The pandera schema of the job's table (extra columns are allowed and carried through)."""
    cols = {
        name: pa.Column(_DTYPES[spec.type], nullable=spec.nullable, unique=spec.unique or name == job.id_column, coerce=True)
        for name, spec in job.columns.items()
    }
    if job.id_column not in cols:
        cols[job.id_column] = pa.Column(str, unique=True, coerce=True)
    missing = set(job.prompt_columns()) - set(cols)
    if missing:
        raise ScoringJobError(f"the prompt reads columns not declared in 'columns': {sorted(missing)}")
    return pa.DataFrameSchema(cols, strict=False)


def validate_table(df: pd.DataFrame, job: ScoringJob) -> tuple[pd.DataFrame, list[RowError]]:
    """The valid rows (coerced) and one error per bad row; a missing column fails the whole table."""
    schema = table_schema(job)
    missing = [c for c in schema.columns if c not in df.columns]
    if missing:
        raise ScoringJobError(f"the table has no column(s) {missing}")
    df = df.reset_index(drop=True)
    try:
        return schema.validate(df, lazy=True), []
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
        errors: dict[int, RowError] = {}
        for case in cases.itertuples():
            index = case.index
            if index is None or pd.isna(index):
                continue
            i = int(index)
            if i not in errors:
                raw_id = df.at[i, job.id_column] if job.id_column in df.columns else None
                errors[i] = RowError(
                    row_id=None if raw_id is None or pd.isna(raw_id) else str(raw_id),
                    index=i,
                    code="invalid_row",
                    message=f"column {case.column!r}: {case.check} (value {case.failure_case!r})",
                )
        good = df.drop(index=list(errors))
        return schema.validate(good, lazy=False), sorted(errors.values(), key=lambda e: e.index)


def _row_vars(row: pd.Series) -> dict[str, Any]:
    return {k: (None if pd.isna(v) else v) for k, v in row.items()}


def row_hash(row: pd.Series, job: ScoringJob, fingerprint: str) -> str:
    """The content hash of what a row's answer depends on."""
    values = {c: row[c] for c in job.prompt_columns()}
    return sha256_json({"row": {k: (None if pd.isna(v) else str(v)) for k, v in values.items()}, "job": fingerprint})


def render_request(row: pd.Series, job: ScoringJob) -> dict[str, Any]:
    """The row's OpenAI batch line: a chat request asking for JSON that fits the job's schema."""
    messages = [{"role": "system", "content": job.system}] if job.system else []
    messages.append({"role": "user", "content": _env.from_string(job.prompt).render(**_row_vars(row), row=_row_vars(row))})
    return {
        "custom_id": str(row[job.id_column]),
        "method": "POST",
        "url": "/v1/chat/completions",
        # No "model": the job's model serves every line (chosen by the run, not per line), and a line
        # naming another model would be refused at validation.
        "body": {
            "messages": messages,
            "max_tokens": job.max_tokens,
            "temperature": job.temperature,
            "response_format": {"type": "json_schema", "json_schema": {"name": job.name, "schema": job.response_schema}},
        },
    }


def plan_increment(hashes: dict[str, str], previous: dict[str, str]) -> tuple[list[str], list[str]]:
    """(ids to score, ids to carry over): a row is carried when the previous version scored the
    same id with the same hash."""
    score = [i for i, h in hashes.items() if previous.get(i) != h]
    carry = [i for i, h in hashes.items() if previous.get(i) == h]
    return score, carry


def parse_answer(text: str | None, schema: dict[str, Any]) -> tuple[dict[str, Any] | None, str | None]:
    """(fields, None) when ``text`` is JSON fitting ``schema``; (None, why) otherwise."""
    if text is None:
        return None, "no answer"
    try:
        value = json.loads(text)
    except ValueError as exc:
        return None, f"not JSON: {exc}"
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(value), key=lambda e: list(e.path))
    if errors:
        where = "/".join(str(p) for p in errors[0].path) or "(root)"
        return None, f"does not fit the schema at {where}: {errors[0].message}"
    if not isinstance(value, dict):
        return None, "the answer is not a JSON object"
    return value, None
