"""The artifact store: one documented layout over any fsspec filesystem, with atomic writes.

Layout (``root`` is a folder, ``file://...``, ``memory://...`` or ``s3://bucket/prefix``)::

    {root}/batches/{batch_id}/{version}/
        input.jsonl                   the submitted file, byte for byte
        requests.jsonl                its valid requests; invalid.results.jsonl: its bad lines
        cached.results.jsonl          answers taken from the request cache
        plan.json                     the shard plan, fixed at the first run of the version
        shards/shard-00000.requests.jsonl   valid requests of the shard
        shards/shard-00000.results.jsonl    its results, written when the shard finishes
        output.jsonl  errors.jsonl    OpenAI batch output and error files (input order)
        manifest.json                 written last: its presence means the version is published
        sla.json                      SLA report of the latest run of this version
        progress.json                 live progress while a run computes it (ETA, slack, risk)
        alerts.json                   SLA alerts already raised for this version (one of each kind)
    {root}/cache/{key[:2]}/{key}.json  request cache entries (see nightshift.core.cache)
    {root}/pools/{pool}/throughput.json  measured throughput per work pool (placement reads it)
"""

from __future__ import annotations

import errno
import hashlib
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import fsspec
import tenacity
from fsspec.core import url_to_fs

from nightshift.core.artifacts import Manifest
from nightshift.core.errors import StorageError
from nightshift.settings import StorageConfig

log = logging.getLogger(__name__)

T = TypeVar("T")

#: How long one storage call keeps retrying while the store does not answer, unless configured.
DEFAULT_RETRY_SECONDS = 120.0

#: Filesystem calls that reach the store; only these retry. Everything else on the filesystem
#: (protocol, path helpers) is passed through untouched.
_IO_CALLS = frozenset(
    {
        "cat", "cat_file", "pipe", "pipe_file", "put_file", "get_file", "open", "exists", "info", "isfile", "isdir",
        "size", "modified", "ls", "glob", "find", "walk", "du", "mv", "copy", "cp_file", "rm", "rm_file", "makedirs",
        "mkdir", "touch", "head", "tail",
    }
)  # fmt: skip

_WRITES = frozenset({"pipe", "pipe_file", "put_file", "mv", "copy", "cp_file", "rm", "rm_file", "makedirs", "mkdir", "touch"})

#: errno values that mean the store ran out of room: not transient, retrying would only wait.
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _unreachable(exc: BaseException) -> bool:
    """True for errors that say the store did not answer (refused, reset, timed out), not that the
    request was wrong: those are worth a retry."""
    if isinstance(exc, ConnectionError | TimeoutError):  # builtins: refused, reset, fsspec's FSTimeoutError
        return True
    try:
        from botocore import exceptions as boto
    except ImportError:  # no S3 support installed: nothing of botocore's can be raised either
        return False
    return isinstance(exc, boto.ConnectionError | boto.HTTPClientError)


def call_store(call: Callable[..., T], what: str, retry_seconds: float, *args: Any, **kwargs: Any) -> T:
    """``call(*args, **kwargs)`` against the store, retried with exponential backoff (tenacity)
    for up to ``retry_seconds`` while the store does not answer.

    Raises:
        StorageError: the store stayed unreachable, or is full. The message names neither the
            server nor the library (it may reach a tenant); the log has both.
    """
    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception(_unreachable),
        stop=tenacity.stop_after_delay(retry_seconds),
        # From half a second up to 10 s between tries, with jitter so that a fleet of workers that
        # lost the store together does not come back in lockstep.
        wait=tenacity.wait_exponential_jitter(initial=0.5, max=10),
        before_sleep=tenacity.before_sleep_log(log, logging.WARNING),
        reraise=True,
    )
    try:
        return retrying(call, *args, **kwargs)
    except Exception as exc:
        if _unreachable(exc):
            log.error("artifact store unreachable for %.0f s during %s: %r", retry_seconds, what, exc)
            raise StorageError(
                f"the artifact store did not answer for {retry_seconds:.0f} s while {what}; finished shards are kept, "
                "run the batch again once the store is back to resume"
            ) from exc
        if isinstance(exc, OSError) and exc.errno in _FULL:
            log.error("artifact store full during %s: %r", what, exc)
            raise StorageError(
                f"the artifact store is full (while {what}): nothing partial was published; free space and run the batch "
                "again to resume from its finished shards"
            ) from exc
        raise


