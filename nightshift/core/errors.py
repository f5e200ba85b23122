"""Typed errors. Only infrastructure raises; a bad request line becomes an error row instead.

HTTP status codes are chosen in ``nightshift.api`` and Prefect states in ``flows/``; here an
error only says what went wrong and where (file, line, field, value).
"""

from __future__ import annotations

from typing import Any


class NightshiftError(Exception):
    """Base class of every error nightshift raises on purpose."""


class BatchFileError(ValueError, NightshiftError):
    """The batch file as a whole cannot be processed (not JSONL, empty, over a limit).

    Raised before any work starts: one clear error instead of 50,000 error lines.
    """

    def __init__(self, message: str, *, uri: str | None = None, line: int | None = None) -> None:
        self.uri = uri
        self.line = line
        where = f"{uri}" if uri else "batch file"
        if line is not None:
            where += f", line {line}"
        super().__init__(f"{where}: {message}")

    @classmethod
    def empty(cls, uri: str) -> BatchFileError:
        """The file has no request lines at all."""
        return cls("the file is empty; a batch needs at least one request line", uri=uri)

    @classmethod
    def too_many_lines(cls, uri: str, limit: int) -> BatchFileError:
        """More request lines than the configured limit."""
        return cls(f"more than {limit:,} request lines (the limit per batch)", uri=uri, line=limit + 1)

    @classmethod
    def too_large(cls, uri: str, size: int, limit: int) -> BatchFileError:
        """More bytes than the configured limit."""
        return cls(f"{size:,} bytes is over the limit of {limit:,} bytes", uri=uri)

    @classmethod
    def not_jsonl(cls, uri: str, line: int, detail: str) -> BatchFileError:
        """Not a single line parses as a JSON object: this is not a JSONL batch file."""
        return cls(f"not a JSONL file: no line is a JSON object (first line: {detail})", uri=uri, line=line)


class InputSchemaError(ValueError, NightshiftError):
    """One request line does not fit the OpenAI batch request schema.

    Carries the 1-based line number, the field path and the offending value, so the error row
    can name them. Used as a value (turned into an error row), raised only by strict callers.
    """

    def __init__(
        self,
        message: str,
        *,
        line: int,
        code: str = "invalid_request",
        param: str | None = None,
        value: Any = None,
        custom_id: str | None = None,
    ) -> None:
        self.message = message
        self.line = line
        self.code = code
        self.param = param
        self.value = value
        self.custom_id = custom_id
        super().__init__(f"line {line}{f', field {param!r}' if param else ''}: {message}")

    @classmethod
    def from_pydantic(cls, exc: Any, *, line: int, prefix: str = "", custom_id: str | None = None) -> InputSchemaError:
        """Build from a ``pydantic.ValidationError``, naming the first failing field."""
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in (prefix, *first["loc"]) if p != "")
        return cls(
            f"{loc or 'line'}: {first['msg']}",
            line=line,
            param=loc or None,
            value=first.get("input"),
            custom_id=custom_id,
        )

    @classmethod
    def from_pandera(cls, check: str, column: str, value: Any, *, line: int, custom_id: str | None = None) -> InputSchemaError:
        """Build from one pandera failure case (a check that failed on one row's column)."""
        messages = {
            "not_nullable": f"{column} is required",
            "field_uniqueness": f"duplicate {column} {value!r}: custom_id must be unique in a batch",
        }
        message = messages.get(check) or f"{column}={value!r} fails check {check}"
        return cls(message, line=line, param=column, value=value, custom_id=custom_id)


class ConfigError(ValueError, NightshiftError):
    """A configuration file (the model catalogue...) is unreadable or invalid; the message names the
    file and the field."""


class ModelError(NightshiftError):
    """A model could not be found, built or converted."""


class EngineError(NightshiftError):
    """The inference engine failed as a whole (not one request): infrastructure, so it raises."""


class UnsupportedRequestError(ValueError, NightshiftError):
    """A valid request the engine that runs it cannot answer faithfully (a feature only the other
    engine has). Used as a value: the engine turns it into an error row with ``code`` and ``param``."""

    def __init__(self, message: str, *, code: str = "engine_unsupported", param: str | None = None) -> None:
        self.code = code
        self.param = param
        super().__init__(message)


class StorageError(NightshiftError):
    """Reading or writing batch artifacts failed or found inconsistent data."""


class OrchestrationError(NightshiftError):
    """Prefect could not be set up or asked to run something: a pool, deployment or automation is
    missing or was refused."""


class ScoringJobError(ValueError, NightshiftError):
    """A scoring job cannot run as configured: its table lacks a column, its prompt reads an
    undeclared one. Raised before any row is scored."""


class JobRequestError(ValueError, NightshiftError):
    """A job request the gateway refuses before anything runs or is fetched (names the field)."""

    def __init__(self, message: str, *, field: str, value: Any = None) -> None:
        self.field, self.value = field, value
        super().__init__(f"{field}: {message}")


class TierExceededError(NightshiftError):
    """A caller asked for a higher SLA tier than its key carries."""

    def __init__(self, requested: str, allowed: str) -> None:
        self.requested, self.allowed = requested, allowed
        super().__init__(f"sla_tier {requested!r} is above this key's tier {allowed!r}")


class EgressRefused(JobRequestError):
    """An outbound URL (webhook, https input) the gateway will not call: a scheme, credentials, or a
    host resolving to a loopback, private, link-local, multicast or reserved address.

    A ``JobRequestError``, so at create time it is a 400 naming ``param``; ``rule`` is a short
    machine-readable reason (``scheme``, ``credentials``, ``address``...). The message never holds
    the resolved address, server paths or library text.
    """

    def __init__(self, message: str, *, param: str, rule: str, value: Any = None) -> None:
        self.param, self.rule = param, rule
        super().__init__(message, field=param, value=value)


class EgressFailed(JobRequestError):
    """An allowed outbound request did not succeed: no connection, a timeout, an unwanted status
    (redirects are never followed), or a body over the size cap.

    ``outcome`` is short text safe to show a tenant (no library internals); ``retryable`` says
    whether trying again later may help (connection trouble, timeouts, 429 and 5xx), so an edge
    can answer 503 instead of 400.
    """

    def __init__(self, outcome: str, *, param: str, retryable: bool, status_code: int | None = None) -> None:
        self.param, self.outcome, self.retryable, self.status_code = param, outcome, retryable, status_code
        super().__init__(outcome, field=param)
