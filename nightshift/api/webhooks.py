"""Webhooks on a batch's terminal status, per Standard Webhooks (the scheme OpenAI's own webhooks follow).

A delivery POSTs an event shaped like OpenAI's batch events::

    {"object": "event", "id": "evt_...", "type": "batch.completed", "created_at": 1719168000,
     "data": {"id": "batch_..."}}

with the headers ``webhook-id`` (the event id: the same on every retry, so receivers can drop
duplicates), ``webhook-timestamp`` (when this attempt was signed) and ``webhook-signature``
(``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``). Receivers verify with the org's secret:
``openai.OpenAI().webhooks.unwrap(body, headers, secret=...)`` or
``standardwebhooks.Webhook(secret).verify(body, headers)``.

Secrets: ``new_webhook_secret()`` makes ``whsec_`` + base64 of 32 random bytes. Orgs created before
used a plain random string; such a secret's UTF-8 bytes are the HMAC key (exactly how the openai
client treats a secret without the prefix), and ``signing_secret`` shows it as the equivalent
``whsec_`` secret, which standardwebhooks-based receivers need. Nothing stored has to change.

Every send goes through ``nightshift.api.egress`` (address rules at send time, no redirects,
timeouts, size cap); a refused URL is never sent and never retried.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from standardwebhooks import Webhook
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from nightshift.api import egress
from nightshift.core.errors import EgressFailed, EgressRefused

SECRET_PREFIX = "whsec_"
#: Terminal batch status → OpenAI's event type.
BATCH_EVENT_TYPES = {
    "completed": "batch.completed",
    "failed": "batch.failed",
    "cancelled": "batch.cancelled",
    "expired": "batch.expired",
}


def new_webhook_secret() -> str:
    """A fresh ``whsec_`` secret: 32 random bytes, base64-encoded."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def signing_key(secret: str) -> bytes:
    """The HMAC key of a stored secret: the decoded base64 of a ``whsec_`` one, else its UTF-8 bytes.

    Raises:
        ValueError: a ``whsec_`` secret whose rest is not base64, or an empty secret.
    """
    if secret.startswith(SECRET_PREFIX):
        try:
            key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
        except binascii.Error:
            raise ValueError("a whsec_ webhook secret must be base64 after the prefix") from None
    else:
        key = secret.encode()
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


def signing_secret(secret: str) -> str:
    """The ``whsec_`` form of a stored secret (what to hand a receiver): unchanged when it has one."""
    return SECRET_PREFIX + base64.b64encode(signing_key(secret)).decode()


def batch_event(batch_id: str, status: str, *, created_at: int | None = None, event_id: str | None = None) -> dict[str, Any]:
    """The event announcing that a batch reached a terminal ``status``, shaped like OpenAI's.

    Raises:
        ValueError: ``status`` is not terminal (completed, failed, cancelled, expired).
    """
    if status not in BATCH_EVENT_TYPES:
        raise ValueError(f"batch status {status!r} sends no webhook; terminal ones do: {', '.join(BATCH_EVENT_TYPES)}")
    return {
        "object": "event",
        "id": event_id or f"evt_{secrets.token_hex(12)}",
        "type": BATCH_EVENT_TYPES[status],
        "created_at": int(datetime.now(UTC).timestamp()) if created_at is None else created_at,
        "data": {"id": batch_id},
    }


def encode_event(event: Mapping[str, Any]) -> bytes:
    """The exact bytes sent and signed for an event (compact JSON)."""
    return json.dumps(event, separators=(",", ":")).encode()


def signed_headers(secret: str, msg_id: str, body: bytes, *, timestamp: datetime | None = None) -> dict[str, str]:
    """The ``webhook-id``, ``webhook-timestamp`` and ``webhook-signature`` headers for ``body``."""
    when = timestamp or datetime.now(UTC)
    signature = Webhook(signing_key(secret)).sign(msg_id, when, body.decode())
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signature,
    }


def verify(secret: str, body: bytes | str, headers: Mapping[str, str]) -> Any:
    """The parsed event when ``headers`` sign ``body`` with ``secret`` within 5 minutes.

    Raises:
        standardwebhooks.WebhookVerificationError: a missing header, a stale timestamp or no match.
    """
    return Webhook(signing_key(secret)).verify(body, dict(headers))


@dataclass(frozen=True)
class Delivery:
    """How a webhook delivery ended: ``outcome`` is short text fit for the batch row and a tenant."""

    delivered: bool
    attempts: int
    outcome: str

    @property
    def summary(self) -> str:
        """``delivered HTTP 200`` / ``failed HTTP 500``: one line for the batch's webhook status."""
        return ("delivered " if self.delivered else "failed ") + self.outcome


class _Retryable(Exception):
    """A try worth repeating: connection trouble, a timeout, a 429 or a 5xx."""


async def deliver(
    url: str,
    secret: str,
    event: Mapping[str, Any],
    policy: egress.EgressPolicy,
    *,
    attempts: int = 5,
    backoff_seconds: float = 0.5,
    max_backoff_seconds: float = 30.0,
    param: str = "webhook_url",
    resolver: egress.Resolver | None = None,
) -> Delivery:
    """POST ``event`` to ``url``, signed, through the egress policy; retry with exponential backoff
    on connection errors, timeouts, 429 and 5xx. A 2xx delivers; a redirect or another 4xx fails at
    once; a refused URL fails with 0 attempts (nothing was sent). Never raises for the receiver's sake.
    """
    body = encode_event(event)
    msg_id = str(event["id"])
    try:
        signing_key(secret)
    except ValueError:
        return Delivery(False, 0, "the organization's webhook secret is unusable")
    made = 0
    outcome = ""
    try:
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(attempts),
            wait=wait_exponential(multiplier=backoff_seconds, max=max_backoff_seconds),
            retry=retry_if_exception_type(_Retryable),
            reraise=True,
        ):
            with attempt:
                headers = signed_headers(secret, msg_id, body)  # signed per try: the timestamp must be fresh
                made += 1
                try:
                    reply = await egress.post_json(url, body, policy, param=param, headers=headers, resolver=resolver)
                except EgressRefused as exc:
                    return Delivery(False, made - 1, f"refused: {exc.args[0].removeprefix(f'{param}: ')}")
                except EgressFailed as exc:
                    outcome = exc.outcome
                    if exc.retryable:
                        raise _Retryable(outcome) from None
                    return Delivery(False, made, outcome)
                status = reply.status_code
                outcome = f"HTTP {status}"
                if 200 <= status < 300:
                    return Delivery(True, made, outcome)
                if status == 429 or status >= 500:
                    raise _Retryable(outcome)
                if 300 <= status < 400:
                    outcome += " (redirects are not followed)"
                return Delivery(False, made, outcome)
    except _Retryable:
        pass
    return Delivery(False, made, outcome)
