"""The request cache on the artifact store: ``{root}/cache/{key[:2]}/{key}.json`` entries.

Both directions stream: entries are fetched and written ``chunk`` at a time, and each results file
that entries point at is read once per lookup, keeping only the rows asked for.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TypeVar

from pydantic import ValidationError

from nightshift.core.artifacts import ResultRow, decode_results
from nightshift.core.cache import CacheEntry, answers_from, entry_path
from nightshift.core.errors import StorageError
from nightshift.storage.store import ArtifactStore

#: Keys looked up, or entries written, per concurrent multi-get/put.
CHUNK = 1000

T = TypeVar("T")


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while chunk := list(islice(it, size)):
        yield chunk


class ResultCache:
    """Looks up and records answers by request key, in the same store as the batches."""

    def __init__(self, store: ArtifactStore, *, chunk: int = CHUNK) -> None:
        self.store = store
        self.root = store.cache_root
        self.chunk = max(1, chunk)

    def lookup(self, keys: Iterable[str]) -> dict[str, ResultRow]:
        """The cached answer of each key that has a live one; anything missing or stale is a miss.

        Memory follows the keys asked for, not the cache or the batches behind it: entries are
        fetched ``chunk`` keys at a time, then each results file they point at is read once, one
        at a time, keeping only the rows wanted. A caller with many keys asks window by window.
        """
        by_file: dict[str, dict[str, CacheEntry]] = defaultdict(dict)
        seen: set[str] = set()
        for chunk in _chunks(keys, self.chunk):
            fresh = set(chunk) - seen
            seen |= fresh
            for key, entry in self._entries(fresh).items():
                by_file[entry.results_path][key] = entry
        found: dict[str, ResultRow] = {}
        for path, wanted in by_file.items():
            lines = {e.line for e in wanted.values()}
            try:
                rows = [r for r in decode_results(self.store.read_bytes(path)) if r.line in lines]
            except (StorageError, ValidationError):
                continue  # the batch behind the entry was deleted: a miss
            found.update(answers_from(wanted, {path: rows}))
        return found

    def _entries(self, keys: set[str]) -> dict[str, CacheEntry]:
        """The entries of ``keys`` that exist and parse."""
        fs = self.store.fs
        paths = {fs._strip_protocol(entry_path(self.root, k)): k for k in keys}
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
        return entries

    def record(self, entries: Iterable[CacheEntry]) -> int:
        """Write entries (one small object each, ``chunk`` per concurrent put); returns how many."""
        written = 0
        folders: set[str] = set()  # at most 256 fan-out folders
        for chunk in _chunks(entries, self.chunk):
            files = {entry_path(self.root, e.key): e.model_dump_json().encode() for e in chunk}
            for parent in {p.rsplit("/", 1)[0] for p in files} - folders:
                self.store.fs.makedirs(parent, exist_ok=True)
                folders.add(parent)
            self.store.fs.pipe(files)
            written += len(files)
        return written
