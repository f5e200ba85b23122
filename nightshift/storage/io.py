"""Reading inputs named by a path or any fsspec URL."""

from __future__ import annotations

from collections.abc import Iterator

import fsspec
from fsspec.core import url_to_fs

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


#: Bytes read at a time from an input streamed in chunks.
INPUT_CHUNK = 4 * 2**20


def input_size(uri: str, *, retry_seconds: float = DEFAULT_RETRY_SECONDS, **storage_options: object) -> int:
    """The size in bytes of the file at ``uri``, asked of its store without reading it."""
    fs, path = url_to_fs(uri, **storage_options)
    try:
        return int(call_store(fs.size, "reading the input", retry_seconds, path))
    except FileNotFoundError as exc:
        raise BatchFileError("no such file", uri=uri) from exc


def read_chunks(
    uri: str, *, chunk_size: int = INPUT_CHUNK, retry_seconds: float = DEFAULT_RETRY_SECONDS, **storage_options: object
) -> Iterator[bytes]:
    """The bytes at ``uri`` in chunks of ``chunk_size``, so that a file of any size is read in bounded
    memory; each read is retried while the store does not answer, like ``read_uri``."""
    fs, path = url_to_fs(uri, **storage_options)
    try:
        # The read-ahead block is the chunk: s3fs would otherwise read ahead 50 MiB.
        f = call_store(fs.open, "reading the input", retry_seconds, path, "rb", block_size=chunk_size)
    except FileNotFoundError as exc:
        raise BatchFileError("no such file", uri=uri) from exc
    with f:
        while chunk := call_store(f.read, "reading the input", retry_seconds, chunk_size):
            yield bytes(chunk)
