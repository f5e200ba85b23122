"""Retention: which batch versions are old enough to delete.

A version's age counts from its *last* write (the newest file in its folder), not its creation:
re-running a published version rewrites its ``sla.json``, so a batch that is still in use keeps
its results. Results stay until their retention ends even when request-cache entries still point
at them; once they are gone such an entry is a miss (see ``nightshift.core.cache``).

A file can also carry its own expiry, OpenAI's ``expires_after`` (on upload) and
``output_expires_after`` (a batch's output and error files): ``ExpiresAfter`` holds the rule and
its bounds, and the gateway deletes the file once its ``expires_at`` has passed.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

#: OpenAI's bounds on a file expiry: one hour to thirty days after the anchor.
EXPIRES_AFTER_MIN_SECONDS = 3600
EXPIRES_AFTER_MAX_SECONDS = 30 * 24 * 3600


class ExpiresAfter(BaseModel):
    """OpenAI's file expiration policy: the file expires ``seconds`` after its ``created_at``."""

    model_config = ConfigDict(extra="forbid")

    anchor: Literal["created_at"] = Field(description="What the expiry counts from; OpenAI supports only created_at.")
    seconds: Annotated[int, Field(ge=EXPIRES_AFTER_MIN_SECONDS, le=EXPIRES_AFTER_MAX_SECONDS)] = Field(
        description="Seconds after the anchor the file expires (3600 to 2592000)."
    )

    def expires_at(self, created_at: datetime) -> datetime:
        """When a file created at ``created_at`` expires."""
        return created_at + timedelta(seconds=self.seconds)


class VersionInfo(BaseModel):
    """One stored batch version and when anything in it was last written."""

    batch_id: str
    version: str
    path: str = Field(description="The version's folder, as the store's filesystem takes it.")
    last_modified: AwareDatetime = Field(description="Time of the newest file in the folder.")


def is_expired(last_modified: datetime, now: datetime, max_age: timedelta) -> bool:
    """True when something last written at ``last_modified`` is past ``max_age`` at ``now``.

    A ``max_age`` of zero means everything, including timestamps slightly in the future (an
    object store's clock may run ahead of ours).

    Raises:
        ValueError: ``max_age`` is negative.
    """
    if max_age < timedelta(0):
        raise ValueError(f"max_age must not be negative, got {max_age}")
    if max_age == timedelta(0):
        return True
    return now - last_modified >= max_age


def expired(versions: Iterable[VersionInfo], now: datetime, max_age: timedelta) -> list[VersionInfo]:
    """The versions whose last write is at least ``max_age`` before ``now``, in the given order."""
    return [v for v in versions if is_expired(v.last_modified, now, max_age)]
