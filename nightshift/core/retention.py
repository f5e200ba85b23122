"""Retention: which batch versions are old enough to delete.

A version's age counts from its *last* write (the newest file in its folder), not its creation:
re-running a published version rewrites its ``sla.json``, so a batch that is still in use keeps
its results. Results stay until their retention ends even when request-cache entries still point
at them; once they are gone such an entry is a miss (see ``nightshift.core.cache``).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from pydantic import AwareDatetime, BaseModel, Field


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
