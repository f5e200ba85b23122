"""Prometheus metrics of the gateway, on its own registry (several apps in one process, as in
tests, must not collide in the global one)."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from nightshift.core.placement import PoolState

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

# Pool usage, as the tracker last read it from Prefect: the gateway is the long-lived process that
# already watches Prefect, so it exports what batch runs (short-lived, pushed) cannot see.
_POOL = ["pool", "kind"]
POOL_QUEUE_DEPTH = Gauge(
    "nightshift_pool_queue_depth", "Flow runs due on the pool and waiting for a slot.", _POOL, registry=REGISTRY
)
POOL_RUNNING = Gauge("nightshift_pool_running_runs", "Flow runs holding a slot (pending or running).", _POOL, registry=REGISTRY)
POOL_LIMIT = Gauge("nightshift_pool_concurrency_limit", "The pool's concurrency limit (-1: unlimited).", _POOL, registry=REGISTRY)
POOL_WORKERS = Gauge("nightshift_pool_workers_online", "Workers polling the pool.", _POOL, registry=REGISTRY)


def record_pools(pools: Iterable[PoolState]) -> None:
    """Set the pool gauges from a fresh read of the pools."""
    for p in pools:
        labels = {"pool": p.name, "kind": p.kind}
        POOL_QUEUE_DEPTH.labels(**labels).set(p.queued)
        POOL_RUNNING.labels(**labels).set(p.running)
        POOL_LIMIT.labels(**labels).set(-1 if p.concurrency_limit is None else p.concurrency_limit)
        POOL_WORKERS.labels(**labels).set(p.online_workers)


def metric_names() -> set[str]:
    """Names of the gateway's metric families (counters with their ``_total``)."""
    return {m.name + ("_total" if m.type == "counter" else "") for m in REGISTRY.collect()}


def render() -> bytes:
    """The text exposition of every gateway metric."""
    return generate_latest(REGISTRY)
