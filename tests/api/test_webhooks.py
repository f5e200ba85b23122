"""Webhook delivery: Standard Webhooks signatures checked by independent verifiers (the openai
client's and the standardwebhooks package's), OpenAI's event shape, retries, refusals.

Receivers are real HTTP servers on 127.0.0.1, allow-listed for the test like an operator would.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import socket
from collections.abc import Iterator

import openai
import pytest
import standardwebhooks
from openai.types.webhooks import BatchCompletedWebhookEvent, BatchFailedWebhookEvent

from nightshift.api.egress import EgressPolicy
from nightshift.api.webhooks import (
    BATCH_EVENT_TYPES,
    batch_event,
    deliver,
    encode_event,
    new_webhook_secret,
    signed_headers,
    signing_secret,
    verify,
)
from tests.api.loopback import LoopbackServer, Reply

LOOPBACK = EgressPolicy(allow_http=True, allowed_hosts=("127.0.0.1",), timeout_seconds=2)
FAST = {"backoff_seconds": 0.01, "max_backoff_seconds": 0.05}


@pytest.fixture
def receiver() -> Iterator[LoopbackServer]:
    with LoopbackServer().running() as running:
        yield running


def openai_unwrap(secret: str, body: bytes, headers: dict[str, str]):
    """The official openai client's verification, as a receiver of OpenAI webhooks would call it."""
    return openai.OpenAI(api_key="unused", base_url="http://127.0.0.1:9").webhooks.unwrap(body, headers, secret=secret)


def test_a_delivery_is_verified_by_the_openai_client_and_standardwebhooks(receiver):
    receiver.script["/hook"] = [Reply(200)]
    secret = new_webhook_secret()
    event = batch_event("batch_abc", "completed")
    outcome = asyncio.run(deliver(receiver.url("/hook"), secret, event, LOOPBACK, **FAST))
    assert (outcome.delivered, outcome.attempts, outcome.outcome, outcome.summary) == (True, 1, "HTTP 200", "delivered HTTP 200")
    (hit,) = receiver.hits
    unwrapped = openai_unwrap(secret, hit.body, hit.headers)
    assert isinstance(unwrapped, BatchCompletedWebhookEvent)
    assert (unwrapped.id, unwrapped.type, unwrapped.data.id, unwrapped.object) == (
        event["id"],
        "batch.completed",
        "batch_abc",
        "event",
    )
    assert standardwebhooks.Webhook(secret).verify(hit.body, hit.headers) == event
    assert hit.headers["webhook-id"] == event["id"] and hit.headers["content-type"] == "application/json"
    with pytest.raises(openai.InvalidWebhookSignatureError):
        openai_unwrap(new_webhook_secret(), hit.body, hit.headers)
    with pytest.raises(openai.InvalidWebhookSignatureError):
        openai_unwrap(secret, hit.body.replace(b"batch_abc", b"batch_xyz"), hit.headers)


def test_secrets_stored_before_whsec_still_verify(receiver):
    """An org's old plain secret: openai verifies with it as is; standardwebhooks with its whsec_ form."""
    receiver.script["/hook"] = [Reply(204)]
    legacy = secrets.token_urlsafe(32)
    outcome = asyncio.run(deliver(receiver.url("/hook"), legacy, batch_event("batch_old", "failed"), LOOPBACK, **FAST))
    assert outcome.delivered
    (hit,) = receiver.hits
    assert isinstance(openai_unwrap(legacy, hit.body, hit.headers), BatchFailedWebhookEvent)
    whsec = signing_secret(legacy)
    assert whsec.startswith("whsec_") and base64.b64decode(whsec[6:]) == legacy.encode()
    assert standardwebhooks.Webhook(whsec).verify(hit.body, hit.headers)["data"] == {"id": "batch_old"}
    assert signing_secret(whsec) == whsec


def test_new_secrets_and_our_own_verify():
    secret = new_webhook_secret()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32 and secret != new_webhook_secret()
    body = encode_event(batch_event("batch_1", "expired"))
    headers = signed_headers(secret, "evt_1", body)
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-signature"].startswith("v1,")
    assert verify(secret, body, headers)["type"] == "batch.expired"
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        verify(secret, body + b" ", headers)
    with pytest.raises(ValueError):
        signed_headers("whsec_not*base64", "evt_1", body)


