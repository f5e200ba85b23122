"""Prometheus metrics of one batch run, pushed to a Pushgateway.

Why push, and why per batch: a batch run is a job, not a service. Its flow run is a process the
worker starts and reaps, often shorter than a scrape interval at the end, and on spot it may be
killed at any moment. Prometheus' own guidance for such "service-level batch jobs" is the
Pushgateway: the run pushes its metrics (PUT, the whole group) under the grouping key
``{job="nightshift_batch", batch_id=...}`` on every progress update (each finished shard, and at
least every ``progress_interval_seconds``) and once more when it publishes. The last values stay
scrapeable after the process is gone, a resumed run of the same batch replaces the group rather
than adding to it, and ``sum by (pool) (...)`` over groups gives fleet totals. Long-lived parts
(the gateway) are scraped directly instead (``nightshift.api.metrics``).

Counters here count a batch's requests and tokens so far; they only grow during a run and are
reset when a batch version is re-run, which ``increase()``/``rate()`` handle as counter resets.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import delete_from_gateway, push_to_gateway

from nightshift.core.artifacts import Manifest
from nightshift.core.progress import Progress, Risk
from nightshift.core.protocol import Usage
from nightshift.settings import MetricsConfig

log = logging.getLogger(__name__)

#: Shards take from well under a second (tiny model) to many minutes (a big model, 256 requests).
SHARD_SECONDS_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


def _families(registry: CollectorRegistry) -> set[str]:
    return {m.name + ("_total" if m.type == "counter" else "") for m in registry.collect()}


def metric_names() -> set[str]:
    """Names of the metric families a batch run pushes (counters with their ``_total``)."""
    return _families(BatchMetrics(batch_id="x", model="m", pool=None, tier="basic", config=MetricsConfig()).registry)


class BatchMetrics:
    """One batch run's metrics on its own registry (never the process-global one: a worker may
    run several batches, and each group must carry only its own)."""

    def __init__(self, *, batch_id: str, pool: str | None, tier: str, config: MetricsConfig, model: str | None = None) -> None:
        self.batch_id, self.config = batch_id, config
        self.registry = r = CollectorRegistry()
        base = {"model": "unknown", "pool": pool or "none", "tier": tier}
        sla = {"pool": base["pool"], "tier": tier}
        B, S = [*base], [*sla]  # label names: per batch, and per batch's SLA view

        def counter(name: str, doc: str, labels: list[str]) -> Counter:
            return Counter(name, doc, labels, registry=r)

        def gauge(name: str, doc: str, labels: list[str]) -> Gauge:
            return Gauge(name, doc, labels, registry=r)

        self.requests = counter("nightshift_batch_requests", "Requests done (completed) or failed.", [*B, "status"])
        self.tokens = counter("nightshift_batch_tokens", "Prompt and completion tokens.", [*B, "kind"])
        self.cache_hits = counter("nightshift_batch_cache_hits", "Requests answered from the request cache.", B)
        self.shard_seconds = Histogram(
            "nightshift_shard_duration_seconds", "Engine time of one shard.", ["model", "pool"],
            buckets=SHARD_SECONDS_BUCKETS, registry=r,
        )  # fmt: skip
        self.duration = gauge("nightshift_batch_duration_seconds", "Wall time of the run that published the batch.", B)
        self.size = gauge("nightshift_batch_size_requests", "Request lines in the batch file.", B)
        self.slack = gauge("nightshift_batch_sla_slack_seconds", "Deadline minus the projected finish (negative: late).", S)
        self.eta = gauge("nightshift_batch_eta_seconds", "Projected seconds until the batch finishes.", S)
        self.deadline = gauge("nightshift_batch_deadline_timestamp_seconds", "The batch's SLA deadline.", S)
        self.running = gauge("nightshift_batch_running", "1 while the batch runs, 0 once published or failed.", S)
        self.prefix_hit = gauge(
            "nightshift_batch_prefix_cache_hit_ratio", "Share of engine prompt tokens served by the prefix cache.", B
        )
        self.at_risk = gauge("nightshift_batch_at_risk", "1 while the batch is at risk of (or past) its deadline.", S)
        self._base, self._sla = base, sla
        self._counts: dict[tuple[int, str], float] = {}  # (counter, key) → value so far
        self._warned = False
        if model is not None:
            self.bind_model(model)

    def bind_model(self, model: str) -> None:
        """Label the batch's series with the model serving it (known once it is resolved).

        Every series exists from here on, at zero: absent series make ratios in dashboards
        disappear instead of reading 0.
        """
        self._base["model"] = model
        base = self._base
        for status in ("completed", "failed"):
            self.requests.labels(**base, status=status)
        for kind in ("prompt", "completion"):
            self.tokens.labels(**base, kind=kind)
        self.cache_hits.labels(**base)

    # -- updating ----------------------------------------------------------------------------
    def _advance(self, counter: Counter, key: str, value: float, **labels: str) -> None:
        """Move ``counter`` up to ``value`` (counters cannot be set; a lower value is ignored)."""
        last = self._counts.get((id(counter), key), 0.0)
        if value > last:
            counter.labels(**self._base, **labels).inc(value - last)
            self._counts[(id(counter), key)] = value

    def _usage(self, usage: Usage) -> None:
        self._advance(self.tokens, "prompt", usage.prompt_tokens, kind="prompt")
        self._advance(self.tokens, "completion", usage.completion_tokens, kind="completion")

    def update(self, progress: Progress, usage: Usage) -> None:
        """The run's progress so far (requests finished, tokens spent, ETA, slack, risk)."""
        self._advance(self.requests, "completed", progress.completed, status="completed")
        self._advance(self.requests, "failed", progress.failed, status="failed")
        self._usage(usage)
        self.size.labels(**self._base).set(progress.total)
        self.deadline.labels(**self._sla).set(progress.deadline.timestamp())
        if progress.eta_seconds is not None:
            self.eta.labels(**self._sla).set(progress.eta_seconds)
        if progress.slack_seconds is not None:
            self.slack.labels(**self._sla).set(progress.slack_seconds)
        self.at_risk.labels(**self._sla).set(int(progress.risk in (Risk.AT_RISK, Risk.BREACHED)))
        self.running.labels(**self._sla).set(int(progress.completed + progress.failed < progress.total))

    def observe_shards(self, seconds: Iterable[float]) -> None:
        """Engine seconds of shards this run computed."""
        for s in seconds:
            self.shard_seconds.labels(model=self._base["model"], pool=self._base["pool"]).observe(s)

    def finish(self, manifest: Manifest, *, duration_seconds: float, slack_seconds: float | None) -> None:
        """The published totals (the manifest is the record: counters end equal to it)."""
        counts = manifest.request_counts
        self._advance(self.requests, "completed", counts.completed, status="completed")
        self._advance(self.requests, "failed", counts.failed, status="failed")
        self._usage(manifest.usage)
        self._advance(self.cache_hits, "hits", manifest.cache.hits)
        self.size.labels(**self._base).set(counts.total)
        self.duration.labels(**self._base).set(duration_seconds)
        if slack_seconds is not None:
            self.slack.labels(**self._sla).set(slack_seconds)
        if manifest.prefix_cache is not None:
            self.prefix_hit.labels(**self._base).set(manifest.prefix_cache.hit_rate)
        self.eta.labels(**self._sla).set(0)
        self.running.labels(**self._sla).set(0)
        self.at_risk.labels(**self._sla).set(0)

    def failed(self) -> None:
        """The run ended without publishing."""
        self.running.labels(**self._sla).set(0)

    # -- pushing -----------------------------------------------------------------------------
    def push(self) -> bool:
        """Replace this batch's group on the Pushgateway; False (and one warning) when it fails.

        Metrics must never fail or slow a batch: a short timeout, no retries (the next update
        pushes the whole state again).
        """
        url = self.config.pushgateway_url
        if not url:
            return False
        started = time.perf_counter()
        try:
            push_to_gateway(
                url, job=self.config.job, registry=self.registry, grouping_key={"batch_id": self.batch_id},
                timeout=self.config.push_timeout_seconds,
            )  # fmt: skip
        except Exception as exc:  # noqa: BLE001 - observability must not take the batch down
            if not self._warned:
                log.warning("could not push metrics to %s: %s", url, exc)
                self._warned = True
            return False
        log.debug("pushed metrics of %s in %.3fs", self.batch_id, time.perf_counter() - started)
        return True


def delete_batch_metrics(config: MetricsConfig, batch_id: str) -> None:
    """Remove a batch's group from the Pushgateway (cleanup of expired batches)."""
    if config.pushgateway_url:
        delete_from_gateway(config.pushgateway_url, job=config.job, grouping_key={"batch_id": batch_id})
