"""The native job API's domain: what a job request may contain, which input URLs are allowed,
how inline prompts become an OpenAI batch file, and the numbers a job reports.

A job *is* a batch (one gateway row, one flow run): these functions only translate between the
job's shape and the batch's, so both APIs show the same object with the same counts.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal
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
        if self.metadata is not None and len(self.metadata) > 16:
            raise ValueError("metadata: at most 16 pairs")
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


def check_input_url(url: str, *, allowed_file_roots: Sequence[Path], allowed_https_hosts: Sequence[str]) -> InputSource:
    """Decide, from the URL alone and before anything is fetched, whether the gateway may use it.

    Raises:
        JobRequestError: any other scheme (http, ftp, …), an https host not on the allow-list, a
            file path outside every allowed root (``..`` and symlinks resolved first), a URL with
            credentials or a malformed one.
    """
    field = "input_file_url"
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if parts.username or parts.password:
        raise JobRequestError("credentials in the URL are not accepted", field=field, value=url)
    if scheme in ("s3", "s3a"):
        if not parts.netloc or not parts.path.strip("/"):
            raise JobRequestError("expected s3://bucket/key", field=field, value=url)
        return InputSource(url=f"s3://{parts.netloc}{parts.path}", kind="s3")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise JobRequestError("file URLs must name a local path (file:///...)", field=field, value=url)
        path = Path(unquote(parts.path)).resolve()
        roots = [r.resolve() for r in allowed_file_roots]
        if not any(path.is_relative_to(r) for r in roots):
            where = ", ".join(str(r) for r in roots) or "none are configured"
            raise JobRequestError(f"{path} is outside the allowed roots ({where})", field=field, value=url)
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


class Prices(BaseModel):
    """What a job costs, per million tokens, on dedicated capacity; spot is discounted."""

    input_per_million: float = Field(ge=0)
    output_per_million: float = Field(ge=0)
    spot_discount: float = Field(ge=0, le=1, description="Share of the price taken off on spot capacity.")


def job_cost(usage: dict[str, int] | None, *, pool_kind: str | None, prices: Prices) -> float:
    """USD cost of a job's tokens on the capacity it ran on."""
    usage = usage or {}
    cost = (
        usage.get("prompt_tokens", 0) * prices.input_per_million + usage.get("completion_tokens", 0) * prices.output_per_million
    ) / 1e6
    if pool_kind == "spot":
        cost *= 1 - prices.spot_discount
    return round(cost, 6)


def mean_request_latency(shards: Sequence[dict[str, Any]]) -> float | None:
    """Mean seconds a request spent in the engine: every request of a shard waits for the whole
    shard, so each shard's time counts once per request in it. None when no shard was timed."""
    timed = [(s["seconds"], s["num_requests"]) for s in shards if s.get("seconds") is not None and s.get("num_requests")]
    n = sum(k for _, k in timed)
    return None if n == 0 else sum(sec * k for sec, k in timed) / n
