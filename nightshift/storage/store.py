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

import uuid
from dataclasses import dataclass

import fsspec
from fsspec.core import url_to_fs

from nightshift.core.artifacts import Manifest
from nightshift.core.errors import StorageError
from nightshift.settings import StorageConfig


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

    def __init__(self, root: str, **storage_options: object) -> None:
        self.fs: fsspec.AbstractFileSystem
        self.fs, path = url_to_fs(root.rstrip("/"), **storage_options)
        self.root = path.rstrip("/")
        # An absolute URL (file:///abs/...) so that Ray workers with another cwd find the files.
        self.url = self.fs.unstrip_protocol(self.root)
        self._atomic_rename = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))

    @classmethod
    def from_config(cls, config: StorageConfig) -> ArtifactStore:
        """The store a ``StorageConfig`` describes."""
        return cls(config.root, **config.storage_options())

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

    def pool_throughput(self, pool: str) -> str:
        """A pool's measured-throughput log."""
        return f"{self.root}/pools/{pool}/throughput.json"

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
