"""``/v1/files``: OpenAI's Files API for batch inputs and outputs, scoped to the caller's org."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Annotated, Any, BinaryIO, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.datastructures import FormData, UploadFile

from nightshift.api import db
from nightshift.api.auth import Principal
from nightshift.api.deps import Caller, Gateway, Gw
from nightshift.api.errors import ApiError
from nightshift.api.objects import file_object, page
from nightshift.api.schemas import FileDeleted, FileObject, ListPage
from nightshift.core.errors import BatchFileError
from nightshift.core.jsonl import LineCounter
from nightshift.core.retention import ExpiresAfter

router = APIRouter(prefix="/v1/files", tags=["files"])

CHUNK = 1024 * 1024


@router.post("", response_model=FileObject)
async def create_file(who: Caller, gw: Gw, request: Request) -> FileObject:
    """Upload a batch input file (multipart: ``file`` and ``purpose=batch``).

    The form is parsed only now, after the caller is known; the middleware has already refused a
    body over the limit by its Content-Length, and stops a streamed one at the limit.
    """
    form = await request.form(max_files=1, max_fields=4)
    try:
        purpose, upload = form.get("purpose"), form.get("file")
        if purpose != "batch":
            raise ApiError(400, "purpose must be 'batch': this server runs batches", param="purpose")
        if not isinstance(upload, UploadFile):
            raise ApiError(400, "a file part named 'file' is required", param="file")
        expiry = _expires_after(form)
        name = (upload.filename or "upload.jsonl")[-255:]
        row = await store_upload(gw, who, upload.file, name, expires_after=expiry)
    finally:
        await form.close()
    return file_object(row)


def _expires_after(form: FormData) -> ExpiresAfter | None:
    """OpenAI's ``expires_after`` form fields (``expires_after[anchor]``, ``expires_after[seconds]``,
    as the ``openai`` client sends them), checked against OpenAI's bounds; a 400 names the field."""
    fields = {key: form.get(f"expires_after[{key}]") for key in ("anchor", "seconds")}
    if all(value is None for value in fields.values()):
        return None
    try:
        return ExpiresAfter.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as exc:
        first = exc.errors()[0]
        param = "expires_after" + "".join(f"[{p}]" for p in first["loc"])
        raise ApiError(400, f"{param}: {first['msg']}", param=param) from None


async def store_upload(
    gw: Gateway, who: Principal, source: BinaryIO, filename: str, *, expires_after: ExpiresAfter | None = None
) -> db.File:
    """A File row for content streamed into the store (uploads, inline items, downloaded inputs):
    counted by the flow's own line rule, limits enforced on the way, never left half-written."""
    file_id = db.new_file_id()
    path = gw.store.upload(who.org_id, file_id)
    size, lines = await asyncio.to_thread(_copy_counted, gw, source, filename, path)
    seconds = None if expires_after is None else expires_after.seconds
    return await add_file(gw, who, file_id, filename, gw.store.uri(path), size, lines, expires_after_seconds=seconds)


def _copy_counted(gw: Gateway, source: BinaryIO, name: str, path: str) -> tuple[int, int]:
    limits = gw.settings.limits
    counter = LineCounter()
    size = 0
    fs = gw.store.fs
    tmp = f"{path}.part"
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    try:
        with fs.open(tmp, "wb") as out:
            while chunk := source.read(CHUNK):
                size += len(chunk)
                if size > limits.max_bytes:
                    raise BatchFileError.too_large(name, size, limits.max_bytes)
                out.write(chunk)
                counter.feed(chunk)
                if counter.lines > limits.max_lines:
                    raise BatchFileError.too_many_lines(name, limits.max_lines)
        counter.finish()
        if counter.lines > limits.max_lines:
            raise BatchFileError.too_many_lines(name, limits.max_lines)
        if counter.lines == 0:
            raise BatchFileError.empty(name)
        if counter.objects == 0:
            raise BatchFileError(
                "not a JSONL batch file: no line is a JSON object (expected one OpenAI batch request per line)", uri=name
            )
        fs.mv(tmp, path)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(tmp)
        raise
    return size, counter.lines


