"""Retention on the artifact store: list batch versions with their age, delete expired ones.

Works the same on local disk, ``memory://`` and ``s3://``: one recursive listing per tree (a
single paginated LIST on an object store), and ages taken from that listing's details.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import fsspec

from nightshift.core.retention import VersionInfo, is_expired
from nightshift.storage.cache import ResultCache
from nightshift.storage.store import ArtifactStore


def _modified(fs: fsspec.AbstractFileSystem, info: dict[str, Any]) -> datetime:
    """When the file a listing entry describes was last written, as an aware UTC datetime.

    Backends name this differently in their listing details (s3fs ``LastModified``, local
    ``mtime``); anything else asks the filesystem, which costs one call per file.
    """
    value = info.get("LastModified", info.get("mtime"))
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, tz=UTC)
    if not isinstance(value, datetime):
        value = fs.modified(info["name"])
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _files(store: ArtifactStore, top: str) -> dict[str, dict[str, Any]]:
    """Every file under ``top`` (hidden temp files included) with its listing details."""
    return dict(store.fs.find(top, withdirs=False, detail=True))


def _relative(store: ArtifactStore, top: str, path: str) -> list[str]:
    return store.fs._strip_protocol(path)[len(top) + 1 :].split("/")


def list_versions(store: ArtifactStore) -> list[VersionInfo]:
    """Every version folder under ``{root}/batches``, dated by its newest file, sorted by path."""
    top = store.batches_root
    newest: dict[tuple[str, str], datetime] = {}
    for path, info in _files(store, top).items():
        parts = _relative(store, top, path)
        if len(parts) < 3:  # a stray file beside the version folders is no version
            continue
        when = _modified(store.fs, info)
        key = (parts[0], parts[1])
        if key not in newest or when > newest[key]:
            newest[key] = when
    return [
        VersionInfo(batch_id=b, version=v, path=f"{top}/{b}/{v}", last_modified=when) for (b, v), when in sorted(newest.items())
    ]


def _remove_if_empty(store: ArtifactStore, path: str) -> None:
    # Object stores have no folders: once the last key under a prefix is gone, so is the prefix.
    fs = store.fs
    if fs.exists(path) and fs.isdir(path) and not fs.ls(path, detail=False):
        fs.rmdir(path)


def delete_version(store: ArtifactStore, info: VersionInfo) -> None:
    """Delete one version folder, and its batch folder when that was the last version in it."""
    if store.fs.exists(info.path):
        store.fs.rm(info.path, recursive=True)
    _remove_if_empty(store, info.path.rsplit("/", 1)[0])


def expired_cache_entries(store: ArtifactStore, now: datetime, max_age: timedelta) -> list[str]:
    """Request-cache entry files under ``{root}/cache`` last written ``max_age`` or more before ``now``."""
    top = ResultCache(store).root
    return sorted(
        path
        for path, info in _files(store, top).items()
        if path.endswith(".json") and is_expired(_modified(store.fs, info), now, max_age)
    )


def delete_cache_entries(store: ArtifactStore, paths: list[str]) -> int:
    """Delete these cache entry files (one bulk delete) and any fan-out folder left empty."""
    if not paths:
        return 0
    try:
        store.fs.rm(paths)
    except FileNotFoundError:
        # Another cleanup got some of them first; what is gone is gone, delete the rest.
        for path in paths:
            if store.fs.exists(path):
                store.fs.rm(path)
    for folder in sorted({p.rsplit("/", 1)[0] for p in paths}):
        _remove_if_empty(store, folder)
    return len(paths)
