"""SLA watch: a running batch's progress, ETA and risk, published while it runs.

The watch runs in the flow's process beside the inference task and reads only the store: a shard
counts once its results file exists (the engine actor writes it when the shard is done). On every
new shard, and at least every ``progress_interval_seconds`` on long shards, it publishes

- ``progress.json`` in the batch version's folder (the gateway and the CLI read it),
- the run's Prefect progress artifact,
- a ``nightshift.batch.progress`` event, and once per batch version each of
  ``nightshift.batch.sla.at-risk`` and ``nightshift.batch.sla.breached``; automations act on them.

One alert of each kind per batch version, not per shard or per run: the latch is ``alerts.json``
beside the progress, so the dedicated run that takes over an escalated batch stays quiet about
what the spot run already reported.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import threading
from datetime import UTC, datetime
from typing import Any

from nightshift.core.artifacts import decode_results, total_usage
from nightshift.core.progress import Progress, RateSample, RateWindow, Risk, RiskThresholds, assess_progress
from nightshift.core.protocol import Usage
from nightshift.core.report import artifact_key, format_duration
from nightshift.settings import SLAConfig
from nightshift.storage import ArtifactStore, BatchPaths
from nightshift.telemetry.metrics import BatchMetrics

log = logging.getLogger(__name__)

EVENT_PREFIX = "nightshift.batch"


class BatchEvents:
    """Emits the batch's Prefect events: the flow run is the resource (labelled with batch, tier and
    pool, so automations can match and group on them), the batch a related resource."""

    def __init__(self, *, flow_run_id: str | None, batch_id: str, tier: str, pool: str | None, deadline: datetime) -> None:
        self.batch_id, self.tier, self.pool, self.deadline = batch_id, tier, pool, deadline
        self.resource = {
            "prefect.resource.id": f"prefect.flow-run.{flow_run_id}" if flow_run_id else f"nightshift.batch-run.{batch_id}",
            "nightshift.batch.id": batch_id,
            "nightshift.tier": tier,
            "nightshift.pool": pool or "none",
        }
        self.related = [
            {
                "prefect.resource.id": f"nightshift.batch.{batch_id}",
                "prefect.resource.role": "batch",
                "prefect.resource.name": batch_id,
            }
        ]
        self.started: Any = None

    def emit(self, name: str, payload: dict[str, Any] | None = None, *, follows: Any = None) -> Any:
        """Emit ``nightshift.batch.{name}`` with the batch's identity in the payload; never raises
        (an unreachable event bus must not fail the batch)."""
        from prefect.events import emit_event

        body = {
            "batch_id": self.batch_id,
            "tier": self.tier,
            "pool": self.pool,
            "deadline": self.deadline.isoformat(),
            **(payload or {}),
        }
        try:
            return emit_event(
                f"{EVENT_PREFIX}.{name}", resource=self.resource, related=self.related, payload=body, follows=follows
            )
        except Exception:  # noqa: BLE001 - observability must not take the batch down
            log.exception("could not emit %s", name)
            return None

    def start(self, payload: dict[str, Any]) -> None:
        """``started``: the proactive automation expects ``completed`` or ``failed`` after it."""
        self.started = self.emit("started", payload)

    def finish(self, name: str, payload: dict[str, Any]) -> None:
        """``completed`` or ``failed``, marked as following ``started`` (Prefect's proactive
        triggers misfire when the expected event arrives in the same instant without it)."""
        self.emit(name, payload, follows=self.started)


def progress_payload(p: Progress) -> dict[str, Any]:
    """The fields an alert needs to be acted on, JSON-ready."""
    return {
        "version": p.version,
        "total": p.total,
        "completed": p.completed,
        "failed": p.failed,
        "percent": round(p.percent, 2),
        "requests_per_second": p.requests_per_second,
        "eta_seconds": p.eta_seconds,
        "remaining_seconds": p.remaining_seconds,
        "slack_seconds": p.slack_seconds,
        "risk": p.risk.value,
        "warnings": [w.code for w in p.warnings],
    }


def alert_once(store: ArtifactStore, paths: BatchPaths, events: BatchEvents, name: str, payload: dict[str, Any]) -> bool:
    """Emit the ``name`` alert unless this batch version already raised it; True when emitted."""
    alerted: dict[str, str] = {}
    if store.exists(paths.alerts):
        with contextlib.suppress(ValueError):
            alerted = json.loads(store.read_bytes(paths.alerts))
    if name in alerted:
        return False
    # Latch first: if the run dies right after, a missing alert is caught by the proactive
    # automation, while a duplicate would page someone twice.
    alerted[name] = datetime.now(UTC).isoformat()
    store.write_bytes(paths.alerts, json.dumps(alerted).encode())
    log.warning("batch %s: %s %s", events.batch_id, name, payload)
    events.emit(name, payload)
    return True


def _artifact_key(batch_id: str) -> str:
    """The batch's progress artifact key, beside its summary, outputs and errors (report-batch)."""
    return artifact_key(batch_id, "progress")


