"""Validate a batch file: file-level limits fail fast, line-level problems become error rows.

Three passes, cheapest first, each naming the line and field it rejects:
1. the file: size, line count, "is this JSONL at all" (raises ``BatchFileError``);
2. the frame: a pandera schema over every parsed line (id present and unique, method, url, body
   is an object), collected lazily so one pass reports every bad row;
3. the body: the batch endpoint, fields nightshift does not honour (refused, never dropped), the
   pydantic model of the line's endpoint, the model name, the prompt length.

A batch runs on one model (OpenAI: one model per batch file): the catalogue id its first line
naming a known model names (``batch_model``); a line naming no model runs on it too.

``validate_lines`` takes a whole file's lines; a file of any size is validated in bounded memory
by ``survey_lines`` (the file-level pass, no line kept) then ``validate_windows`` (the other two
passes, a window of lines at a time), with the same answers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from types import SimpleNamespace
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd
import pandera.pandas as pa
from pydantic import ValidationError

from nightshift.core.catalogue import Catalogue
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


def _is_post(value: Any) -> bool:
    return bool(value == "POST")


def _is_endpoint(value: Any) -> bool:
    return value in _ENDPOINTS


def _is_object(value: Any) -> bool:
    return isinstance(value, dict)


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
        "method": pa.Column(object, nullable=False, checks=pa.Check(_is_post, element_wise=True, name="method must be 'POST'")),
        "url": pa.Column(
            object,
            nullable=False,
            checks=pa.Check(_is_endpoint, element_wise=True, name=f"url must be one of {', '.join(_ENDPOINTS)}"),
        ),
        "body": pa.Column(
            object,
            nullable=False,
            checks=pa.Check(_is_object, element_wise=True, name="body must be a JSON object"),
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


def _parse_line(number: int, text: str) -> dict[str, Any] | InputSchemaError:
    """The JSON object of one line, or the error naming why it is none."""
    if isinstance(text, UndecodableLine):
        return InputSchemaError(text.reason, line=number, code="invalid_encoding")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return InputSchemaError(f"invalid JSON: {exc.msg} at column {exc.colno}", line=number, code="invalid_json")
    if not isinstance(obj, dict):
        return InputSchemaError(
            f"a request line must be a JSON object, got {type(obj).__name__}", line=number, code="invalid_json"
        )
    return obj


def _parse_json(lines: Iterable[tuple[int, str]]) -> tuple[list[dict[str, Any]], list[InputSchemaError]]:
    parsed: list[dict[str, Any]] = []
    errors: list[InputSchemaError] = []
    for number, text in lines:
        obj = _parse_line(number, text)
        if isinstance(obj, InputSchemaError):
            errors.append(obj)
        else:
            parsed.append({"__line__": number, **obj})
    return parsed, errors


class SeenIds:
    """The ``custom_id`` s of the windows validated so far, for uniqueness across windows.

    Kept as 8-byte BLAKE2b digests in one sorted numpy array: 8 bytes a line (8 MB at a million
    lines, twice that for a moment while a window joins), not the ids themselves. Two different ids
    share a digest with odds of about n²/2⁶⁵ (3·10⁻⁸ at a million lines); the later one would then
    be reported as a duplicate.
    """

    def __init__(self) -> None:
        self._sorted: npt.NDArray[np.uint64] = np.empty(0, dtype=np.uint64)

    @staticmethod
    def digest(custom_id: str) -> int:
        """The 64-bit digest ``custom_id`` is known by."""
        # surrogatepass: a JSON string may hold a lone surrogate (\ud800), which UTF-8 cannot encode.
        raw = hashlib.blake2b(custom_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        return int.from_bytes(raw, "little")

    @classmethod
    def digests(cls, custom_ids: Iterable[str]) -> npt.NDArray[np.uint64]:
        """The digests of ``custom_ids``, in order."""
        return np.fromiter((cls.digest(cid) for cid in custom_ids), dtype=np.uint64)

    def contains(self, digests: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
        """For each digest, whether an earlier window had it."""
        if not len(self._sorted) or not len(digests):
            return np.zeros(len(digests), dtype=np.bool_)
        at = np.minimum(np.searchsorted(self._sorted, digests), len(self._sorted) - 1)
        return np.asarray(self._sorted[at] == digests, dtype=np.bool_)

    def add(self, digests: npt.NDArray[np.uint64]) -> None:
        """Remember ``digests`` (a stable sort of a sorted array and one window is about linear)."""
        if len(digests):
            self._sorted = np.sort(np.concatenate([self._sorted, digests]), kind="stable")


def _frame_errors(rows: list[dict[str, Any]], seen: SeenIds | None = None) -> dict[int, InputSchemaError]:
    """Run the pandera schema; map each failing row (by position) to its first error.

    With ``seen`` (the ids of the windows before this one), a row repeating one of them is a
    ``duplicate_custom_id`` as if the whole file were one frame (``custom_id`` is checked first),
    and this window's ids join ``seen``.
    """
    found = _schema_errors(rows)
    if seen is not None:
        ids = [(pos, row["custom_id"]) for pos, row in enumerate(rows) if _is_nonempty_str(row.get("custom_id"))]
        digests = SeenIds.digests(cid for _, cid in ids)
        for (pos, cid), repeated in zip(ids, seen.contains(digests), strict=True):
            if repeated:
                found[pos] = _duplicate(cid, line=rows[pos]["__line__"], custom_id=cid)
        seen.add(digests)
    return found


def _duplicate(value: Any, *, line: int, custom_id: str | None) -> InputSchemaError:
    error = InputSchemaError.from_pandera("field_uniqueness", "custom_id", value, line=line, custom_id=custom_id)
    error.code = "duplicate_custom_id"
    return error


def _schema_errors(rows: list[dict[str, Any]]) -> dict[int, InputSchemaError]:
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
        if check == "field_uniqueness":
            found[pos] = _duplicate(case.failure_case, line=row["__line__"], custom_id=cid)
        elif check == "not_nullable":
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
    return found


def batch_model(lines: Iterable[tuple[int, str]], catalogue: Catalogue) -> str | None:
    """The model id a batch runs on: the one named by its first line (a JSON object) whose
    ``body.model`` is a catalogue id; None when no line names one (the catalogue default serves it).

    Reads lines only until that one, so the flow can pick (and start) the engine from the file's
    head while the whole file is validated.
    """
    known = set(catalogue.ids())
    for _, text in lines:
        if isinstance(text, UndecodableLine):
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            continue
        model = _named_model(obj, known) if isinstance(obj, dict) else None
        if model is not None:
            return model
    return None


def _named_model(obj: dict[str, Any], known: set[str]) -> str | None:
    """The catalogue id a request line's ``body.model`` names, if it names one."""
    body = obj.get("body")
    model = body.get("model") if isinstance(body, dict) else None
    return model if isinstance(model, str) and model in known else None


