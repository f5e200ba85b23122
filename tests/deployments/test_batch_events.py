"""The gateway's pushed path against a real Prefect server: a flow's ``nightshift.batch.*`` event
reaches ``prefect_batch_events`` (Prefect's event stream over its websocket), so a batch row moves
when its run reports, not at the next poll."""

from __future__ import annotations

import asyncio
import uuid


def test_batch_events_arrive_from_prefects_event_stream(prefect_api):
    from nightshift.api.tracker import prefect_batch_events
    from nightshift.orchestration.watch import BatchEvents

    batch_id = f"batch_{uuid.uuid4().hex[:24]}"

    async def listen() -> str:
        stream = prefect_batch_events()
        first = asyncio.ensure_future(anext(stream))
        await asyncio.sleep(2)  # subscribed before the event is sent
        events = BatchEvents(flow_run_id=None, batch_id=batch_id, tier="basic", pool="gpu-spot", deadline=_deadline())
        await asyncio.to_thread(events.emit, "progress", {"completed": 1, "total": 2})
        try:
            while True:
                got = await asyncio.wait_for(first, timeout=30)
                if got == batch_id:
                    return got
                first = asyncio.ensure_future(anext(stream))
        finally:
            await stream.aclose()

    assert asyncio.run(listen()) == batch_id


def _deadline():
    from datetime import UTC, datetime, timedelta

    return datetime.now(UTC) + timedelta(hours=1)