async def add_file(
    gw: Gateway,
    who: Principal,
    file_id: str,
    filename: str,
    uri: str,
    size: int,
    lines: int,
    *,
    expires_after_seconds: int | None = None,
    **detail: Any,
) -> db.File:
    """Record a batch input file of the caller's org (and audit it)."""
    async with gw.database.session() as session:
        row = await db.add_file(
            session, id=file_id, org_id=who.org_id, filename=filename, purpose="batch", bytes=size, lines=lines, uri=uri,
            expires_after_seconds=expires_after_seconds,
        )  # fmt: skip
    await gw.audit(who, "file.create", file_id, bytes=size, lines=lines, **detail)
    return row


@router.get("", response_model=ListPage[FileObject])
async def list_files(
    who: Caller,
    gw: Gw,
    purpose: Annotated[str | None, Query(max_length=64)] = None,
    after: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 10_000,
    order: Literal["asc", "desc"] = "desc",
) -> ListPage[FileObject]:
    """The org's files, newest first by default, paged with OpenAI's ``after``/``limit``/``order``."""
    async with gw.database.session() as session:
        try:
            rows, has_more = await db.list_files(session, who.org_id, purpose=purpose, after=after, limit=limit, order=order)
        except db.NotFound:
            raise ApiError(400, "after: not a file of this organization", param="after") from None
    return page(rows, has_more, file_object)


@router.get("/{file_id}", response_model=FileObject)
async def retrieve_file(who: Caller, gw: Gw, file_id: str) -> FileObject:
    """One file of the org."""
    return file_object(await gw.file(who, file_id))


@router.get("/{file_id}/content")
async def file_content(who: Caller, gw: Gw, file_id: str) -> StreamingResponse:
    """The file's bytes, streamed. Inputs read in place are checked again now, against the rules
    in force (a folder swapped for a link after submit is refused here)."""
    from nightshift.api.urls import open_input

    row = await gw.file(who, file_id)
    handle = await asyncio.to_thread(open_input, gw.settings, gw.store, who, row.uri)
    await gw.audit(who, "file.download", file_id)

    def chunks() -> Iterator[bytes]:
        with handle:
            while data := handle.read(CHUNK):
                yield data

    return StreamingResponse(chunks(), media_type="application/jsonl")


@router.delete("/{file_id}", response_model=FileDeleted)
async def delete_file(who: Caller, gw: Gw, file_id: str) -> FileDeleted:
    """Delete the file: its id stops working at once, and its bytes (when the store holds them)
    are removed now, or when the last unfinished batch reading it ends."""
    row = await gw.file(who, file_id)
    async with gw.database.session() as session:
        await db.mark_file_deleted(session, row.id)
    await purge_deleted(gw, row.id)
    await gw.audit(who, "file.delete", file_id)
    return FileDeleted(id=file_id, deleted=True)


async def purge_deleted(gw: Gateway, file_id: str | None = None) -> int:
    """Remove the stored bytes of deleted files no unfinished batch reads; returns how many.
    Bytes outside the store (an org's own bucket or folder, read in place) are never touched.
    The sweep (no ``file_id``) first deletes the files whose ``expires_at`` has passed."""
    async with gw.database.session() as session:
        if file_id is None:
            await db.expire_files(session)
        rows = await db.files_to_purge(session, file_id)
    purged = 0
    for row in rows:
        if gw.store.holds(row.uri):
            await asyncio.to_thread(_remove, gw, row.uri)
        async with gw.database.session() as session:
            found = await session.get(db.File, row.id)
            if found is not None:
                found.status = db.FILE_PURGED
        purged += 1
    return purged


def _remove(gw: Gateway, uri: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        gw.store.fs.rm(uri)