class RetryingFileSystem:
    """An fsspec filesystem whose calls that reach the store go through ``call_store``.

    A thin proxy rather than a subclass: the store may be any fsspec implementation (local, memory,
    s3fs...), and every module that uses ``ArtifactStore.fs`` gets the retries without knowing.
    """

    def __init__(self, fs: fsspec.AbstractFileSystem, retry_seconds: float) -> None:
        self.__dict__.update(_fs=fs, _retry_seconds=retry_seconds)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        attr = getattr(self.__dict__["_fs"], name)
        if name not in _IO_CALLS or not callable(attr):
            return attr

        what = "writing" if name in _WRITES else "reading"

        def retried(*args: Any, **kwargs: Any) -> Any:
            return call_store(attr, what, self.__dict__["_retry_seconds"], *args, **kwargs)

        return retried

    def __reduce__(self) -> tuple[Any, ...]:
        return RetryingFileSystem, (self.__dict__["_fs"], self.__dict__["_retry_seconds"])

    def __repr__(self) -> str:
        return f"RetryingFileSystem({self.__dict__['_fs']!r})"

    @property
    def unwrapped(self) -> fsspec.AbstractFileSystem:
        """The filesystem itself, for libraries that need a real ``AbstractFileSystem``."""
        return self.__dict__["_fs"]


@dataclass(frozen=True)
class BatchPaths:
    """Paths of one batch version's files (full URLs/paths as the store's fs takes them)."""

    root: str

    @property
    def input(self) -> str:
        return f"{self.root}/input.jsonl"

    @property
    def valid(self) -> str:
        return f"{self.root}/requests.jsonl"

    @property
    def invalid(self) -> str:
        return f"{self.root}/invalid.results.jsonl"

    @property
    def cached(self) -> str:
        return f"{self.root}/cached.results.jsonl"

    @property
    def plan(self) -> str:
        return f"{self.root}/plan.json"

    @property
    def shards(self) -> str:
        return f"{self.root}/shards"

    def shard_requests(self, name: str) -> str:
        return f"{self.shards}/{name}.requests.jsonl"

    def shard_results(self, name: str) -> str:
        return f"{self.shards}/{name}.results.jsonl"

    @property
    def output(self) -> str:
        return f"{self.root}/output.jsonl"

    @property
    def errors(self) -> str:
        return f"{self.root}/errors.jsonl"

    @property
    def manifest(self) -> str:
        return f"{self.root}/manifest.json"

    @property
    def sla(self) -> str:
        return f"{self.root}/sla.json"

    @property
    def progress(self) -> str:
        return f"{self.root}/progress.json"

    @property
    def alerts(self) -> str:
        return f"{self.root}/alerts.json"

    @property
    def partial_output(self) -> str:
        return f"{self.root}/partial.output.jsonl"

    @property
    def partial_errors(self) -> str:
        return f"{self.root}/partial.errors.jsonl"

    @property
    def version(self) -> str:
        """The version's name (its folder's)."""
        return self.root.rsplit("/", 1)[-1]


