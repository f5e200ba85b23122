"""The gateway's outer layer, as plain ASGI (it must see every request, including those that fail):
request ids, body limits enforced before the body is read, one access-log record and one metric
per request, rate-limit headers, and a 500 that names only the request id.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from nightshift.api import metrics
from nightshift.api.objects import error_body

log = logging.getLogger("nightshift.api")
access_log = logging.getLogger("nightshift.api.access")

REQUEST_ID_HEADER = "x-request-id"
#: A client's own request id is echoed only when it is this plain (no header injection, no log spam).
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class BodyTooLarge(Exception):
    """A streamed request body went past its limit (raised from ``receive``, answered with 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body is larger than {limit} bytes")
        self.limit = limit


class GatewayMiddleware:
    """Request id, body limit, access log, request metrics and the last-resort 500."""

    def __init__(self, app: ASGIApp, *, body_limit: Callable[[str, str], int]) -> None:
        self.app = app
        self.body_limit = body_limit  # (method, path) → bytes a request body may have

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        given = headers.get(REQUEST_ID_HEADER, "")
        request_id = given if _CLIENT_ID.match(given) else f"req_{uuid.uuid4().hex}"
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        sent: dict[str, Any] = {"status": None}

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                sent["status"] = message["status"]
                extra = [(REQUEST_ID_HEADER.encode(), request_id.encode())]
                budget = state.get("rate_budget")
                if budget is not None:
                    extra += [(k.encode(), v.encode()) for k, v in budget.headers().items()]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        limit = self.body_limit(scope["method"], scope["path"])
        declared = headers.get("content-length")
        try:
            if declared is not None and (not declared.isdigit() or int(declared) > limit):
                # Refused from the header alone: not one byte of the body is read.
                await _respond(send_with_headers, 413, f"request body is larger than {limit} bytes", "request_too_large")
                return
            await self.app(scope, _limited(receive, limit), send_with_headers)
        except BodyTooLarge as exc:
            if sent["status"] is None:
                await _respond(send_with_headers, 413, str(exc), "request_too_large")
        except Exception:  # noqa: BLE001 - the last resort: logged with its id, counted, never shown
            log.exception("unhandled error in %s %s (request id %s)", scope["method"], scope["path"], request_id)
            if sent["status"] is None:
                message = f"internal error; quote request id {request_id} to the operator"
                await _respond(send_with_headers, 500, message, "internal_error", type_="server_error")
            else:
                sent["status"] = 500
        finally:
            self._record(scope, sent["status"] or 500, started, request_id)

    def _record(self, scope: Scope, status: int, started: float, request_id: str) -> None:
        route = getattr(scope.get("route"), "path", "unmatched")  # the template, so ids do not explode the label set
        metrics.REQUESTS.labels(method=scope["method"], route=route, status=str(status)).inc()
        if status == 429:
            metrics.RATE_LIMITED.inc()
        ms = round((time.perf_counter() - started) * 1000, 1)
        client = scope.get("client")
        # One record per request; with NIGHTSHIFT_LOG_FORMAT=json the fields are the JSON keys.
        access_log.info(
            "%s %s %s %.1fms",
            scope["method"],
            scope["path"],
            status,
            ms,
            extra={
                "method": scope["method"],
                "path": scope["path"],
                "route": route,
                "status": status,
                "ms": ms,
                "client": client[0] if client else None,
                "request_id": request_id,
            },
        )


def _limited(receive: Receive, limit: int) -> Receive:
    """``receive`` that raises ``BodyTooLarge`` once the body passes ``limit`` bytes (a body sent
    without Content-Length, or longer than it said, stops there)."""
    seen = 0

    async def receive_limited() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(limit)
        return message

    return receive_limited


async def _respond(send: Send, status: int, message: str, code: str, *, type_: str = "invalid_request_error") -> None:
    body = json.dumps(error_body(message, type_=type_, code=code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