def _model_error(model: str, served: str, catalogue: Catalogue | None, *, line: int, custom_id: str) -> InputSchemaError:
    """The error of a line naming a model the batch does not run on: unknown, or another catalogue model."""
    if catalogue is None or catalogue.resolve(model) is None:
        # Ids only, never where a model's weights are; the list of ids is public (GET /v1/models).
        where = "GET /v1/models lists the models served here" if catalogue else f"it is served by {served!r}"
        message = f"the model {model[:128]!r} does not exist in this batch; {where}"
        code = "model_not_found"
    else:
        message = f"the model {model!r} differs from the batch's model {served!r}; a batch runs one model"
        code = "model_mismatch"
    return InputSchemaError(message, line=line, param="model", value=model[:128], custom_id=custom_id, code=code)


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
    catalogue: Catalogue | None = None,
) -> ValidationResult:
    """Validate numbered request lines; every line ends in ``valid`` or ``errors``, never both.

    Args:
        endpoint: The batch's endpoint; lines for another URL are errors. ``None`` takes the URL
            of the first well-formed line, as a batch serves one endpoint (one engine kind).
        max_model_len: With ``count_tokens``, rejects prompts the model cannot hold.
        served_model: The batch's model id; a line naming another model is an error, never
            answered by this one, and a line naming none is given it (``body.model``). ``None``
            skips the check, or with ``catalogue`` takes ``batch_model``'s (else the default).
        catalogue: The models served: a line naming an id not in it is ``model_not_found``, one
            naming another of its models ``model_mismatch`` (one model per batch).

    Raises:
        BatchFileError: No line at all is a JSON object (the file is not JSONL).
    """
    parsed, errors = _parse_json(lines)
    if not parsed:
        first_line, _ = lines[0]
        raise BatchFileError.not_jsonl(uri, first_line, errors[0].message if errors else "empty")
    if catalogue is not None and served_model is None:
        served_model = batch_model(lines, catalogue) or catalogue.default
    result = ValidationResult(endpoint=endpoint, total_lines=len(lines))
    _check_rows(
        parsed,
        errors,
        _frame_errors(parsed),
        result,
        max_model_len=max_model_len,
        count_tokens=count_tokens,
        served_model=served_model,
        catalogue=catalogue,
    )
    return result


