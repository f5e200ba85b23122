"""HTTP status codes for nightshift's typed errors, in OpenAI's error envelope.

This is the one place the gateway turns an exception into a status: routes raise ``ApiError`` or
a domain error, and the handlers below render it. Messages name the field and the rule; a handler
never passes on a server path or a library's text (an unexpected error becomes a 500 that names
only the request id, and its detail goes to the log).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from nightshift.api.auth import AuthError, RateLimited
from nightshift.api.db import NotFound
from nightshift.api.objects import error_body
from nightshift.core.errors import BatchFileError, JobRequestError, NightshiftError, TierExceededError

log = logging.getLogger("nightshift.api")


class ApiError(NightshiftError):
    """An error with an HTTP status, raised by the routes and rendered as OpenAI's error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        type_: str = "invalid_request_error",
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param, self.type = status, message, code, param, type_
        self.headers = headers

    @classmethod
    def not_found(cls, kind: str, object_id: str, param: str) -> ApiError:
        """OpenAI's 404 (another org's object is not found either)."""
        return cls(404, f"No such {kind} object: {object_id[:64]}", code="not_found", param=param)

    @classmethod
    def too_large(cls, limit: int) -> ApiError:
        """413: the body is over the limit (said before it is read)."""
        return cls(413, f"request body is larger than {limit} bytes", code="request_too_large")


def _json(status: int, message: str, *, headers: dict[str, str] | None = None, **kw: str | None) -> JSONResponse:
    return JSONResponse(error_body(message, **kw), status_code=status, headers=headers)  # type: ignore[arg-type]


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that render nightshift's errors as OpenAI's envelope and status."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _json(exc.status, exc.message, headers=exc.headers, type_=exc.type, code=exc.code, param=exc.param)

    @app.exception_handler(AuthError)
    async def _auth_error(_: Request, exc: AuthError) -> JSONResponse:
        return _json(401, str(exc), type_="invalid_request_error", code="invalid_api_key")

    @app.exception_handler(RateLimited)
    async def _rate_limited(_: Request, exc: RateLimited) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after), **(exc.budget.headers() if exc.budget else {})}
        return _json(429, str(exc), headers=headers, type_="requests", code="rate_limit_exceeded")

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return _json(404, str(exc), code="not_found")

    @app.exception_handler(BatchFileError)
    async def _bad_file(_: Request, exc: BatchFileError) -> JSONResponse:
        return _json(400, str(exc), code="invalid_file", param="file")

    @app.exception_handler(JobRequestError)
    async def _bad_job(_: Request, exc: JobRequestError) -> JSONResponse:
        return _json(400, str(exc), code="invalid_request", param=exc.field)

    @app.exception_handler(TierExceededError)
    async def _tier_exceeded(_: Request, exc: TierExceededError) -> JSONResponse:
        return _json(403, str(exc), type_="permission_error", code="tier_exceeded", param="sla_tier")

    @app.exception_handler(RequestValidationError)
    async def _bad_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ())]
        param = ".".join(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc) or None
        # pydantic's short message ("Field required", "Input should be a valid integer") only: its
        # input echo and URLs stay out.
        return _json(400, f"{param}: {first.get('msg', 'invalid request')}", param=param)
