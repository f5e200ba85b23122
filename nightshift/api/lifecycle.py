"""The one owner of a batch's status in the gateway.

Every status change goes through ``BatchLifecycle.move``: the transition comes from the pure table
in ``nightshift.core.lifecycle`` and is written with compare-and-set, so the tracker loop, a
Prefect event and a client's ``GET`` that all see the same change cannot register the outputs or
schedule the webhook twice. Webhooks are claimed the same way (``db.claim_webhook``) and so are
sent once per terminal status, with a ``webhook-id`` that stays the same across a restart.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from nightshift.api import db, metrics
from nightshift.api.auth import Principal
from nightshift.api.db import Batch, Database, File
from nightshift.api.tracker import BatchState, Observation, Orchestrator, observe, read_store_state
from nightshift.api.webhooks import batch_event
from nightshift.core.artifacts import FileRecord
from nightshift.core.lifecycle import BatchEvent, BatchStatus, next_status
from nightshift.core.progress import Progress
from nightshift.core.protocol import Endpoint
from nightshift.settings import Settings
from nightshift.storage import ArtifactStore
from nightshift.storage.partial import publish_partial

log = logging.getLogger("nightshift.api")

#: Sends one webhook event: (url, org secret, event) → (delivered, attempts, outcome).
WebhookSender = Callable[[str, str, dict[str, Any]], Awaitable[tuple[bool, int, str]]]


def webhook_event(batch: Batch) -> dict[str, Any]:
    """OpenAI's webhook event for a finished batch (``batch.completed``...). Its id is derived from
    the batch and status, so a delivery repeated after a restart carries the same ``webhook-id``
    and a receiver drops the repeat."""
    digest = hashlib.sha256(f"{batch.id}:{batch.status}".encode()).hexdigest()[:24]
    ended = batch.completed_at or batch.failed_at or batch.expired_at or batch.cancelled_at or datetime.now(UTC)
    return batch_event(batch.id, batch.status, created_at=int(ended.timestamp()), event_id=f"evt_{digest}")


class BatchLifecycle:
    """Starts batches, follows their runs and moves their status (the only writer of it)."""

    def __init__(
        self,
        database: Database,
        store: ArtifactStore,
        settings: Settings,
        orchestrator: Orchestrator,
        send_webhook: WebhookSender,
    ) -> None:
        self.database, self.store, self.settings = database, store, settings
        self.orchestrator, self.send_webhook = orchestrator, send_webhook
        self._deliveries: set[asyncio.Task[None]] = set()  # held so running deliveries are not collected
        # One step per batch at a time, and none again within ``sync_seconds``: fifty clients polling
        # one batch cost one store read, not fifty (events and the tracker ask for a fresh step).
        self._steps: dict[str, asyncio.Task[tuple[Progress | None, bool]]] = {}
        self._recent: dict[str, tuple[float, Progress | None]] = {}
        self.sync_seconds = settings.api.sync_seconds

    # -- start ------------------------------------------------------------------------------
    async def start(
        self,
        who: Principal,
        *,
        source: File,
        endpoint: Endpoint,
        completion_window: str,
        metadata: dict[str, str] | None,
        webhook: str | None,
        tier: str,
        deadline: datetime,
        now: datetime,
        priority: str = "normal",
        drill: dict[str, Any] | None = None,
        output_expires_after: int | None = None,
    ) -> Batch:
        """Record a batch for ``source`` and hand it to a pool. Any start failure (orchestration
        down, placement refused) ends the batch ``failed`` with OpenAI's ``errors.data``: no row is
        left ``validating`` without a run, and a client never sees a 500 for it.
        ``output_expires_after`` (seconds) gives its output and error files their ``expires_at``."""
        batch_id = db.new_batch_id()
        async with self.database.session() as session:
            await db.add_batch(
                session, id=batch_id, org_id=who.org_id, input_file_id=source.id, endpoint=endpoint.value,
                completion_window=completion_window, metadata=metadata, tier=tier, deadline=deadline,
                expires_at=deadline, created_at=now, webhook_url=webhook, output_expires_after=output_expires_after,
            )  # fmt: skip
        metrics.BATCHES.labels(status=BatchStatus.VALIDATING.value).inc()
        try:
            sub = await asyncio.to_thread(
                self.orchestrator.submit,
                source.uri,
                tier=tier,
                settings=self.settings,
                submitted_at=now,
                priority=priority,
                batch_id=batch_id,
                endpoint=endpoint,
                deadline=deadline,
                **(drill or {}),
            )
        except Exception:  # noqa: BLE001 - whatever broke, the row must end, and the caller must not retry into duplicates
            log.exception("could not start batch %s", batch_id)
            error = {
                "code": "submit_failed",
                "message": "the batch could not be handed to a pool (orchestration unavailable); create it again later",
                "param": None,
                "line": None,
            }
            row = await self._moved_or_current(batch_id, BatchStatus.VALIDATING, BatchEvent.START_FAILED, errors=[error])
        else:
            async with self.database.session() as session:
                await db.update_unfinished(
                    session, batch_id, flow_run_id=sub.flow_run_id, deployment=sub.deployment, pool=sub.placement.pool,
                    placement=sub.placement.model_dump(mode="json"),
                    estimate=None if sub.estimate is None else sub.estimate.model_dump(mode="json"),
                )  # fmt: skip
                row = await session.get(Batch, batch_id, populate_existing=True)
        assert row is not None
        return row

    # -- follow ------------------------------------------------------------------------------
    async def sync(self, row: Batch, *, fresh: bool = False) -> Progress | None:
        """Bring one batch up to date from the store and its run; returns the live progress
        while it runs (see ``refresh``)."""
        return (await self.refresh(row, fresh=fresh))[0]

    async def refresh(self, row: Batch, *, fresh: bool = False) -> tuple[Progress | None, bool]:
        """The live progress, and whether the row changed. Safe to call from anywhere, any number
        of times at once: concurrent calls share one step, and a step newer than ``sync_seconds``
        is reused unless ``fresh``."""
        if BatchStatus(row.status).is_terminal:
            self._recent.pop(row.id, None)
            return None, False
        recent = self._recent.get(row.id)
        if not fresh and recent is not None and time.monotonic() - recent[0] < self.sync_seconds:
            return recent[1], False
        step = self._steps.get(row.id)
        if step is None:
            step = asyncio.ensure_future(self._step(row))
            self._steps[row.id] = step
            step.add_done_callback(lambda _: self._steps.pop(row.id, None))
        return await asyncio.shield(step)

    async def _step(self, row: Batch) -> tuple[Progress | None, bool]:
        started = time.monotonic()
        state = await asyncio.to_thread(self._read, row)
        seen = observe(row, state, datetime.now(UTC))
        changed = _changes(row, seen.progress)
        if changed:
            async with self.database.session() as session:
                await db.update_unfinished(session, row.id, **seen.progress)
        run_id = state.run.flow_run_id if state.run else row.flow_run_id
        if seen.cancel_run and run_id:
            await asyncio.to_thread(self.orchestrator.cancel, run_id)
        if seen.event is not None:
            changed = await self._apply(row, seen, state) is not None or changed
        self._recent[row.id] = (started, state.progress)
        return state.progress, changed

    def _read(self, row: Batch) -> BatchState:
        state = read_store_state(self.store, row.id)
        if row.flow_run_id and state.manifest is None:
            state.run = self.orchestrator.run_state(row.flow_run_id)
        return state

    async def _apply(self, row: Batch, seen: Observation, state: BatchState) -> Batch | None:
        assert seen.event is not None
        target = next_status(row.status, seen.event)
        if target is None:
            return None
        fields = dict(seen.fields)
        outputs: tuple[FileRecord, FileRecord] | None = None
        if seen.event is BatchEvent.PUBLISHED and state.manifest is not None:
            outputs = (state.manifest.output_file, state.manifest.error_file)
        elif seen.partial is not None:
            code, message = seen.partial
            async with self.database.session() as session:
                source = await db.get_file(session, row.org_id, row.input_file_id, include_deleted=True)
            uri = source.uri if source is not None else ""
            partial = await asyncio.to_thread(publish_partial, self.store, row.id, uri, code=code, message=message)
            fields.update(request_counts=partial.request_counts.model_dump(), usage=partial.usage.model_dump())
            outputs = (partial.output_file, partial.error_file)
        return await self.move(row, seen.event, outputs=outputs, **fields)

    async def move(
        self, row: Batch, event: BatchEvent, *, outputs: tuple[FileRecord, FileRecord] | None = None, **fields: Any
    ) -> Batch | None:
        """Apply ``event`` to the batch as ``row`` last saw it, with compare-and-set; the output
        files are registered in the same transaction. Returns the moved row, or None when the event
        does not apply or another caller moved the batch first."""
        target = next_status(row.status, event)
        if target is None:
            return None
        async with self.database.session() as session:
            moved = await db.compare_and_set(session, row.id, row.status, target.value, **fields)
            if moved is None:
                return None
            if outputs is not None:
                await self._register_outputs(session, moved, *outputs)
        self._recent.pop(row.id, None)  # the next poll looks again rather than answer from before the move
        metrics.BATCHES.labels(status=target.value).inc()
        if target.is_terminal:
            self.schedule_webhook(moved.id)
        return moved

    async def _moved_or_current(self, batch_id: str, expected: BatchStatus, event: BatchEvent, **fields: Any) -> Batch | None:
        async with self.database.session() as session:
            row = await session.get(Batch, batch_id)
        if row is None or row.status != expected:
            return row
        return await self.move(row, event, **fields) or row

    async def _register_outputs(self, session: Any, row: Batch, output: FileRecord, errors: FileRecord) -> None:
        for kind, record in (("output", output), ("error", errors)):
            if kind == "error" and not record.lines:
                row.error_file_id = None
                continue
            added = await db.add_file(
                session, org_id=row.org_id, filename=f"{row.id}_{kind}.jsonl", purpose="batch_output",
                bytes=record.bytes, lines=record.lines or 0, uri=record.path, sha256=record.sha256,
            )  # fmt: skip
            setattr(row, f"{kind}_file_id", added.id)
        await session.flush()

    async def cancel(self, row: Batch) -> Batch:
        """Move the batch to ``cancelling`` and ask its run to stop; ``cancelled`` follows once the
        run is over and the partial results are published (``sync``)."""
        moved = await self.move(row, BatchEvent.CANCEL_REQUESTED)
        if moved is None:
            async with self.database.session() as session:
                current = await session.get(Batch, row.id, populate_existing=True)
            assert current is not None
            return current
        if moved.flow_run_id:
            await asyncio.to_thread(self.orchestrator.cancel, moved.flow_run_id)
        return moved

    # -- webhooks ----------------------------------------------------------------------------
    def schedule_webhook(self, batch_id: str) -> None:
        """Deliver the batch's terminal-status webhook in the background (once: see ``_deliver``)."""
        task = asyncio.create_task(self._deliver(batch_id), name=f"webhook:{batch_id}")
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def _deliver(self, batch_id: str) -> None:
        async with self.database.session() as session:
            if not await db.claim_webhook(session, batch_id):
                return  # no webhook, not finished, or another caller has it
            row = await session.get(Batch, batch_id, populate_existing=True)
            org = await db.get_org(session, row.org_id) if row else None
        if row is None or org is None or not row.webhook_url:
            return
        try:
            delivered, attempts, outcome = await self.send_webhook(row.webhook_url, org.webhook_secret, webhook_event(row))
        except Exception:  # noqa: BLE001 - recorded as failed, never retried into a loop
            log.exception("webhook for %s failed", batch_id)
            delivered, attempts, outcome = False, 0, "error"
        async with self.database.session() as session:
            await db.update_batch(
                session, batch_id, webhook_status=(("delivered " if delivered else "failed ") + outcome)[:64],
                webhook_attempts=attempts,
            )  # fmt: skip
        metrics.WEBHOOKS.labels(outcome="delivered" if delivered else "failed").inc()
        log.info("webhook for %s: %s after %d attempt(s)", batch_id, outcome, attempts)

    async def drain(self) -> None:
        """Wait for the deliveries under way (tests; shutdown)."""
        if self._deliveries:
            await asyncio.gather(*list(self._deliveries), return_exceptions=True)

    # -- the slow fallback -------------------------------------------------------------------
    async def track_once(self) -> None:
        """One pass over every unfinished batch, then the webhooks still owed."""
        async with self.database.session() as session:
            rows = await db.unfinished_batches(session)
        for row in rows:
            try:
                await self.sync(row)  # a batch a client or an event stepped just now is not read again
            except Exception:  # noqa: BLE001 - one bad batch must not stop the others
                log.exception("could not follow batch %s", row.id)
        async with self.database.session() as session:
            owed = await db.undelivered_webhooks(session)
        for row in owed:
            self.schedule_webhook(row.id)


def _changes(row: Batch, fields: dict[str, Any]) -> bool:
    """True when writing ``fields`` would change the row (a poll that saw nothing new writes nothing)."""
    return any(getattr(row, key) != value for key, value in fields.items())
