"""Content hashing: SHA-256 of bytes, of canonical JSON, and of file trees (model folders)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import fsspec

_CHUNK = 4 * 1024 * 1024


def sha256_bytes(data: bytes) -> str:
    """Hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def canonical_json(value: Any) -> bytes:
    """JSON with sorted keys and no spacing: equal values give equal bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_json(value: Any) -> str:
    """Hex SHA-256 of the canonical JSON of ``value``."""
    return sha256_bytes(canonical_json(value))


def sha256_file(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Hex SHA-256 of a file, streamed in chunks (model weights do not fit a hash call)."""
    digest = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_tree(fs: fsspec.AbstractFileSystem, root: str) -> str:
    """Hex SHA-256 over every file below ``root``: relative names and contents, in name order."""
    root = fs._strip_protocol(root).rstrip("/")
    files = sorted(p for p in fs.find(root) if not p.rsplit("/", 1)[-1].startswith("."))
    return sha256_json({p[len(root) + 1 :]: sha256_file(fs, p) for p in files})
