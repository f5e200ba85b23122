"""Reading inputs named by a path or any fsspec URL."""

from __future__ import annotations

import fsspec

from nightshift.core.errors import BatchFileError
from nightshift.storage.store import DEFAULT_RETRY_SECONDS, call_store


def read_uri(uri: str, *, retry_seconds: float = DEFAULT_RETRY_SECONDS, **storage_options: object) -> bytes:
    """The bytes at ``uri`` (a local path, ``file://``, ``s3://``...), retried while its store
    does not answer (see ``call_store``)."""

    def read() -> bytes:
        with fsspec.open(uri, "rb", **storage_options) as f:
            return bytes(f.read())

    try:
        return call_store(read, "reading the input", retry_seconds)
    except FileNotFoundError as exc:
        raise BatchFileError("no such file", uri=uri) from exc
