"""URLs a tenant gives the gateway, and what it does with them: the webhook it will call, the
input it will download or read in place. Every rule lives in ``core.jobs`` (input URLs) and
``api.egress`` (outbound calls); this module applies them at each use, with the caller's org.

- A webhook URL is checked when the batch is created (a refused one is a 400 naming the field and
  is never stored) and again, resolved, at every send (``egress.post_json``).
- An https input is downloaded through ``egress.stream_get`` (no redirects, address rules, cap).
- A local input is copied into the store at submit, opened without following links
  (``core.jobs.open_input_file``), so nothing reads the tenant-named path again.
- An s3 input is read in place, and checked again at every read against the org's prefixes.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from nightshift.api import egress, webhooks
from nightshift.api.auth import Principal
from nightshift.core.errors import BatchFileError, EgressFailed, EgressRefused, JobRequestError
from nightshift.core.jobs import InputSource, check_input_url, open_input_file
from nightshift.settings import Settings
from nightshift.storage import ArtifactStore

if TYPE_CHECKING:
    from nightshift.api.db import File
    from nightshift.api.deps import Gateway
    from nightshift.api.lifecycle import WebhookSender

FIELD = "input_file_url"


async def checked_webhook(gw: Gateway, who: Principal, url: str | None, *, param: str) -> str | None:
    """The webhook URL when its scheme and host pass the egress rules (resolved again at every
    send). A refused one is recorded in the audit log, then answered with a 400 naming ``param``."""
    if not url:
        return None
    try:
        return egress.check_url(url, egress.EgressPolicy.from_settings(gw.settings.api), param=param)
    except EgressRefused as exc:
        await gw.audit(who, "webhook.refused", param, rule=exc.rule)
        raise


def webhook_sender(settings: Settings) -> WebhookSender:
    """Standard Webhooks delivery through the egress policy, retried with backoff."""
    policy = egress.EgressPolicy.from_settings(settings.api)

    async def send(url: str, secret: str, event: dict[str, Any]) -> tuple[bool, int, str]:
        done = await webhooks.deliver(url, secret, event, policy, attempts=settings.api.webhook_attempts)
        return done.delivered, done.attempts, done.outcome

    return send


def https_downloader(settings: Settings) -> Any:
    """Streams an allow-listed https input through the egress policy, at most the batch limit."""
    policy = egress.EgressPolicy.from_settings(settings.api)

    def download(url: str) -> AsyncIterator[bytes]:
        return egress.stream_get(url, policy, param=FIELD, max_bytes=settings.limits.max_bytes)

    return download


def input_rules(settings: Settings, who: Principal) -> dict[str, Any]:
    """The calling org's input-URL rules, as ``check_input_url`` takes them."""
    api = settings.api
    return {
        "allowed_file_roots": api.allowed_file_roots,
        "allowed_https_hosts": api.allowed_https_hosts,
        "s3_prefixes": api.s3_prefixes_for(who.org_id, who.org_name),
        "store_root": settings.storage.root,
    }


def check_input(settings: Settings, who: Principal, url: str) -> InputSource:
    """``check_input_url`` with the caller's org's rules (pure: nothing is read)."""
    return check_input_url(url, **input_rules(settings, who))


async def download_input(gw: Gateway, who: Principal, url: str) -> File:
    """Copy an https input into the store (the upload path: same counting, same limits)."""
    from nightshift.api.routes.files import store_upload

    spooled = io.BytesIO()
    try:
        async for chunk in gw.download(url):
            spooled.write(chunk)
            if spooled.tell() > gw.settings.limits.max_bytes:
                raise BatchFileError.too_large("input_file_url", spooled.tell(), gw.settings.limits.max_bytes)
    except EgressFailed as exc:
        raise JobRequestError(f"could not be downloaded: {exc.outcome}", field=FIELD) from None
    spooled.seek(0)
    return await store_upload(gw, who, spooled, url.rsplit("/", 1)[-1][:255] or "input.jsonl")


async def copy_local_input(gw: Gateway, who: Principal, source: InputSource) -> File:
    """Copy an input from an allowed folder into the store at submit, opened without following
    links: the flow and every later read use the copy, so a file swapped for a link afterwards
    is never read (the flow's workers would otherwise open the path again)."""
    from nightshift.api.routes.files import store_upload

    handle = await asyncio.to_thread(open_input_file, Path(source.url), allowed_file_roots=gw.settings.api.allowed_file_roots)
    try:
        return await store_upload(gw, who, handle, Path(source.url).name[:255])
    finally:
        handle.close()


async def register_input(gw: Gateway, who: Principal, source: InputSource) -> File:
    """A File row for an s3 input read in place (under the org's prefixes): only its size is read
    here, and only after the URL passed every rule."""
    from nightshift.api.db import new_file_id
    from nightshift.api.routes.files import add_file

    nbytes = await asyncio.to_thread(_size, gw.settings, gw.store, who, source.url)
    if nbytes > gw.settings.limits.max_bytes:
        raise BatchFileError.too_large("input_file_url", nbytes, gw.settings.limits.max_bytes)
    # Lines are unknown until the flow reads it: the gateway never reads a whole input here.
    name = source.url.rsplit("/", 1)[-1][:255]
    return await add_file(gw, who, new_file_id(), name, source.url, nbytes, 0, source=source.kind)


def _size(settings: Settings, store: ArtifactStore, who: Principal, url: str) -> int:
    with open_input(settings, store, who, url) as handle:
        handle.seek(0, io.SEEK_END)
        return handle.tell()


def open_input(settings: Settings, store: ArtifactStore, who: Principal, uri: str) -> BinaryIO:
    """Open a file row's bytes for reading, under the rules in force now.

    The store's own files (uploads, results) open directly; a local input opens without following
    links; an s3 input must still lie under the org's prefixes.

    Raises:
        JobRequestError: the input is no longer allowed, or cannot be read (message names no path).
    """
    if store.holds(uri):
        try:
            return store.fs.open(uri, "rb")
        except FileNotFoundError:
            raise JobRequestError("the file's content is gone", field="file_id") from None
    if "://" not in uri or uri.startswith("file://"):
        path = uri.removeprefix("file://")
        return open_input_file(Path(path), allowed_file_roots=settings.api.allowed_file_roots)
    checked = check_input(settings, who, uri)  # the org's prefixes as configured now
    import fsspec

    try:
        return fsspec.open(checked.url, "rb", **settings.storage.storage_options(checked.url)).open()
    except FileNotFoundError:
        raise JobRequestError("no such object", field=FIELD) from None
    except Exception:  # noqa: BLE001 - unreachable store, no permission: said without the library's text
        raise JobRequestError("cannot be read with the gateway's storage credentials", field=FIELD) from None
