"""Where batches live: one fsspec layout for local disk, memory:// and s3://."""

from nightshift.storage.store import ArtifactStore, BatchPaths

__all__ = ["ArtifactStore", "BatchPaths"]
