"""Validate a batch file: file-level limits fail fast, line-level problems become error rows.

Three passes, cheapest first, each naming the line and field it rejects:
1. the file: size, line count, "is this JSONL at all" (raises ``BatchFileError``);
2. the frame: a pandera schema over every parsed line (id present and unique, method, url, body
   is an object), collected lazily so one pass reports every bad row;
3. the body: the batch endpoint, fields nightshift does not honour (refused, never dropped), the
   pydantic model of the line's endpoint, the model name, the prompt length.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pandera.pandas as pa
from pydantic import ValidationError

from nightshift.core.errors import BatchFileError, InputSchemaError
from nightshift.core.jsonl import UndecodableLine, split_lines
from nightshift.core.protocol import (
    REFUSED_FIELDS,
    BatchRequestInput,
    ChatCompletionRequest,
    Endpoint,
    ResponsesRequest,
    ValidRequest,
    refusal_message,
)

#: Counts the prompt tokens of a request body for an endpoint (an engine adapter provides it).
TokenCounter = Callable[[Endpoint, dict[str, Any]], int]

_ENDPOINTS = [e.value for e in Endpoint]

#: The body field holding the prompt, named by a context-length error.
_PROMPT_PARAM: dict[type, str] = {ChatCompletionRequest: "body.messages", ResponsesRequest: "body.input"}


def _is_nonempty_str(value: Any) -> bool:
    return isinstance(value, str) and value != ""


#: The frame-level schema of a batch: one row per JSON line. Element-wise checks (not dtypes) so
#: that a wrong type fails that row, not the column.
BATCH_SCHEMA = pa.DataFrameSchema(
    {
        "custom_id": pa.Column(
            object,
            nullable=False,
            unique=True,
            report_duplicates="exclude_first",
            checks=pa.Check(_is_nonempty_str, element_wise=True, name="custom_id must be a non-empty string"),
        ),
        "method": pa.Column(
            object, nullable=False, checks=pa.Check(lambda v: v == "POST", element_wise=True, name="method must be 'POST'")
        ),
        "url": pa.Column(
            object,
            nullable=False,
            checks=pa.Check(lambda v: v in _ENDPOINTS, element_wise=True, name=f"url must be one of {', '.join(_ENDPOINTS)}"),
        ),
        "body": pa.Column(
            object,
            nullable=False,
            checks=pa.Check(lambda v: isinstance(v, dict), element_wise=True, name="body must be a JSON object"),
        ),
    },
    strict=False,
    coerce=False,
)


@dataclass
class ValidationResult:
    """The requests that passed, the error rows of those that did not, and the batch endpoint."""

    endpoint: Endpoint | None
    valid: list[ValidRequest] = field(default_factory=list)
    errors: list[InputSchemaError] = field(default_factory=list)
    total_lines: int = 0

    @property
    def counts(self) -> dict[str, int]:
        """``{"total", "valid", "invalid"}`` line counts."""
        return {"total": self.total_lines, "valid": len(self.valid), "invalid": len(self.errors)}


def read_lines(data: bytes, *, uri: str, max_lines: int, max_bytes: int) -> list[tuple[int, str]]:
    """Split a batch file into ``(line_number, text)`` pairs, enforcing the file-level limits.

    Blank lines (a trailing newline, spacing) are not requests and are skipped, but keep their
    numbers so that every error names the line an editor shows.
    """
    if len(data) > max_bytes:
        raise BatchFileError.too_large(uri, len(data), max_bytes)
    # The gateway counts uploads by the same rule (core.jsonl): a bad line is one error line.
    lines = list(split_lines(data))
    if not lines:
        raise BatchFileError.empty(uri)
    if len(lines) > max_lines:
        raise BatchFileError.too_many_lines(uri, max_lines)
    return lines


def _parse_json(lines: Iterable[tuple[int, str]]) -> tuple[list[dict[str, Any]], list[InputSchemaError]]:
    parsed: list[dict[str, Any]] = []
    errors: list[InputSchemaError] = []
    for number, text in lines:
        if isinstance(text, UndecodableLine):
            errors.append(InputSchemaError(text.reason, line=number, code="invalid_encoding"))
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            errors.append(InputSchemaError(f"invalid JSON: {exc.msg} at column {exc.colno}", line=number, code="invalid_json"))
            continue
        if not isinstance(obj, dict):
            errors.append(
                InputSchemaError(
                    f"a request line must be a JSON object, got {type(obj).__name__}", line=number, code="invalid_json"
                )
            )
            continue
        parsed.append({"__line__": number, **obj})
    return parsed, errors


def _frame_errors(rows: list[dict[str, Any]]) -> dict[int, InputSchemaError]:
    """Run the pandera schema; map each failing row (by position) to its first error."""
    frame = pd.DataFrame.from_records(rows, columns=["__line__", "custom_id", "method", "url", "body"])
    frame = frame.astype(object).where(frame.notna(), None)
    try:
        BATCH_SCHEMA.validate(frame, lazy=True)
        return {}
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
    found: dict[int, InputSchemaError] = {}
    # Order the failures by column so a row missing several fields is reported for the first.
    order = {name: i for i, name in enumerate(BATCH_SCHEMA.columns)}
    cases = cases.dropna(subset=["index"]).assign(_o=lambda d: d["column"].map(order)).sort_values(["index", "_o"])
    for case in cases.itertuples():
        pos = int(case.index)
        if pos in found:
            continue
        row = rows[pos]
        cid = row.get("custom_id") if _is_nonempty_str(row.get("custom_id")) else None
        check = str(case.check)
        if check in ("not_nullable", "field_uniqueness"):
            found[pos] = InputSchemaError.from_pandera(
                check, str(case.column), case.failure_case, line=row["__line__"], custom_id=cid
            )
        else:
            found[pos] = InputSchemaError(
                f"{check} (got {case.failure_case!r})",
                line=row["__line__"],
                param=str(case.column),
                value=case.failure_case,
                custom_id=cid,
            )
        if check == "field_uniqueness":
            found[pos].code = "duplicate_custom_id"
    return found


def _body_error(exc: ValidationError, *, line: int, custom_id: str) -> InputSchemaError:
    """A body's first problem: a missing or mistyped field (``invalid_request``) before a top-level
    field nightshift does not honour (``unsupported_parameter``, naming it)."""
    problems = exc.errors()
    # A refused field (``store: true``) is refused with its reason, like an undeclared one.
    refused = [p for p in problems if len(p["loc"]) == 1 and (p["type"] == "extra_forbidden" or p["loc"][0] in REFUSED_FIELDS)]
    wrong = [p for p in problems if p not in refused]
    if wrong:
        return InputSchemaError.from_pydantic(
            SimpleNamespace(errors=lambda: wrong), line=line, prefix="body", custom_id=custom_id
        )
    field = str(refused[0]["loc"][0])
    return InputSchemaError(
        refusal_message(field), line=line, param=field[:64], custom_id=custom_id, code="unsupported_parameter"
    )


def validate_lines(
    lines: list[tuple[int, str]],
    *,
    uri: str = "batch",
    endpoint: Endpoint | None = None,
    max_model_len: int | None = None,
    count_tokens: TokenCounter | None = None,
    served_model: str | None = None,
) -> ValidationResult:
    """Validate numbered request lines; every line ends in ``valid`` or ``errors``, never both.

    Args:
        endpoint: The batch's endpoint; lines for another URL are errors. ``None`` takes the URL
            of the first well-formed line, as a batch serves one endpoint (one engine kind).
        max_model_len: With ``count_tokens``, rejects prompts the model cannot hold.
        served_model: The batch's model name; a line naming another model is an error
            (``model_not_found``), never answered by this one. ``None`` skips the check.

    Raises:
        BatchFileError: No line at all is a JSON object (the file is not JSONL).
    """
    parsed, errors = _parse_json(lines)
    if not parsed:
        first_line, _ = lines[0]
        raise BatchFileError.not_jsonl(uri, first_line, errors[0].message if errors else "empty")
    frame_errors = _frame_errors(parsed)
    result = ValidationResult(endpoint=endpoint, total_lines=len(lines))
    for pos, row in enumerate(parsed):
        number = row.pop("__line__")
        if pos in frame_errors:
            errors.append(frame_errors[pos])
            continue
        cid = row["custom_id"]
        try:
            req = BatchRequestInput.model_validate(row)
        except ValidationError as exc:
            errors.append(InputSchemaError.from_pydantic(exc, line=number, custom_id=cid))
            continue
        if result.endpoint is None:
            result.endpoint = req.url
        if req.url is not result.endpoint:
            errors.append(
                InputSchemaError(
                    f"url {req.url.value!r} differs from the batch endpoint {result.endpoint.value!r}; "
                    "a batch serves one endpoint",
                    line=number,
                    param="url",
                    value=req.url.value,
                    custom_id=cid,
                    code="url_mismatch",
                )
            )
            continue
        try:
            body = req.parsed_body()
        except ValidationError as exc:
            errors.append(_body_error(exc, line=number, custom_id=cid))
            continue
        if served_model is not None and body.model is not None and body.model != served_model:
            errors.append(
                InputSchemaError(
                    f"the model {body.model[:128]!r} does not exist in this batch; it is served by {served_model!r}",
                    line=number,
                    param="model",
                    value=body.model,
                    custom_id=cid,
                    code="model_not_found",
                )
            )
            continue
        prompt_tokens = None
        if count_tokens is not None and max_model_len is not None:
            if isinstance(body, ResponsesRequest):
                # The model sees a Responses input as the chat conversation it renders to.
                prompt_tokens = count_tokens(Endpoint.CHAT_COMPLETIONS, {"messages": body.chat_messages()})
            else:
                prompt_tokens = count_tokens(req.url, req.body)
            budget = body.token_budget() if hasattr(body, "token_budget") else None
            needed = prompt_tokens + (budget or 0) if req.url.is_generative else prompt_tokens
            if prompt_tokens >= max_model_len or needed > max_model_len:
                asked = f" plus {budget} completion tokens" if budget else ""
                errors.append(
                    InputSchemaError(
                        f"prompt is {prompt_tokens} tokens{asked}; the model's maximum context length is {max_model_len} tokens",
                        line=number,
                        param=_PROMPT_PARAM.get(type(body), "body"),
                        custom_id=cid,
                        code="context_length_exceeded",
                    )
                )
                continue
        result.valid.append(ValidRequest(line=number, custom_id=cid, url=req.url, body=req.body, prompt_tokens=prompt_tokens))
    result.errors = sorted(errors, key=lambda e: e.line)
    return result
