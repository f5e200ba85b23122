"""File expiry in the gateway database, on SQLite and PostgreSQL: an upload's own ``expires_at``,
a batch's ``output_expires_after`` reaching the output files whoever attaches them, and the sweep."""

from __future__ import annotations

from datetime import timedelta

from nightshift.api.db import Database, add_batch, add_file, create_org, expire_files, files_to_purge, get_file, utcnow
from tests.api.test_db_auth import run

HOUR = 3600


def test_uploads_and_batch_outputs_expire_as_asked_and_the_sweep_deletes_them(database_url):
    async def body(db: Database) -> None:
        async with db.session() as s:
            org = (await create_org(s, "acme")).id
            files = {"uri": "file:///x", "bytes": 1, "lines": 1, "org_id": org, "filename": "in.jsonl"}
            kept = await add_file(s, purpose="batch", **files)
            short = await add_file(s, purpose="batch", expires_after_seconds=HOUR, **files)
            batch = await add_batch(
                s, org_id=org, input_file_id=kept.id, endpoint="/v1/responses", completion_window="24h", tier="free",
                output_expires_after=2 * HOUR,
            )  # fmt: skip
        assert kept.expires_at is None and short.expires_at == short.created_at + timedelta(hours=1)

        # As the lifecycle registers outputs: add the files, attach them to the batch, flush.
        async with db.session() as s:
            row = await s.get(type(batch), batch.id)
            output = await add_file(s, purpose="batch_output", **files)
            errors = await add_file(s, purpose="batch_output", **files)
            row.output_file_id, row.error_file_id = output.id, errors.id
            await s.flush()
        for f in (output, errors):
            async with db.session() as s:
                found = await get_file(s, org, f.id)
            assert found is not None and found.expires_at == found.created_at + timedelta(hours=2)

        async with db.session() as s:
            assert [f.id for f in await expire_files(s, utcnow() + timedelta(minutes=61))] == [short.id]
            assert await get_file(s, org, short.id) is None
            later = await expire_files(s, utcnow() + timedelta(hours=3))
            assert {f.id for f in later} == {output.id, errors.id}
            assert {f.id for f in await files_to_purge(s)} == {short.id, output.id, errors.id}
            assert await get_file(s, org, kept.id) is not None

    run(database_url, body)
