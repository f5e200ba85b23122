"""The native job API's domain: what a job request may contain, which input URLs are allowed,
how inline prompts become an OpenAI batch file, and the numbers a job reports.

A job *is* a batch (one gateway row, one flow run): these functions only translate between the
job's shape and the batch's, so both APIs show the same object with the same counts.
"""

from __future__ import annotations

import enum
import errno
import json
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO, Literal
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, Field, model_validator

from nightshift.core.errors import JobRequestError, TierExceededError
from nightshift.core.protocol import Endpoint
from nightshift.core.sla import Tier

#: Tiers from least to most demanding: a key may ask for its own tier or one below it.
TIER_ORDER = (Tier.FREE, Tier.BASIC, Tier.PREMIUM, Tier.ENTERPRISE)


class Priority(enum.StrEnum):
    """Order of work within one tier and pool: a Prefect work queue per level, and workers take
    due runs from higher-priority queues first."""

    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"


class JobItem(BaseModel):
    """One inline request: a prompt (sent as one user message) or a list of chat messages."""

    custom_id: str | None = Field(default=None, max_length=512, description="Default: item-<index>.")
    prompt: str | None = Field(default=None, description="Sent as a single user message.")
    messages: list[dict[str, Any]] | None = Field(default=None, description="OpenAI chat messages.")
    max_tokens: int | None = Field(default=None, ge=1, description="Overrides the job's max_tokens.")
    temperature: float | None = Field(default=None, ge=0, le=2, description="Overrides the job's temperature.")

    @model_validator(mode="after")
    def _one_input(self) -> JobItem:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        return self


class JobCreate(BaseModel):
    """``POST /v1/jobs``: the input (a URL or inline items), and how to run it."""

    input_file_url: str | None = Field(
        default=None, description="s3://…, file://… (under an allowed root) or https://… (allow-listed host)."
    )
    input: list[JobItem] | None = Field(default=None, description="Inline items, up to the configured count.")
    model: str | None = Field(default=None, description="Model id written in inline requests (default: the served model).")
    sla_tier: Tier | None = Field(default=None, description="Default: the key's tier; never above it.")
    webhook_url: str | None = Field(default=None, max_length=2048, description="Called once the job ends.")
    metadata: dict[str, str] | None = Field(default=None, description="Up to 16 string pairs; 'priority': low|normal|high.")
    max_tokens: int | None = Field(default=None, ge=1, description="Completion budget of inline items.")
    temperature: float = Field(default=0.0, ge=0, le=2, description="Sampling temperature of inline items (0: greedy).")
    endpoint: Literal["/v1/chat/completions", "/v1/completions", "/v1/embeddings"] = Field(
        default="/v1/chat/completions", description="Endpoint of the lines in input_file_url (inline items are chat)."
    )

    @model_validator(mode="after")
    def _one_source(self) -> JobCreate:
        if (self.input_file_url is None) == (self.input is None):
            raise ValueError("give exactly one of 'input_file_url' or 'input'")
        return self

    def priority(self) -> Priority:
        """The job's priority from ``metadata.priority`` (normal when absent)."""
        raw = (self.metadata or {}).get("priority", Priority.NORMAL.value)
        try:
            return Priority(raw)
        except ValueError:
            raise JobRequestError(
                f"must be one of low, normal, high (got {raw!r})", field="metadata.priority", value=raw
            ) from None

    def job_endpoint(self) -> Endpoint:
        """The batch endpoint the job's lines use."""
        return Endpoint.CHAT_COMPLETIONS if self.input is not None else Endpoint(self.endpoint)


def effective_tier(requested: Tier | None, key_tier: str) -> Tier:
    """The job's tier: the key's by default; a lower one on request; never a higher one."""
    allowed = Tier(key_tier)
    if requested is None:
        return allowed
    if TIER_ORDER.index(requested) > TIER_ORDER.index(allowed):
        raise TierExceededError(requested.value, allowed.value)
    return requested


class InputSource(BaseModel):
    """An input URL that passed the checks, and how the gateway obtains it."""

    url: str = Field(description="What the flow reads (s3://… or a local path), or what the gateway downloads (https).")
    kind: Literal["s3", "file", "https"]

    @property
    def fetch_by_gateway(self) -> bool:
        """https inputs are copied into the store by the gateway; s3 and file inputs are read in place."""
        return self.kind == "https"


_S3_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_MAX_URL = 2048