def _check_rows(
    parsed: list[dict[str, Any]],
    errors: list[InputSchemaError],
    frame_errors: dict[int, InputSchemaError],
    result: ValidationResult,
    *,
    max_model_len: int | None,
    count_tokens: TokenCounter | None,
    served_model: str | None,
    catalogue: Catalogue | None,
) -> None:
    """The body checks of the rows that parsed: each ends in ``result.valid`` or ``result.errors``
    (with ``errors``, the lines that did not parse), errors in line order."""
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
            errors.append(_model_error(body.model, served_model, catalogue, line=number, custom_id=cid))
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
        # The engine answers as the line's model: a line naming none runs on the batch's.
        request_body = req.body if body.model is not None or served_model is None else {**req.body, "model": served_model}
        result.valid.append(ValidRequest(line=number, custom_id=cid, url=req.url, body=request_body, prompt_tokens=prompt_tokens))
    result.errors = sorted(errors, key=lambda e: e.line)


@dataclass
class Survey:
    """What one cheap pass over a whole batch file learns before any line is validated: enough to
    name the batch's version (its endpoint) and model, and the file-level limits checked."""

    lines: int
    endpoint: Endpoint | None
    model: str | None = None  # ``batch_model``'s answer (asked only with a catalogue)


def _well_formed_url(obj: dict[str, Any], earlier: set[int]) -> Endpoint | None:
    """The URL of a line ``validate_lines`` would take the batch endpoint from (it passes the frame
    schema and the envelope model), else None; ``earlier`` holds the digests of the ids before it."""
    cid = obj.get("custom_id")
    if not (isinstance(cid, str) and _is_nonempty_str(cid)):
        return None
    digest = SeenIds.digest(cid)
    if digest not in earlier and _is_post(obj.get("method")) and _is_endpoint(obj.get("url")) and _is_object(obj.get("body")):
        try:
            return BatchRequestInput.model_validate(obj).url
        except ValidationError:
            pass
    earlier.add(digest)
    return None


def survey_lines(
    lines: Iterable[tuple[int, str]],
    *,
    uri: str,
    max_lines: int,
    endpoint: Endpoint | None = None,
    catalogue: Catalogue | None = None,
) -> Survey:
    """Count the lines of a batch file read as it streams and find its endpoint and model, holding
    no line: the first pass of ``validate_windows``, with the same answers as ``read_lines`` and
    ``validate_lines`` on the whole file.

    Lines are parsed only until the endpoint (unless ``endpoint`` fixes it) and the model are known.
    The ids before the endpoint's line are kept as digests in a set (about 100 bytes each), to see
    a duplicate as the frame would: nothing for a usual file, whose first line gives the endpoint.

    Raises:
        BatchFileError: The file is empty, holds more than ``max_lines`` lines (raised as soon as
            the count passes it), or no line is a JSON object.
    """
    known = set(catalogue.ids()) if catalogue is not None else None
    model: str | None = None
    first_error: InputSchemaError | None = None
    objects = False
    earlier: set[int] = set()
    count = 0
    for number, text in lines:
        count += 1
        if count > max_lines:
            raise BatchFileError.too_many_lines(uri, max_lines)
        if objects and endpoint is not None and (known is None or model is not None):
            continue
        obj = _parse_line(number, text)
        if isinstance(obj, InputSchemaError):
            first_error = first_error or obj
            continue
        objects = True
        if known is not None and model is None:
            model = _named_model(obj, known)
        if endpoint is None:
            endpoint = _well_formed_url(obj, earlier)
            if endpoint is not None:
                earlier.clear()
    if count == 0:
        raise BatchFileError.empty(uri)
    if not objects:
        assert first_error is not None  # every line failed to parse
        raise BatchFileError.not_jsonl(uri, first_error.line or 1, first_error.message)
    return Survey(lines=count, endpoint=endpoint, model=model)


def validate_windows(
    lines: Iterable[tuple[int, str]],
    *,
    survey: Survey,
    window: int,
    max_model_len: int | None = None,
    count_tokens: TokenCounter | None = None,
    served_model: str | None = None,
    catalogue: Catalogue | None = None,
) -> Iterator[ValidationResult]:
    """``validate_lines`` over a file read as it streams, ``window`` lines at a time, in bounded memory.

    The second pass after ``survey_lines``, whose endpoint and model every window is held to. Each
    result holds one window's valid requests and errors in line order, so writing them as they come
    keeps the file's order; together they are what ``validate_lines`` says of the whole file. A
    ``custom_id`` repeating one of an earlier window is a ``duplicate_custom_id`` (see ``SeenIds``
    for the cost).
    """
    if catalogue is not None and served_model is None:
        served_model = survey.model or catalogue.default
    seen = SeenIds()
    numbered = iter(lines)
    while batch := list(islice(numbered, window)):
        parsed, errors = _parse_json(batch)
        result = ValidationResult(endpoint=survey.endpoint, total_lines=len(batch))
        frame_errors = _frame_errors(parsed, seen) if parsed else {}
        _check_rows(
            parsed,
            errors,
            frame_errors,
            result,
            max_model_len=max_model_len,
            count_tokens=count_tokens,
            served_model=served_model,
            catalogue=catalogue,
        )
        yield result
