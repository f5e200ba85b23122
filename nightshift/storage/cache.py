"""The request cache on the artifact store: ``{root}/cache/{key[:2]}/{key}.json`` entries."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import ValidationError

from nightshift.core.artifacts import ResultRow, decode_results
from nightshift.core.cache import CacheEntry, answers_from, entry_path
from nightshift.core.errors import StorageError
from nightshift.storage.store import ArtifactStore


class ResultCache:
    """Looks up and records answers by request key, in the same store as the batches."""

    def __init__(self, store: ArtifactStore) -> None:
        self.store = store
        self.root = store.cache_root

    def lookup(self, keys: Iterable[str]) -> dict[str, ResultRow]:
        """The cached answer of each key that has a live one; anything missing or stale is a miss."""
        fs = self.store.fs
        paths = {fs._strip_protocol(entry_path(self.root, k)): k for k in set(keys)}
        if not paths:
            return {}
        # One concurrent multi-get (s3fs fans it out); absent entries are simply left out.
        raw = fs.cat(list(paths), on_error="omit")
        entries: dict[str, CacheEntry] = {}
        for path, data in raw.items():
            key = paths.get(fs._strip_protocol(path))
            if key is None or isinstance(data, Exception):
                continue
            try:
                entries[key] = CacheEntry.model_validate_json(data)
            except ValidationError:
                continue  # a torn or foreign entry is a miss, never an error
        results: dict[str, list[ResultRow]] = {}
        for path in {e.results_path for e in entries.values()}:
            try:
                results[path] = decode_results(self.store.read_bytes(path))
            except (StorageError, ValidationError):
                continue  # the batch behind the entry was deleted: a miss
        return answers_from(entries, results)

    def record(self, entries: Iterable[CacheEntry]) -> int:
        """Write entries (one small object each, in one concurrent put); returns how many."""
        files = {entry_path(self.root, e.key): e.model_dump_json().encode() for e in entries}
        if not files:
            return 0
        for parent in {p.rsplit("/", 1)[0] for p in files}:
            self.store.fs.makedirs(parent, exist_ok=True)
        self.store.fs.pipe(files)
        return len(files)