def _s3_parts(url: str, *, field: str) -> tuple[str, str]:
    """``(bucket, key)`` of an ``s3://`` or ``s3a://`` URL whose key is a plain object name.

    Refused: query or fragment (s3fs reads ``?versionId=``), ``%`` (encoded tricks), backslashes,
    control characters, and empty, ``.`` or ``..`` segments, which some clients collapse and others
    send as-is, so the key checked would not be the key read.
    """
    scheme, sep, rest = url.partition("://")
    bucket, _, key = rest.partition("/")
    if not sep or scheme.lower() not in ("s3", "s3a") or not _S3_BUCKET.fullmatch(bucket) or not key:
        raise JobRequestError("expected s3://bucket/key with a valid bucket name", field=field, value=url)
    if re.search(r"[\x00-\x1f\x7f%\\?#]", key):
        raise JobRequestError("the key must not contain %, ?, #, backslashes or control characters", field=field, value=url)
    if any(segment in ("", ".", "..") for segment in key.split("/")):
        raise JobRequestError("the key must not contain empty, '.' or '..' segments", field=field, value=url)
    return bucket, key


def _under_s3_prefix(bucket: str, key: str, prefix: str) -> bool:
    """True when ``bucket/key`` lies under ``s3://bucket/prefix`` (a prefix is a folder: ``in`` is ``in/``)."""
    p_bucket, _, p_key = prefix.removeprefix("s3://").removeprefix("s3a://").partition("/")
    p_key = p_key.strip("/")
    return bucket == p_bucket and (not p_key or key.startswith(p_key + "/"))


def check_input_url(
    url: str,
    *,
    allowed_file_roots: Sequence[Path],
    allowed_https_hosts: Sequence[str],
    s3_prefixes: Sequence[str] = (),
    store_root: str | None = None,
) -> InputSource:
    """Decide, from the URL alone and before anything is fetched, whether the gateway may use it.

    - ``s3://``: only under one of ``s3_prefixes`` (the calling org's, from
      ``ApiConfig.s3_prefixes_for``), never inside ``store_root`` (the store's own area, which holds
      every org's uploads and results), and only plain keys (see ``_s3_parts``). Pure: no I/O, so a
      refused URL is never probed.
    - ``file://``: under an allowed root once ``..`` and links are resolved; read it later with
      ``open_input_file``, which refuses links swapped in after this check.
    - ``https://``: a host on ``allowed_https_hosts``; the download goes through
      ``nightshift.api.egress`` (address rules, no redirects, size cap).

    Raises:
        JobRequestError: any other scheme, a URL with credentials, a malformed one, or one outside
            the rules above. Messages name the field and the rule, never a server path.
    """
    field = "input_file_url"
    if len(url) > _MAX_URL:
        raise JobRequestError(f"is longer than {_MAX_URL} characters", field=field)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if "@" in parts.netloc:
        raise JobRequestError("credentials in the URL are not accepted", field=field, value=url)
    if scheme in ("s3", "s3a"):
        bucket, key = _s3_parts(url, field=field)
        if store_root and store_root.startswith(("s3://", "s3a://")) and _under_s3_prefix(bucket, key, store_root):
            raise JobRequestError(
                "points into the gateway's own store, which is never an input (pass the file's id instead)",
                field=field,
                value=url,
            )
        if not any(_under_s3_prefix(bucket, key, prefix) for prefix in s3_prefixes):
            raise JobRequestError(
                "this bucket or prefix is not open to your organization (an operator allows s3 prefixes per organization)",
                field=field,
                value=url,
            )
        return InputSource(url=f"s3://{bucket}/{key}", kind="s3")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise JobRequestError("file URLs must name a local path (file:///...)", field=field, value=url)
        if not allowed_file_roots:
            raise JobRequestError("file:// inputs are not enabled on this gateway", field=field, value=url)
        raw = unquote(parts.path)
        if re.search(r"[\x00-\x1f\x7f]", raw):
            raise JobRequestError("the path has control characters", field=field, value=url)
        if not raw.startswith("/"):
            raise JobRequestError("file URLs must name an absolute path (file:///...)", field=field, value=url)
        try:
            path = Path(raw).resolve()
        except (OSError, RuntimeError):  # a link loop
            raise JobRequestError("is outside the allowed folders", field=field, value=url) from None
        if not any(path.is_relative_to(r.resolve()) for r in allowed_file_roots):
            raise JobRequestError("is outside the allowed folders", field=field, value=url)
        return InputSource(url=str(path), kind="file")
    if scheme == "https":
        host = (parts.hostname or "").lower()
        if host not in {h.lower() for h in allowed_https_hosts}:
            raise JobRequestError(f"host {host!r} is not on the allow-list", field=field, value=url)
        return InputSource(url=url, kind="https")
    raise JobRequestError(
        f"scheme {scheme or '(none)'!r} is not accepted; use s3://, file:// (under an allowed root) "
        "or https:// (allow-listed hosts)",
        field=field,
        value=url,
    )