class SLAWatch:
    """Publishes a batch version's progress from its shard results until stopped (a thread)."""

    def __init__(
        self,
        *,
        store: ArtifactStore,
        paths: BatchPaths,
        events: BatchEvents,
        version: str,
        total: int,
        completed: int,
        failed: int,
        shard_names: set[str],
        sla: SLAConfig,
        fallback_requests_per_second: float | None,
        metrics: BatchMetrics | None = None,
    ) -> None:
        self.store, self.paths, self.events, self.version = store, paths, events, version
        self.total, self.base_completed, self.base_failed = total, completed, failed
        self.shard_names = shard_names
        self.thresholds = RiskThresholds(
            at_risk_margin_seconds=sla.at_risk_margin_seconds,
            min_requests_per_second=sla.min_requests_per_second,
            max_error_rate=sla.max_error_rate,
            max_accelerator_utilisation=sla.max_accelerator_utilisation,
        )
        self.interval = sla.progress_interval_seconds
        self.window = RateWindow(seconds=sla.rate_window_seconds)
        self.fallback = fallback_requests_per_second
        self.metrics = metrics
        self.counted: dict[str, tuple[int, int, Usage]] = {}  # shard → (completed, failed, usage)
        self.latest: Progress | None = None
        self._artifact_id: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- reading the store -------------------------------------------------------------------
    def _scan(self) -> bool:
        """Count shards whose results appeared since the last scan; True when any did."""
        new = False
        with contextlib.suppress(FileNotFoundError):
            for path in self.store.fs.glob(f"{self.paths.shards}/*.results.jsonl"):
                name = path.rsplit("/", 1)[-1].removesuffix(".results.jsonl")
                if name in self.counted or name not in self.shard_names:
                    continue
                rows = decode_results(self.store.read_bytes(path))
                errors = sum(r.error is not None for r in rows)
                self.counted[name] = (len(rows) - errors, errors, total_usage(rows))
                log.info("shard %s finished: %d requests, %d errors", name, len(rows), errors, extra={"shard": name})
                new = True
        return new

    # -- publishing --------------------------------------------------------------------------
    def publish(self) -> Progress:
        """Assess and publish progress now (file, artifact, events)."""
        now = datetime.now(UTC)
        completed = self.base_completed + sum(c for c, _, _ in self.counted.values())
        failed = self.base_failed + sum(f for _, f, _ in self.counted.values())
        usage = Usage(
            prompt_tokens=sum(u.prompt_tokens for _, _, u in self.counted.values()),
            completion_tokens=sum(u.completion_tokens for _, _, u in self.counted.values()),
        )
        tokens = usage.prompt_tokens + usage.completion_tokens
        self.window = self.window.add(RateSample(at=now, requests=completed + failed, tokens=tokens))
        rps, tps = self.window.rates()
        p = assess_progress(
            batch_id=self.events.batch_id,
            version=self.version,
            tier=self.events.tier,
            pool=self.events.pool,
            total=self.total,
            completed=completed,
            failed=failed,
            now=now,
            deadline=self.events.deadline,
            requests_per_second=rps,
            tokens_per_second=tps,
            fallback_requests_per_second=self.fallback,
            thresholds=self.thresholds,
        )
        self.latest = p
        self.store.write_bytes(self.paths.progress, p.model_dump_json(indent=2).encode())
        self._update_artifact(p)
        if self.metrics is not None:
            self.metrics.update(p, usage)
            self.metrics.push()
        payload = progress_payload(p)
        self.events.emit("progress", payload)
        if p.risk in (Risk.AT_RISK, Risk.BREACHED):
            # Named after the verdict: the escalation automation listens for core's escalating verdicts.
            self._alert_once(f"sla.{p.risk.value}", payload)
        return p

    def _alert_once(self, name: str, payload: dict[str, Any]) -> None:
        alert_once(self.store, self.paths, self.events, name, payload)

    def _update_artifact(self, p: Progress) -> None:
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        def _s(x: float | None) -> str:
            return "?" if x is None else format_duration(x)

        done = f"{p.completed + p.failed}/{p.total} requests"
        description = f"{done} · ETA {_s(p.eta_seconds)} · slack {_s(p.slack_seconds)} · {p.risk.value}"
        try:
            if self._artifact_id is None:
                self._artifact_id = create_progress_artifact(p.percent, key=_artifact_key(p.batch_id), description=description)
            else:
                update_progress_artifact(self._artifact_id, p.percent, description=description)
        except Exception:  # noqa: BLE001 - the UI view is best effort; progress.json is the record
            log.exception("could not update the progress artifact")

    # -- the thread --------------------------------------------------------------------------
    def _loop(self) -> None:
        import time

        last = time.monotonic()  # __enter__ has just published
        while not self._stop.wait(1.0):
            try:
                if self._scan() or time.monotonic() - last >= self.interval:
                    self.publish()
                    last = time.monotonic()
            except Exception:  # noqa: BLE001 - keep watching; the batch itself is unaffected
                log.exception("SLA watch failed to publish progress")

    def __enter__(self) -> SLAWatch:
        self.publish()
        # Run in a copy of the flow's context so events carry the flow run as a related resource.
        ctx = contextvars.copy_context()
        self._thread = threading.Thread(target=ctx.run, args=(self._loop,), name="sla-watch", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        with contextlib.suppress(Exception):
            self._scan()
            self.publish()
