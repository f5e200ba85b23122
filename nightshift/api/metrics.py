"""Prometheus metrics of the gateway, on its own registry (several apps in one process, as in
tests, must not collide in the global one)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest

REGISTRY = CollectorRegistry()
CONTENT_TYPE = CONTENT_TYPE_LATEST

REQUESTS = Counter(
    "nightshift_api_requests_total",
    "HTTP requests by route template, method and status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
RATE_LIMITED = Counter("nightshift_api_rate_limited_total", "Requests refused by the tier rate limit.", registry=REGISTRY)
BATCHES = Counter(
    "nightshift_api_batches_total",
    "Batches entering a status (created as validating, then their terminal one).",
    ["status"],
    registry=REGISTRY,
)
WEBHOOKS = Counter("nightshift_api_webhooks_total", "Terminal-status webhooks by outcome.", ["outcome"], registry=REGISTRY)


def render() -> bytes:
    """The text exposition of every gateway metric."""
    return generate_latest(REGISTRY)