def open_input_file(path: str | Path, *, allowed_file_roots: Sequence[Path], field: str = "input_file_url") -> BinaryIO:
    """Open a local input for reading, at READ time, without following a link in any component.

    The path is walked from the allowed root it lies in, one ``openat`` per component with
    ``O_NOFOLLOW``, so a folder or file swapped for a symlink after ``check_input_url`` is refused
    on every read, and a FIFO cannot block the reader (opened non-blocking, then refused as not a
    regular file). Only the root itself may be reached through links (the operator configured it).
    Hard links are not links here: they need write access to the root, which tenants lack.

    Raises:
        JobRequestError: outside every allowed folder, a link on the way, missing, not a regular
            file, or unreadable. Messages never echo the path or the roots.
    """
    target = Path(path)
    if not target.is_absolute() or any(part in (".", "..") for part in target.parts):
        raise JobRequestError("is outside the allowed folders", field=field)
    for root in allowed_file_roots:
        root = root.resolve()
        if target.is_relative_to(root):
            break
    else:
        raise JobRequestError("is outside the allowed folders", field=field)
    names = target.relative_to(root).parts
    if not names:
        raise JobRequestError("is not a regular file", field=field)
    dir_flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    fd = None
    try:
        fd = os.open(root, dir_flags)
        for name in names[:-1]:
            next_fd = os.open(name, dir_flags | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        file_fd = os.open(names[-1], os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=fd)
    except OSError as exc:
        raise JobRequestError(_open_refusal(exc.errno), field=field) from None
    finally:
        if fd is not None:
            os.close(fd)
    if not stat.S_ISREG(os.fstat(file_fd).st_mode):
        os.close(file_fd)
        raise JobRequestError("is not a regular file", field=field)
    os.set_blocking(file_fd, True)
    return os.fdopen(file_fd, "rb")


def _open_refusal(code: int | None) -> str:
    """Why an input file could not be opened, without the path."""
    if code in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK):
        return "is outside the allowed folders (links are not followed)"
    if code == errno.ENOENT:
        return "no such file"
    if code in (errno.EACCES, errno.EPERM):
        return "cannot be read (permission denied)"
    return "cannot be read"


def render_inline(job: JobCreate, *, model: str, max_items: int) -> bytes:
    """The inline items as an OpenAI batch file of chat requests, one line per item, in order."""
    items = job.input or []
    if not items:
        raise JobRequestError("needs at least one item", field="input")
    if len(items) > max_items:
        raise JobRequestError(f"{len(items)} items; at most {max_items} inline (use input_file_url)", field="input")
    seen: set[str] = set()
    lines = []
    for i, item in enumerate(items):
        custom_id = item.custom_id or f"item-{i}"
        if custom_id in seen:
            raise JobRequestError(f"custom_id {custom_id!r} is used twice", field=f"input[{i}].custom_id")
        seen.add(custom_id)
        messages = item.messages if item.messages is not None else [{"role": "user", "content": item.prompt}]
        body: dict[str, Any] = {"model": job.model or model, "messages": messages}
        temperature = item.temperature if item.temperature is not None else job.temperature
        body["temperature"] = temperature
        max_tokens = item.max_tokens or job.max_tokens
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        line = {"custom_id": custom_id, "method": "POST", "url": Endpoint.CHAT_COMPLETIONS.value, "body": body}
        lines.append(json.dumps(line, ensure_ascii=False))
    return ("\n".join(lines) + "\n").encode()


def mean_request_latency(shards: Sequence[dict[str, Any]]) -> float | None:
    """Mean seconds a request spent in the engine: every request of a shard waits for the whole
    shard, so each shard's time counts once per request in it. None when no shard was timed."""
    timed = [(s["seconds"], s["num_requests"]) for s in shards if s.get("seconds") is not None and s.get("num_requests")]
    n = sum(k for _, k in timed)
    return None if n == 0 else sum(sec * k for sec, k in timed) / n
