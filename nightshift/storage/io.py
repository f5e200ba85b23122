"""Reading inputs named by a path or any fsspec URL."""

from __future__ import annotations

import fsspec

from nightshift.core.errors import BatchFileError


def read_uri(uri: str, **storage_options: object) -> bytes:
    """The bytes at ``uri`` (a local path, ``file://``, ``s3://``...)."""
    try:
        with fsspec.open(uri, "rb", **storage_options) as f:
            return bytes(f.read())
    except FileNotFoundError as exc:
        raise BatchFileError("no such file", uri=uri) from exc