def test_event_shape_is_openais():
    event = batch_event("batch_9", "cancelled", created_at=1719168000, event_id="evt_9")
    assert event == {
        "object": "event",
        "id": "evt_9",
        "type": "batch.cancelled",
        "created_at": 1719168000,
        "data": {"id": "batch_9"},
    }
    assert set(BATCH_EVENT_TYPES.values()) == {"batch.completed", "batch.failed", "batch.cancelled", "batch.expired"}
    fresh = batch_event("batch_9", "completed")
    assert fresh["id"].startswith("evt_") and isinstance(fresh["created_at"], int)
    with pytest.raises(ValueError):
        batch_event("batch_9", "in_progress")


def test_retried_on_500_and_429_then_delivered_with_one_id(receiver):
    receiver.script["/hook"] = [Reply(500), Reply(429), Reply(200)]
    secret = new_webhook_secret()
    outcome = asyncio.run(deliver(receiver.url("/hook"), secret, batch_event("batch_r", "completed"), LOOPBACK, **FAST))
    assert (outcome.delivered, outcome.attempts, outcome.outcome) == (True, 3, "HTTP 200")
    assert len({hit.headers["webhook-id"] for hit in receiver.hits}) == 1 and len(receiver.hits) == 3
    for hit in receiver.hits:  # each try is signed afresh and verifies
        openai_unwrap(secret, hit.body, hit.headers)


def test_gives_up_after_the_attempts(receiver):
    receiver.script["/hook"] = [Reply(503)]
    outcome = asyncio.run(
        deliver(receiver.url("/hook"), new_webhook_secret(), batch_event("b", "failed"), LOOPBACK, attempts=3, **FAST)
    )
    assert (outcome.delivered, outcome.attempts, outcome.summary) == (False, 3, "failed HTTP 503")
    assert len(receiver.hits) == 3


def test_connection_failures_are_retried():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    outcome = asyncio.run(
        deliver(f"http://127.0.0.1:{closed}/hook", new_webhook_secret(), batch_event("b", "failed"), LOOPBACK, attempts=2, **FAST)
    )
    assert (outcome.delivered, outcome.attempts, outcome.outcome) == (False, 2, "could not connect")


@pytest.mark.parametrize(("status", "outcome"), [(404, "HTTP 404"), (302, "HTTP 302 (redirects are not followed)")])
def test_client_errors_and_redirects_fail_at_once(receiver, status, outcome):
    receiver.script["/hook"] = [Reply(status, headers={"Location": receiver.url("/elsewhere")})]
    receiver.script["/elsewhere"] = [Reply(200)]
    result = asyncio.run(deliver(receiver.url("/hook"), new_webhook_secret(), batch_event("b", "completed"), LOOPBACK, **FAST))
    assert (result.delivered, result.attempts, result.outcome) == (False, 1, outcome)
    assert receiver.paths() == ["/hook"]


def test_a_refused_url_is_never_sent_nor_retried(receiver):
    receiver.script["/hook"] = [Reply(200)]
    asked: list[str] = []

    async def dns(host: str, port: int) -> list[str]:
        asked.append(host)
        return ["127.0.0.1"]

    https_only = EgressPolicy(timeout_seconds=2)
    not_listed = EgressPolicy(allow_http=True, timeout_seconds=2)
    for url, policy in (
        (receiver.url("/hook"), https_only),  # http not allowed
        (receiver.url("/hook"), not_listed),  # loopback literal
        (receiver.url("/hook", host="hooks.example.com"), not_listed),  # a name resolving to loopback
    ):
        result = asyncio.run(deliver(url, new_webhook_secret(), batch_event("b", "completed"), policy, resolver=dns, **FAST))
        assert (result.delivered, result.attempts) == (False, 0) and result.outcome.startswith("refused: ")
        assert "127.0.0.1" not in result.outcome
    assert asked == ["hooks.example.com"]  # resolved once, not retried
    assert receiver.hits == []


def test_an_unusable_secret_fails_without_sending(receiver):
    result = asyncio.run(deliver(receiver.url("/hook"), "whsec_***", batch_event("b", "completed"), LOOPBACK, **FAST))
    assert (result.delivered, result.attempts) == (False, 0) and receiver.hits == []


def test_the_body_sent_is_the_compact_event(receiver):
    receiver.script["/hook"] = [Reply(200)]
    event = batch_event("batch_c", "completed")
    asyncio.run(deliver(receiver.url("/hook"), new_webhook_secret(), event, LOOPBACK, **FAST))
    assert receiver.hits[0].body == encode_event(event) and json.loads(receiver.hits[0].body) == event
