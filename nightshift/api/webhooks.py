"""Webhooks on a batch's terminal status: signed, retried with backoff, outcome recorded.

The signature is HMAC-SHA256 over ``"{timestamp}.{body}"`` with the org's webhook secret, sent
as ``X-Nightshift-Signature: v1=<hex>`` beside ``X-Nightshift-Timestamp``; binding the timestamp
lets a receiver refuse replays of an old delivery (``verify`` checks both).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import httpx
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

SIGNATURE_HEADER = "X-Nightshift-Signature"
TIMESTAMP_HEADER = "X-Nightshift-Timestamp"


class _Retryable(Exception):
    """A delivery worth retrying: connection trouble, a timeout, a 429 or a 5xx."""


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``v1=`` signature of ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(
    secret: str, timestamp: str | int, body: bytes, signature: str, *, tolerance: int = 300, now: float | None = None
) -> bool:
    """True when ``signature`` is ours for this body and timestamp, and the timestamp is recent."""
    try:
        ts = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs((now or time.time()) - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


async def deliver(
    url: str, secret: str, event: dict[str, Any], *, attempts: int = 5, max_wait: float = 30.0
) -> tuple[bool, int, str]:
    """POST ``event`` to ``url``; returns (delivered, attempts made, last outcome)."""
    body = json.dumps(event, separators=(",", ":")).encode()
    made, outcome = 0, ""
    try:
        async with httpx.AsyncClient(timeout=10) as client:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(attempts),
                wait=wait_exponential(multiplier=0.5, max=max_wait),
                retry=retry_if_exception_type(_Retryable),
                reraise=True,
            ):
                with attempt:
                    made += 1
                    ts = int(time.time())
                    headers = {
                        "Content-Type": "application/json",
                        TIMESTAMP_HEADER: str(ts),
                        SIGNATURE_HEADER: sign(secret, ts, body),
                    }
                    try:
                        response = await client.post(url, content=body, headers=headers)
                    except httpx.HTTPError as exc:
                        outcome = f"error: {exc}"
                        raise _Retryable(outcome) from exc
                    outcome = f"HTTP {response.status_code}"
                    if response.status_code == 429 or response.status_code >= 500:
                        raise _Retryable(outcome)
        return 200 <= int(outcome.split()[-1]) < 300, made, outcome
    except _Retryable:
        return False, made, outcome