class ArtifactStore:
    """Reads and writes batch artifacts under a root URL.

    Writes are atomic for readers: on a filesystem the bytes go to a hidden temp file that is
    renamed into place; on object stores a single PUT is already all-or-nothing.
    """

    def __init__(self, root: str, *, retry_seconds: float = DEFAULT_RETRY_SECONDS, **storage_options: object) -> None:
        fs, path = url_to_fs(root.rstrip("/"), **storage_options)
        # Every call that reaches the store retries while it does not answer (an S3 endpoint
        # restarting, a network blip), so a finished shard is not lost to a 30 s outage.
        self.fs: fsspec.AbstractFileSystem = RetryingFileSystem(fs, retry_seconds)
        self.retry_seconds = retry_seconds
        self.root = path.rstrip("/")
        # An absolute URL (file:///abs/...) so that Ray workers with another cwd find the files.
        self.url = self.fs.unstrip_protocol(self.root)
        self._atomic_rename = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    @classmethod
    def from_config(cls, config: StorageConfig) -> ArtifactStore:
        """The store a ``StorageConfig`` describes."""
        return cls(config.root, retry_seconds=config.retry_seconds, **config.storage_options())

    # -- the layout: every path in the store is built here and nowhere else ------------------
    @property
    def batches_root(self) -> str:
        """Folder of every batch (``batches/<batch id>/<version>/...``)."""
        return f"{self.root}/batches"

    def batch_root(self, batch_id: str) -> str:
        """Folder of every version of one batch."""
        return f"{self.batches_root}/{batch_id}"

    def batch(self, batch_id: str, version: str) -> BatchPaths:
        """Paths of one batch version."""
        return BatchPaths(f"{self.batch_root(batch_id)}/{version}")

    def newest(self, batch_id: str, file: str) -> BatchPaths | None:
        """The version of ``batch_id`` whose ``file`` (a ``BatchPaths`` file name such as
        ``manifest.json``) was written last, or None when no version has it."""
        found = self.fs.glob(f"{self.batch_root(batch_id)}/*/{file}")
        if not found:
            return None
        newest = max(found, key=lambda p: self.fs.modified(p))
        return BatchPaths(str(newest).rsplit("/", 1)[0])

    @property
    def cache_root(self) -> str:
        """Folder of the request cache."""
        return f"{self.root}/cache"

    def pool_throughput(self, pool: str, model: str) -> str:
        """The measured-throughput log of ``model`` on ``pool`` (``pools/<pool>/models/<model>/throughput.json``).

        Model ids may hold ``/`` and ``:``: such a name is made path-safe and given a short hash of
        the exact id, so two models never share a log.
        """
        segment = re.sub(r"[^A-Za-z0-9._-]+", "_", model).strip("._") or "model"
        if segment != model:
            segment = f"{segment[:64]}-{hashlib.sha256(model.encode()).hexdigest()[:8]}"
        return f"{self.root}/pools/{pool}/models/{segment}/throughput.json"

    def scoring(self, job_name: str) -> str:
        """Folder of a scoring job's versions."""
        return f"{self.root}/scoring/{job_name}"

    @property
    def files_root(self) -> str:
        """Folder of the gateway's uploads, one folder per org."""
        return f"{self.root}/files"

    def upload(self, org_id: str, file_id: str) -> str:
        """Where the gateway keeps a file an org uploaded (``files/<org>/<file id>.jsonl``)."""
        return f"{self.files_root}/{org_id}/{file_id}.jsonl"

    def upload_parts(self) -> list[str]:
        """Half-written uploads (``.part``) of every org: what a stopped gateway left behind."""
        return [str(p) for p in self.fs.glob(f"{self.files_root}/*/*.part")]

    def holds(self, uri: str) -> bool:
        """True when ``uri`` names something inside this store (uploads, batch artifacts)."""
        protocols = self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)
        scheme = uri.split("://", 1)[0] if "://" in uri else "file"
        if scheme not in protocols and not (scheme == "s3a" and "s3" in protocols):
            return False
        path = self.fs._strip_protocol(uri.replace("s3a://", "s3://", 1))
        return path == self.root or path.startswith(self.root + "/")

    def uri(self, path: str) -> str:
        """A full URL for ``path`` that a user or another process can open."""
        return self.fs.unstrip_protocol(path)

    def published(self, batch_id: str) -> list[Manifest]:
        """Manifests of every published version of ``batch_id``, oldest first."""
        paths = self.fs.glob(f"{self.batch_root(batch_id)}/*/manifest.json")
        manifests = [Manifest.model_validate_json(self.read_bytes(p)) for p in paths]
        return sorted(manifests, key=lambda m: m.completed_at)

    def sign(self, path: str, expires_in: int = 3600) -> str:
        """A download link for ``path``: presigned for object stores, the file URL elsewhere."""
        try:
            return str(self.fs.sign(path, expiration=expires_in))
        except NotImplementedError:
            return self.uri(path)

    def exists(self, path: str) -> bool:
        """True when ``path`` exists."""
        return bool(self.fs.exists(path))

    def read_bytes(self, path: str) -> bytes:
        """The bytes of ``path``."""
        try:
            return bytes(self.fs.cat_file(path))
        except FileNotFoundError as exc:
            raise StorageError(f"missing artifact: {self.uri(path)}") from exc

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write ``data`` to ``path`` so that no reader ever sees part of it."""
        parent = path.rsplit("/", 1)[0]
        self.fs.makedirs(parent, exist_ok=True)
        if not self._atomic_rename:
            self.fs.pipe_file(path, data)
            return
        tmp = f"{parent}/.{path.rsplit('/', 1)[1]}.{uuid.uuid4().hex}.tmp"
        try:
            self.fs.pipe_file(tmp, data)
            self.fs.mv(tmp, path)
        finally:
            if self.fs.exists(tmp):
                self.fs.rm(tmp)
